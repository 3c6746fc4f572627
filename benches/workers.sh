#!/usr/bin/env bash
# Whole-process bench of several `ghlflow run` workers sharing one state store, as users run
# them: RECIPES recipes each backfill every person of a local sandbox's Capsule account into
# its GHL (an upsert and a note per person), polled on `cron: "* * * * *"` so every recipe
# starts within seconds of the next minute. The workers are `ghlflow run` processes (the
# scheduler, not --once) on one PostgreSQL database, or one worker on sled for comparison.
# App limits are lifted (an --operations override, as in backfill.sh) so the figure is the
# engine's and the store's, not the APIs' rate limits.
#
#   benches/workers.sh [ITEMS]            default 3000 people (item-runs = ITEMS x RECIPES)
#   RECIPES=6 WORKERS="1 2 3" benches/workers.sh
#   GHLFLOW_BENCH_POSTGRES=postgres://... an admin URL; otherwise .ci/postgres.sh starts a
#                                        throwaway cluster for the bench
#
# One line per (backend, workers): item-runs, seconds from the first run started to the last
# finished, item-runs per second in that span, CPU ms per item-run (user + sys of every
# worker process, from start to stop), the same for the PostgreSQL server's processes on
# this machine (every process named `postgres`, so run nothing else on it meanwhile), and
# the workers' summed peak RSS.
# Not part of CI: it takes minutes and its figures depend on the machine.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. benches/lib.sh

items="${1:-3000}"
recipes="${RECIPES:-6}"
workers_list=(${WORKERS:-1 2 3})
for n in "$items" "$recipes" "${workers_list[@]}"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
        echo "workers.sh: \`$n\` is not a positive whole number" >&2
        exit 2
    fi
done
command -v python3 >/dev/null || { echo "workers.sh: python3 is needed to read the run history" >&2; exit 2; }

echo "== cargo build --release" >&2
cargo build --release --quiet
bin="$root/target/release/ghlflow"

work="$(mktemp -d -t ghlflow-workers.XXXXXX)"
sandbox_pid=""
worker_pids=()
cluster=""
cleanup() {
    for pid in "${worker_pids[@]}" $sandbox_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$cluster" ]; then .ci/postgres.sh stop "$cluster" >/dev/null 2>&1 || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

admin_url="${GHLFLOW_BENCH_POSTGRES:-}"
if [ -z "$admin_url" ]; then
    echo "== starting a throwaway PostgreSQL cluster (.ci/postgres.sh)" >&2
    eval "$(.ci/postgres.sh)"
    cluster="$GHLFLOW_TEST_POSTGRES_DIR"
    admin_url="$GHLFLOW_TEST_POSTGRES"
fi

ops="$work/ops"
lift_limits "$ops"

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# CPU ticks of every process named postgres (the database server, on this machine).
db_ticks() {
    local total=0 pid
    for pid in $(pgrep -x postgres || true); do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}

start_sandbox() {
    local dir="$1"
    "$bin" sandbox --port 0 --people "$items" --no-limits >"$dir/sandbox.yaml" 2>"$dir/sandbox.log" &
    sandbox_pid=$!
    for _ in $(seq 1 3000); do
        grep -q '^state:' "$dir/sandbox.yaml" 2>/dev/null && return 0
        kill -0 "$sandbox_pid" 2>/dev/null || { cat "$dir/sandbox.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "workers.sh: the sandbox printed no configuration" >&2
    exit 1
}

write_folder() {
    local dir="$1" state="$2"
    mkdir -p "$dir/recipes"
    grep -v -e '^#' -e '^state:' "$dir/sandbox.yaml" >"$dir/ghlflow.yaml"
    printf 'state: %s\nlisten: 127.0.0.1:0\n' "$state" >>"$dir/ghlflow.yaml"
    for r in $(seq 1 "$recipes"); do
        cat >"$dir/recipes/backfill-$r.yaml" <<EOF
name: Backfill $r
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  cron: "* * * * *"
  start: backfill
  hold_above: 0
concurrency: 16
filter: "{{#if (eq trigger.type \"person\")}}{{#if trigger.emailAddresses}}true{{/if}}{{/if}}"
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      email: "{{trigger.emailAddresses.[0].address}}"
      firstName: "{{trigger.firstName}}"
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{steps.contact.contact.id}}"
      body: "Backfill $r of Capsule party {{trigger.id}}"
EOF
    done
}

printf '%-9s %7s %10s %8s %10s %12s %12s %12s\n' backend workers item-runs span_s runs/s cpu_ms/run db_ms/run rss_MB
run_case() {
    local backend="$1" workers="$2" dir="$work/$1-$2" state
    mkdir -p "$dir"
    start_sandbox "$dir"
    if [ "$backend" = sled ]; then
        state="$dir/state"
    else
        local db="ghlflow_bench_$$_$workers"
        psql -q "$admin_url" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
        state="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$admin_url" "$db")"
    fi
    write_folder "$dir" "$state"
    "$bin" --operations "$ops" migrate --config "$dir/ghlflow.yaml" >/dev/null
    worker_pids=()
    local db_before
    db_before=$(db_ticks)
    for w in $(seq 1 "$workers"); do
        "$bin" --operations "$ops" run --config "$dir/ghlflow.yaml" >"$dir/worker-$w.log" 2>&1 &
        worker_pids+=($!)
    done
    # Done when every recipe has polled and no run is open, twice in a row 3 s apart.
    local calm=0 last=""
    for _ in $(seq 1 2000); do
        sleep 3
        now=$("$bin" runs list --config "$dir/ghlflow.yaml" --json --limit 100000000 2>/dev/null \
            | python3 -c 'import json, sys
runs = json.load(sys.stdin)
open_ = sum(r["status"] in ("queued", "running", "waiting") for r in runs)
print(len(runs), open_, len({r["recipe"] for r in runs}))' || echo "0 1 0")
        set -- $now
        if [ "$2" = 0 ] && [ "$3" = "$recipes" ] && [ "$now" = "$last" ]; then calm=$((calm + 1)); else calm=0; fi
        last="$now"
        [ "$calm" -ge 1 ] && break
    done
    local ticks=0 rss=0
    for pid in "${worker_pids[@]}"; do
        ticks=$((ticks + $(cpu_ticks "$pid")))
        rss=$((rss + $(rss_kib "$pid")))
    done
    local db_used=$(($(db_ticks) - db_before))
    [ "$backend" = sled ] && db_used=0
    for pid in "${worker_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${worker_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    worker_pids=()
    kill "$sandbox_pid" 2>/dev/null || true
    wait "$sandbox_pid" 2>/dev/null || true
    sandbox_pid=""
    "$bin" runs list --config "$dir/ghlflow.yaml" --json --limit 100000000 >"$dir/runs.json"
    python3 - "$dir/runs.json" "$backend" "$workers" "$ticks" "$(getconf CLK_TCK)" "$rss" "$db_used" <<'PY'
import json, sys
from datetime import datetime
runs = json.load(open(sys.argv[1]))
backend, workers, ticks, tck, rss = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
db = int(sys.argv[7])
done = [r for r in runs if r["status"] == "succeeded"]
if not done:
    sys.exit("workers.sh: no succeeded run")
t = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
span = max(t(r["finished"]) for r in done) - min(t(r["started"]) for r in done)
bad = [r for r in runs if r["status"] not in ("succeeded", "filtered")]
if bad:
    sys.exit(f"workers.sh: {len(bad)} runs did not succeed, e.g. {bad[0]['status']}: {bad[0].get('error')}")
print(f"{backend:<9} {workers:7d} {len(done):10d} {span:8.2f} {len(done) / span:10.0f} {ticks / tck * 1000 / len(done):12.3f} {db / tck * 1000 / len(done):12.3f} {rss / 1024:12.1f}")
PY
}

for workers in "${workers_list[@]}"; do
    run_case postgres "$workers"
done
run_case sled 1
