#!/usr/bin/env bash
# Whole-process bench of `ghlflow run --once`, run the way a user runs it: a recipe backfills
# every person of a local sandbox's Capsule account (`start: backfill`, `hold_above: 0`) and
# sends an upsert and a note to the sandbox's GHL for each. The app limits are lifted with an
# `--operations` override of both app.yaml files (rate limits, page bound), and the run is
# timed with GNU time. Only the `ghlflow run --once` process is measured; the sandbox runs
# beside it as a separate process.
#
#   benches/backfill.sh [ITEMS...]            default: 20000 200000
#   CONCURRENCY="1 64" benches/backfill.sh    the recipe's concurrency values (default "1 64")
#   KEEP=1 benches/backfill.sh 2000           keep the temp folders (paths printed on stderr)
#
# One table line per (items, concurrency) on stdout: items, item-runs (succeeded runs), wall
# seconds, item-runs per second, CPU ms per item-run ((user + sys) / item-runs), peak RSS MB.
# Not part of CI (`.ci/run` never calls it): it takes minutes and its figures depend on the
# machine and on what else runs on it.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
. benches/lib.sh

items_list=("$@")
if [ ${#items_list[@]} -eq 0 ]; then
    items_list=(20000 200000)
fi
concurrency_list=(${CONCURRENCY:-1 64})

for n in "${items_list[@]}" "${concurrency_list[@]}"; do
    if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
        echo "backfill.sh: \`$n\` is not a positive whole number (usage: benches/backfill.sh [ITEMS...], CONCURRENCY=\"1 64\")" >&2
        exit 2
    fi
done

if ! [ -x /usr/bin/time ] || ! /usr/bin/time -v true >/dev/null 2>&1; then
    echo "backfill.sh: GNU time is needed at /usr/bin/time (apt-get install -y time)" >&2
    exit 2
fi

echo "== cargo build --release" >&2
cargo build --release --quiet
bin="$root/target/release/ghlflow"

work="$(mktemp -d -t ghlflow-backfill.XXXXXX)"
sandbox_pid=""
cleanup() {
    if [ -n "$sandbox_pid" ]; then
        kill "$sandbox_pid" 2>/dev/null || true
        wait "$sandbox_pid" 2>/dev/null || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# The operations override: the two app files with limits lifted (the page bound too, so one
# poll reads a 200,000-person account: 2,000 pages of 100).
ops="$work/ops"
lift_limits "$ops"
# The CPU seconds (user + sys) a running process has used so far.
cpu_s() {
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.1f", ($12 + $13) / tck }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Starts a sandbox with N people in the background; sets sandbox_pid and writes its
# ghlflow.yaml to $1/ghlflow.yaml.
start_sandbox() {
    local dir="$1" people="$2" started
    started=$(date +%s.%N)
    "$bin" sandbox --port 0 --people "$people" --no-limits >"$dir/sandbox.yaml" 2>"$dir/sandbox.log" &
    sandbox_pid=$!
    # It prints the configuration once it is listening; the last line is `state: ...`.
    for _ in $(seq 1 6000); do
        if grep -q '^state:' "$dir/sandbox.yaml" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$sandbox_pid" 2>/dev/null; then
            echo "backfill.sh: the sandbox stopped:" >&2
            cat "$dir/sandbox.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if ! grep -q '^state:' "$dir/sandbox.yaml"; then
        echo "backfill.sh: the sandbox printed no configuration within 10 minutes" >&2
        exit 1
    fi
    local base
    base=$(awk '$1 == "base_url:" {print $2; exit}' "$dir/sandbox.yaml")
    if ! curl -fsS -o /dev/null "$base/_sandbox"; then
        echo "backfill.sh: the sandbox does not answer at $base/_sandbox" >&2
        exit 1
    fi
    printf 'sandbox: %s people seeded in %.1f s, RSS %s MB\n' "$people" \
        "$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')" "$(( $(rss_kib "$sandbox_pid") / 1024 ))" >&2
}

stop_sandbox() {
    kill "$sandbox_pid" 2>/dev/null || true
    wait "$sandbox_pid" 2>/dev/null || true
    sandbox_pid=""
}

write_folder() {
    local dir="$1" concurrency="$2"
    mkdir -p "$dir/recipes"
    grep -v '^#' "$dir/sandbox.yaml" >"$dir/ghlflow.yaml"
    cat >"$dir/recipes/backfill.yaml" <<EOF
name: Backfill Capsule people into GHL
trigger:
  operation: capsule.parties.party_updated
  connection: capsule
  every: 5m
  start: backfill
  hold_above: 0
concurrency: $concurrency
filter: "{{#if (eq trigger.type \"person\")}}{{#if trigger.emailAddresses}}true{{/if}}{{/if}}"
steps:
  - id: contact
    operation: ghl.contacts.upsert_contact
    connection: ghl
    input:
      firstName: "{{trigger.firstName}}"
      lastName: "{{trigger.lastName}}"
      email: "{{trigger.emailAddresses.[0].address}}"
  - id: note
    operation: ghl.contacts.create_contact_note
    connection: ghl
    input:
      contactId: "{{steps.contact.contact.id}}"
      body: "Backfilled from Capsule party {{trigger.id}}"
EOF
}

# Reads one field of `time -v` output.
field() { sed -n "s/^\t$1: //p" "$2"; }
# "h:mm:ss" or "m:ss.cc" to seconds.
to_seconds() { awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; printf "%.2f", s }' <<<"$1"; }

printf '%8s %6s %10s %8s %12s %12s %12s\n' items conc item-runs wall_s runs/s cpu_ms/run peak_rss_MB
for items in "${items_list[@]}"; do
    # One sandbox per size, fresh for each run: a second backfill into the same GHL would
    # find every contact already there and measure something else.
    for concurrency in "${concurrency_list[@]}"; do
        dir="$work/n$items-c$concurrency"
        mkdir -p "$dir"
        start_sandbox "$dir" "$items"
        write_folder "$dir" "$concurrency"
        "$bin" --operations "$ops" validate --config "$dir/ghlflow.yaml" >/dev/null
        set +e
        /usr/bin/time -v -o "$dir/time.txt" "$bin" --operations "$ops" run --once --config "$dir/ghlflow.yaml" \
            >"$dir/run.out" 2>"$dir/run.err"
        status=$?
        set -e
        printf 'sandbox: after the run, RSS peak %s MB, CPU %s s in all\n' \
            "$(( $(rss_kib "$sandbox_pid") / 1024 ))" "$(cpu_s "$sandbox_pid")" >&2
        stop_sandbox
        if [ "$status" -ne 0 ]; then
            echo "backfill.sh: ghlflow run --once exited with $status (items $items, concurrency $concurrency):" >&2
            tail -n 20 "$dir/run.out" "$dir/run.err" >&2
            exit 1
        fi
        sed 's/^/  /' "$dir/run.out" >&2
        runs=$(sed -n 's/^runs: \([0-9]*\) succeeded.*/\1/p' "$dir/run.out")
        if [ -z "$runs" ] || [ "$runs" -eq 0 ]; then
            echo "backfill.sh: no succeeded runs in the output of run --once:" >&2
            cat "$dir/run.out" >&2
            exit 1
        fi
        wall=$(to_seconds "$(field 'Elapsed (wall clock) time (h:mm:ss or m:ss)' "$dir/time.txt")")
        user=$(field 'User time (seconds)' "$dir/time.txt")
        sys=$(field 'System time (seconds)' "$dir/time.txt")
        rss=$(field 'Maximum resident set size (kbytes)' "$dir/time.txt")
        awk -v items="$items" -v c="$concurrency" -v runs="$runs" -v wall="$wall" -v user="$user" \
            -v sys="$sys" -v rss="$rss" 'BEGIN {
                printf "%8d %6d %10d %8.2f %12.0f %12.3f %12.1f\n",
                    items, c, runs, wall, runs / wall, (user + sys) * 1000 / runs, rss / 1024
            }'
    done
done
