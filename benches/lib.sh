# Shared by the whole-process bench scripts (sourced, not run).

# Writes to $1 an --operations override of both app files with the limits lifted: rate limits
# become one huge budget (the client never waits; with a --no-limits sandbox no server header
# corrects it downward), and the page bound lets one poll read a whole large account.
# Everything else (retry, timeout, auth) is as shipped. Fails if the app files no longer
# have the lines it lifts.
lift_limits() {
    local ops="$1" app
    for app in ghl capsule; do
        mkdir -p "$ops/$app"
        sed -E \
            -e 's#^  limits: \[.*\]#  limits: [1000000000/1s]#' \
            -e 's#^page_bound: [0-9]+#page_bound: 1000000#' \
            "operations/$app/app.yaml" >"$ops/$app/app.yaml"
        if ! grep -q '^  limits: \[1000000000/1s\]' "$ops/$app/app.yaml" || ! grep -q '^page_bound: 1000000$' "$ops/$app/app.yaml"; then
            echo "$(basename "$0"): operations/$app/app.yaml no longer has the \`limits:\` or \`page_bound:\` line this bench lifts" >&2
            exit 1
        fi
    done
}

# The peak RSS (KiB) of a running process.
rss_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
