#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the state store's tests (tests/store_contract.rs).
#
#   eval "$(.ci/postgres.sh)"      start one; prints `export GHLFLOW_TEST_POSTGRES=...` and
#                                  `export GHLFLOW_TEST_POSTGRES_DIR=...` (the cluster's folder)
#   .ci/postgres.sh stop DIR       stop the cluster in DIR and delete DIR
#
# The cluster lives in a temporary folder, listens on 127.0.0.1 and a free port (from 55432
# up) and on a unix socket inside that folder, and trusts local connections: it holds
# nothing but test databases. initdb refuses to run as root, so as root the cluster is made
# and run by the `postgres` user. Everything but the `export` lines goes to stderr, so the
# output can be eval'ed.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

if [ "$(id -u)" = 0 ]; then
  as_owner() { runuser -u postgres -- "$@"; }
else
  as_owner() { "$@"; }
fi

# The server's programs: on PATH, else the newest Debian install, else installed with apt.
find_bin() {
  local dir
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
    echo "$dir"
  fi
}

if [ "${1:-}" = stop ]; then
  dir=${2:?usage: postgres.sh stop DIR}
  bin=$(find_bin)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
  fi
  rm -rf -- "$dir"
  exit 0
fi

bin=$(find_bin)
if [ -z "$bin" ]; then
  say "no initdb found: installing PostgreSQL from the Debian packages"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
  bin=$(find_bin)
  [ -n "$bin" ] || { say "PostgreSQL was installed but initdb is still not found"; exit 1; }
fi

dir=$(mktemp -d /tmp/ghlflow-pg.XXXXXX)
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
fi
chmod 700 "$dir"
mkdir "$dir/socket"
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir/socket"
fi

as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
  cat "$dir/initdb.log" >&2
  exit 1
}

# The first free port from 55432.
port=55432
while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  port=$((port + 1))
done

# fsync off: a test cluster needs no durability, and the suite creates a database per test.
options="-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "$options" -w -t 60 start >&2 || {
  cat "$dir/server.log" >&2
  exit 1
}

ready=""
for _ in $(seq 1 60); do
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    ready=1
    break
  fi
  sleep 0.5
done
[ -n "$ready" ] || { say "the cluster did not become ready; see $dir/server.log"; exit 1; }

say "cluster in $dir on 127.0.0.1:$port"
echo "export GHLFLOW_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
echo "export GHLFLOW_TEST_POSTGRES_DIR=$dir"
