#!/bin/bash
# measure-hooks.sh [SEATGATE_BIN] [CONNECTS] [HOOK_RUNS]
#
# What the seatgate hook costs, measured on real servers in a private
# network namespace (root; openvpn, openssl, socat, iproute2; hyperfine
# if installed, else a timed loop):
#  1. OpenVPN connect time (client start -> "Initialization Sequence
#     Completed", TCP) with `seatgate hook openvpn` as client-connect vs
#     the same server config with /bin/true as the hook, same run,
#     interleaved, CONNECTS each (default 20); median and mean.
#  2. The hook's own run time vs socat sending the same admit request
#     line to the same daemon, HOOK_RUNS each (default 200).
# Default binary: target/release/seatgate, else target/debug/seatgate.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-}
if [ -z "$BIN" ]; then
    BIN=$HERE/target/release/seatgate
    [ -x "$BIN" ] || BIN=$HERE/target/debug/seatgate
fi
BIN=$(readlink -f "$BIN")
N=${2:-20}
RUNS=${3:-200}
[ -x "$BIN" ] || { echo "no seatgate binary at $BIN (cargo build --release)"; exit 1; }
for t in openvpn openssl socat ip unshare; do
    command -v "$t" >/dev/null || { echo "missing $t; .ci/run installs it"; exit 1; }
done

if [ -z "${MEASURE_IN_NETNS:-}" ]; then
    exec timeout -k 5 600 unshare --net -- env MEASURE_IN_NETNS=1 "$0" "$BIN" "$N" "$RUNS"
fi
ip link set lo up
W=$(mktemp -d /tmp/seatgate-measure.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.3
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT
now() { date +%s%N; }
wait_for() {  # wait_for SECONDS CMD...
    local end=$(( $(now) + $1 * 1000000000 )); shift
    until "$@"; do [ "$(now)" -lt "$end" ] || return 1; sleep 0.002; done
}
# stats FILE: median and mean of the numbers in FILE (microseconds) in ms
stats() {
    sort -n "$1" | awk '{ a[NR] = $1; s += $1 } END {
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
        printf "median %.2f ms, mean %.2f ms, min %.2f ms, max %.2f ms (n=%d)", m / 1000, s / NR / 1000, a[1] / 1000, a[NR] / 1000, NR }'
}

"$HERE/tests/vpn/mkpki.sh" "$W/pki" 1 >/dev/null
cat > "$W/seatgate.toml" <<TOML
device = "ESG-MEASURE"
builtin_seats = 1000
log_level = "warn"
[paths]
socket = "$W/run/seatgate.sock"
runtime_dir = "$W/run"
state_dir = "$W/state"
TOML
"$BIN" run --config "$W/seatgate.toml" > "$W/daemon.log" 2>&1 &
PIDS+=($!)
wait_for 10 "$BIN" status --config "$W/seatgate.toml" >/dev/null 2>&1 \
    || { echo "daemon did not start"; cat "$W/daemon.log"; exit 1; }

# server NAME PORT HOOK: an OpenVPN server in $W/NAME sharing the PKI.
server() {
    mkdir -p "$W/$1"
    ln -s "$W/pki" "$W/$1/pki"
    sed -e "s#@DIR@#$W/$1#g; s#@PROTO@#tcp4-server#; s#@PORT@#$2#; s#@HOOK@#$3#; s#@SOCK@#$W/run/seatgate.sock#" \
        "$HERE/tests/vpn/openvpn-server.conf.tmpl" > "$W/$1/server.conf"
    openvpn --config "$W/$1/server.conf" > "$W/$1/server.log" 2>&1 &
    PIDS+=($!)
    wait_for 10 grep -qs "Initialization Sequence Completed" "$W/$1/server.log" \
        || { echo "server $1 did not start"; cat "$W/$1/server.log"; exit 1; }
}
server seatgate 1194 "\"$BIN hook openvpn\""
server true 1195 /bin/true

# connect PORT: one client run; prints microseconds to "connected".
connect() {
    sed -e "s#@DIR@#$W#g; s#@PROTO@#tcp4-client#; s#@PORT@#$1#; s#@CLIENT@#client1#; /^explicit-exit-notify/d" \
        "$HERE/tests/vpn/openvpn-client.conf.tmpl" > "$W/client-$1.conf"
    : > "$W/client-$1.log"
    local t0 pid
    t0=$(now)
    openvpn --config "$W/client-$1.conf" > "$W/client-$1.log" 2>&1 &
    pid=$!
    wait_for 10 grep -qs "Initialization Sequence Completed" "$W/client-$1.log" \
        || { echo "client on $1 did not connect" >&2; cat "$W/client-$1.log" >&2; kill $pid; return 1; }
    echo $(( ($(now) - t0) / 1000 ))
    kill -TERM $pid; wait $pid 2>/dev/null
}
: > "$W/with-seatgate"; : > "$W/with-true"
for i in $(seq "$N"); do
    connect 1194 >> "$W/with-seatgate" || exit 1
    connect 1195 >> "$W/with-true" || exit 1
done
echo "OpenVPN connect (TCP, client start -> Initialization Sequence Completed):"
echo "  seatgate hook: $(stats "$W/with-seatgate")"
echo "  /bin/true:     $(stats "$W/with-true")"
grep -o 'seats in use, [0-9]* us)' "$W/seatgate/server.log" | grep -o '[0-9]* us' | grep -o '[0-9]*' > "$W/rtt"
echo "  the hook's socket round trip inside those connects (its own log): $(stats "$W/rtt")"

# The hook alone vs socat, same admit request (the key holds a seat after
# the first run, so every later run is the same "admitted again" answer).
SPID=$(cat "$W/seatgate/openvpn.pid")
export script_type=client-connect daemon_pid=$SPID daemon_start_time=1 time_unix=2 \
    common_name=bench ifconfig_pool_remote_ip=10.8.0.9 trusted_ip=127.0.0.1 \
    SEATGATE_SOCKET=$W/run/seatgate.sock
REQ='{"v":1,"op":"admit","key":"openvpn:'$SPID':1:2:bench:10.8.0.9","user":"bench","server":{"kind":"openvpn","pid":'$SPID'},"remote":"127.0.0.1"}'
"$BIN" hook openvpn 2>/dev/null || { echo "hook did not admit"; exit 1; }
echo "$REQ" | socat -t 1 - "UNIX-CONNECT:$W/run/seatgate.sock" | grep -q '"admitted":true' \
    || { echo "socat request not admitted"; exit 1; }
echo "hook run time vs socat, same request ($RUNS runs each):"
if command -v hyperfine >/dev/null; then
    hyperfine -N --warmup 20 --runs "$RUNS" --style basic \
        "$BIN hook openvpn" 2>/dev/null | grep -E "Time|Range" | sed 's/^/  hook:  /'
    hyperfine --warmup 20 --runs "$RUNS" --style basic \
        "echo '$REQ' | socat -t 1 - UNIX-CONNECT:$W/run/seatgate.sock" 2>/dev/null \
        | grep -E "Time|Range" | sed 's/^/  socat: /'
    echo "  (hyperfine: hook run directly (-N); socat through sh -c, shell cost subtracted by hyperfine)"
else
    loop() {
        local t0 i
        t0=$(now)
        for i in $(seq "$RUNS"); do "$@" >/dev/null 2>&1; done
        echo $(( ($(now) - t0) / RUNS / 1000 ))
    }
    sock() { echo "$REQ" | socat -t 1 - "UNIX-CONNECT:$W/run/seatgate.sock"; }
    echo "  hook:  $(loop "$BIN" hook openvpn) us per run (mean)"
    echo "  socat: $(loop sock) us per run (mean)"
fi
echo "binary: $BIN ($(stat -c %s "$BIN") bytes)"
