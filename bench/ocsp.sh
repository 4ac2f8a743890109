#!/usr/bin/env bash
# OCSP responder throughput of `ztpki serve`, measured with wrk (not part of the test run).
#
#   bash bench/ocsp.sh [--quick]
#
# Makes a fresh instance (its own SoftHSM2 token, SQLite) with CERTS issued
# certificates of which REVOKED are revoked, starts `ztpki serve` with WORKERS
# workers on a free port of 127.0.0.1, checks with `openssl ocsp` and with
# bench/ocsp_bodies.py check that good and revoked certificates get correct,
# signed answers, then runs wrk (-t1, CONNS connections, WARMUP s warm-up,
# RUNS runs of DURATION s) against:
#   (a) GET /health                  the same server's trivial request
#   (b) POST /ocsp without nonce     cacheable: rotating over all CERTS serials
#   (c) POST /ocsp with nonce        a fresh signature per request (distinct nonces)
#   (d) GET /ocsp/<base64>           without nonce, rotating over all serials
# and prints responses/s (median of the runs), the ratio to (a), the server's
# CPU per request and every non-2xx / non-successful answer and socket error.
# The server is stopped on exit (trap). Everything stays on 127.0.0.1.
#
# Then (PROFILE=1, the default), with the server stopped, the in-process cost
# of each path and of the steps of OcspResponder.respond (ocsp_bodies.py profile).
#
# Environment: DURATION (10) WARMUP (3) RUNS (3) CONNS (4) WORKERS (2)
#              CERTS (300) REVOKED (30) NONCE_BODIES (2000) KEY_TYPE (ec-p256)
#              PROFILE (1) PROFILE_SECONDS (2)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PY=${PYTHON:-$REPO/.venv/bin/python}
ZTPKI=${ZTPKI:-$REPO/.venv/bin/ztpki}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
RUNS=${RUNS:-3}
CONNS=${CONNS:-4}
WORKERS=${WORKERS:-2}
CERTS=${CERTS:-300}
REVOKED=${REVOKED:-30}
NONCE_BODIES=${NONCE_BODIES:-2000}
KEY_TYPE=${KEY_TYPE:-ec-p256}
PROFILE=${PROFILE:-1}
PROFILE_SECONDS=${PROFILE_SECONDS:-2}
PROFILE_ROUNDS=3

for arg in "$@"; do
    case "$arg" in
        --quick) DURATION=3; WARMUP=1; RUNS=1; PROFILE_SECONDS=0.5; PROFILE_ROUNDS=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

for tool in wrk openssl curl; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run bash deploy/setup.sh" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/ztpki-ocsp-bench.XXXXXX)
SERVER_PID=""

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
REQ="$WORK/requests"
CLK_TCK=$(getconf CLK_TCK)

echo "# ztpki OCSP benchmark: $(nproc) CPUs, $WORKERS workers, wrk -t1 -c$CONNS, ${WARMUP}s warm-up, $RUNS x ${DURATION}s per scenario"
echo "# wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), $(openssl version)"

"$PY" "$HERE/ocsp_bodies.py" prepare --home "$WORK/home" --port "$PORT" --out "$REQ" \
    --certs "$CERTS" --revoked "$REVOKED" --nonce-bodies "$NONCE_BODIES" --key-type "$KEY_TYPE"

"$ZTPKI" --home "$WORK/home" serve --host 127.0.0.1 --port "$PORT" --workers "$WORKERS" \
    >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 150); do
    curl -fsS -m 2 "$URL/health" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server died:" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.2
done
curl -fsS -m 2 "$URL/health" >/dev/null || { echo "server did not come up:" >&2; cat "$WORK/server.log" >&2; exit 1; }
for _ in $(seq 1 50); do  # all workers forked (each builds its app after fork)
    [ "$(pgrep -c -P "$SERVER_PID")" -ge "$WORKERS" ] && break
    sleep 0.2
done
echo "# server: pid $SERVER_PID, workers $(pgrep -P "$SERVER_PID" | tr '\n' ' ')on $URL"

# -- correctness first: openssl ocsp (POST, with and without nonce), then every body wrk will send
check_openssl() {  # cert-file expected-status extra-args...
    local cert=$1 want=$2; shift 2
    local out
    out=$(timeout 20 openssl ocsp -issuer "$REQ/issuing.pem" -cert "$REQ/$cert" -url "$URL/ocsp" \
        -CAfile "$REQ/chain.pem" "$@" 2>&1) || { echo "openssl ocsp failed for $cert:" >&2; echo "$out" >&2; exit 1; }
    if ! grep -q "^Response verify OK" <<<"$out" || ! grep -q "^$REQ/$cert: $want" <<<"$out"; then
        echo "openssl ocsp: unexpected answer for $cert (wanted $want):" >&2
        echo "$out" >&2
        exit 1
    fi
    echo "openssl ocsp -cert $cert${*:+ $*}: $want, Response verify OK"
}
check_openssl good.pem good
check_openssl good.pem good -no_nonce
if [ -f "$REQ/revoked.pem" ]; then
    check_openssl revoked.pem revoked
    check_openssl revoked.pem revoked -no_nonce
fi
"$PY" "$HERE/ocsp_bodies.py" check --url "$URL" --out "$REQ"

# -- measurement
worker_ticks() {
    local total=0 pid line rest
    for pid in $(pgrep -P "$SERVER_PID"); do
        read -r line <"/proc/$pid/stat" || continue
        rest=${line##*) }
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13}))  # utime + stime (stat fields 14, 15)
    done
    echo "$total"
}

busy_ticks() {  # the whole machine: everything but idle and iowait
    local cpu user nice system idle iowait irq softirq steal rest
    read -r cpu user nice system idle iowait irq softirq steal rest </proc/stat
    echo $((user + nice + system + irq + softirq + steal))
}

run_wrk() {  # seconds requests-file expect output-file
    local seconds=$1 file=$2 expect=$3 out=$4
    local TIMEFORMAT='%U %S'
    { time timeout $((seconds + 30)) wrk -t1 -c"$CONNS" -d"${seconds}s" --timeout 5s --latency \
        -s "$HERE/ocsp.lua" "$URL" -- "$file" "$expect" >"$out" 2>&1; } 2>"$out.time"
}

median() { sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

declare -A RATE RUNLIST CPU_US NON2XX BAD SOCKERR LAT OTHER WRKCPU
SCENARIOS=(health post nonce get)
declare -A FILE=([health]="$REQ/health.txt" [post]="$REQ/post.txt" [nonce]="$REQ/nonce.txt" [get]="$REQ/get.txt")
declare -A EXPECT=([health]=http [post]=ocsp [nonce]=ocsp [get]=ocsp)
declare -A TITLE=(
    [health]="(a) GET /health"
    [post]="(b) POST /ocsp, no nonce (cached)"
    [nonce]="(c) POST /ocsp, nonce (signed each time)"
    [get]="(d) GET /ocsp/<base64>, no nonce"
)

for name in "${SCENARIOS[@]}"; do
    run_wrk "$WARMUP" "${FILE[$name]}" "${EXPECT[$name]}" "$WORK/warmup.txt"
    rates="" cpus="" non2xx=0 bad=0 sockerr=0 lats="" others="" wrkcpus=""
    for run in $(seq 1 "$RUNS"); do
        out="$WORK/$name.$run.txt"
        ticks0=$(worker_ticks); busy0=$(busy_ticks)
        run_wrk "$DURATION" "${FILE[$name]}" "${EXPECT[$name]}" "$out"
        ticks1=$(worker_ticks); busy1=$(busy_ticks)
        rate=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        requests=$(awk '/ requests in / {print $1}' "$out")
        lat=$(awk '$1 == "Latency" {print $2; exit}' "$out")
        n2=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out"); n2=${n2:-0}
        b=$(sed -n 's/^bench: .*bad answers \([0-9]*\),.*/\1/p' "$out"); b=${b:-0}
        se=$(sed -n 's/^bench: .*socket errors \([0-9]*\)$/\1/p' "$out"); se=${se:-0}
        if [ -z "$rate" ] || [ -z "$requests" ]; then
            echo "wrk gave no result for $name:" >&2; cat "$out" >&2; exit 1
        fi
        read -r wu ws <"$out.time"
        server_s=$(awk -v t=$((ticks1 - ticks0)) -v hz="$CLK_TCK" 'BEGIN {print t / hz}')
        cpu_us=$(awk -v s="$server_s" -v n="$requests" 'BEGIN {printf "%.0f", 1e6 * s / n}')
        wrk_cores=$(awk -v u="$wu" -v s="$ws" -v d="$DURATION" 'BEGIN {printf "%.2f", (u + s) / d}')
        other=$(awk -v b=$((busy1 - busy0)) -v hz="$CLK_TCK" -v srv="$server_s" -v u="$wu" -v s="$ws" -v d="$DURATION" \
            'BEGIN {o = (b / hz - srv - u - s) / d; if (o < 0) o = 0; printf "%.2f", o}')
        printf '%-42s run %d: %8.0f responses/s  latency avg %-8s server %5s µs CPU/req  wrk %s cores  other %s cores  non-2xx %s  bad %s  socket errors %s\n' \
            "${TITLE[$name]}" "$run" "$rate" "$lat" "$cpu_us" "$wrk_cores" "$other" "$n2" "$b" "$se"
        rates+="$rate"$'\n'; cpus+="$cpu_us"$'\n'; lats+="$lat "; others+="$other"$'\n'; wrkcpus+="$wrk_cores"$'\n'
        non2xx=$((non2xx + n2)); bad=$((bad + b)); sockerr=$((sockerr + se))
    done
    RATE[$name]=$(printf '%s' "$rates" | median)
    RUNLIST[$name]=$(printf '%s' "$rates" | awk '{printf "%s%.0f", (NR > 1 ? ", " : ""), $1}')
    CPU_US[$name]=$(printf '%s' "$cpus" | median)
    OTHER[$name]=$(printf '%s' "$others" | sort -g | tail -1)
    WRKCPU[$name]=$(printf '%s' "$wrkcpus" | median)
    LAT[$name]=$lats
    NON2XX[$name]=$non2xx; BAD[$name]=$bad; SOCKERR[$name]=$sockerr
done

stop_server

echo
echo "## OCSP (ztpki serve, $WORKERS gevent workers, $KEY_TYPE responder key in SoftHSM2; wrk -t1 -c$CONNS, median of $RUNS x ${DURATION}s)"
echo
echo "| scenario | responses/s | runs | ratio to (a) | server µs CPU/req | wrk cores | non-2xx | bad answers | socket errors | max other load (cores) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for name in "${SCENARIOS[@]}"; do
    ratio=$(awk -v r="${RATE[$name]}" -v h="${RATE[health]}" 'BEGIN {printf "%.0f %%", 100 * r / h}')
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${TITLE[$name]}" "${RATE[$name]}" \
        "${RUNLIST[$name]}" "$ratio" "${CPU_US[$name]}" "${WRKCPU[$name]}" "${NON2XX[$name]}" "${BAD[$name]}" "${SOCKERR[$name]}" "${OTHER[$name]}"
done
echo
echo "Goal: OCSP >= 2,000 responses/s on 2 cores, about 80 % of the trivial-request rate (a)."
for name in post get nonce; do
    awk -v r="${RATE[$name]}" -v h="${RATE[health]}" -v t="${TITLE[$name]}" 'BEGIN {
        printf "  %-42s %6.0f/s (%s 2,000/s), %3.0f %% of (a) (%s 80 %%)\n", t, r,
            (r >= 2000 ? "meets" : "BELOW"), 100 * r / h, (r / h >= 0.8 ? "meets" : "BELOW") }'
done
total_bad=0
for name in "${SCENARIOS[@]}"; do
    total_bad=$((total_bad + NON2XX[$name] + BAD[$name]))
done
if [ "$PROFILE" = 1 ]; then
    echo
    timeout 600 "$PY" "$HERE/ocsp_bodies.py" profile --home "$WORK/home" --out "$REQ" \
        --seconds "$PROFILE_SECONDS" --rounds "$PROFILE_ROUNDS"
fi
if [ "$total_bad" -ne 0 ]; then
    echo "WARNING: $total_bad non-2xx or non-successful answers were counted above" >&2
    exit 1
fi
