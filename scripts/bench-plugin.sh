#!/bin/bash
# bench-plugin.sh [ROUNDS] [MEM_CONNECTS]
#
# The OpenVPN plugin against the script hook and no seatgate at all, with
# real OpenVPN 2.6 servers in a private network namespace (root; openvpn,
# openssl, socat, iproute2, util-linux), all in the same run:
#  1. connect time (client start -> "Initialization Sequence Completed",
#     TCP), ROUNDS interleaved rounds (default 20), each round one connect
#     to each server: no plugin or script, the plugin, the script hook;
#     p50 and the ratios.
#  2. the daemon hung (SIGSTOP): 20 clients started at once against the
#     plugin server, the time until all are resolved, while the management
#     interface is asked `status` every 20 ms (slowest answer printed); the
#     same 20 with the daemon running (what the handshakes alone cost) and,
#     for comparison, against the script-hook server.
#  3. the plugin server's resident memory before and after MEM_CONNECTS
#     (default 500) more connects and disconnects.
# Binaries: SEATGATE_BIN (default target/release/seatgate) and PLUGIN_SO
# (default target/plugin/libseatgate_openvpn.so: cargo build --release &&
# cargo build --profile plugin -p seatgate-openvpn); CARGO_TARGET_DIR is honoured.
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
BIN=$(readlink -f "${SEATGATE_BIN:-$TARGET/release/seatgate}")
SO=$(readlink -f "${PLUGIN_SO:-$TARGET/plugin/libseatgate_openvpn.so}")
ROUNDS=${1:-20}
MEM=${2:-500}
DEADLINE_MS=500
[ -x "$BIN" ] || { echo "no seatgate binary at $BIN (cargo build --release)"; exit 1; }
[ -f "$SO" ] || { echo "no plugin at $SO (cargo build --profile plugin -p seatgate-openvpn)"; exit 1; }
for t in openvpn openssl socat ip unshare; do
    command -v "$t" >/dev/null || { echo "missing $t (scripts/test installs it)"; exit 1; }
done
if [ -z "${BENCH_IN_NETNS:-}" ]; then
    exec timeout -k 5 1800 unshare --net -- env BENCH_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up
W=$(mktemp -d /tmp/seatgate-bench.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null; kill -TERM "$p" 2>/dev/null; done
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
p50() {  # p50 FILE (microseconds) -> ms
    sort -n "$1" | awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.1f", m / 1000 }'
}

"$HERE/tests/vpn/mkpki.sh" "$W/pki" 21 >/dev/null
chmod 644 "$W/pki/"*.key
cat > "$W/seatgate.toml" <<TOML
device = "ESG-BENCH"
builtin_seats = 1000
log_level = "warn"
[paths]
socket = "$W/run/seatgate.sock"
runtime_dir = "$W/run"
state_dir = "$W/state"
TOML
"$BIN" run --config "$W/seatgate.toml" > "$W/daemon.log" 2>&1 &
DPID=$!
PIDS+=($DPID)
wait_for 10 "$BIN" status --config "$W/seatgate.toml" >/dev/null 2>&1 \
    || { echo "daemon did not start"; cat "$W/daemon.log"; exit 1; }

# server NAME PORT LINES: an OpenVPN server in $W/NAME; LINES replace the
# template's client-connect/client-disconnect lines.
server() {
    mkdir -p "$W/$1"
    ln -s "$W/pki" "$W/$1/pki"
    sed -e "s#@DIR@#$W/$1#g; s#@PROTO@#tcp4-server#; s#@PORT@#$2#; s#@SOCK@#$W/run/seatgate.sock#" \
        -e "/^client-connect /d; /^client-disconnect /d" \
        "$HERE/tests/vpn/openvpn-server.conf.tmpl" > "$W/$1/server.conf"
    printf '%b\n' "$3" >> "$W/$1/server.conf"
    openvpn --config "$W/$1/server.conf" > "$W/$1/server.log" 2>&1 &
    PIDS+=($!)
    wait_for 10 grep -qs "Initialization Sequence Completed" "$W/$1/server.log" \
        || { echo "server $1 did not start"; cat "$W/$1/server.log"; exit 1; }
}
server none 1194 ""
server plugin 1195 "plugin $SO socket=$W/run/seatgate.sock timeout_ms=$DEADLINE_MS"
server script 1196 "client-connect \"$BIN hook openvpn\"\nclient-disconnect \"$BIN hook openvpn\"\nsetenv SEATGATE_HOOK_TIMEOUT_MS $DEADLINE_MS"

# client PORT N: start clientN against PORT (background); its log is $W/cN-PORT.log
client() {
    sed -e "s#@DIR@#$W#g; s#@PROTO@#tcp4-client#; s#@PORT@#$1#; s#@CLIENT@#client$2#; /^explicit-exit-notify/d" \
        "$HERE/tests/vpn/openvpn-client.conf.tmpl" > "$W/c$2-$1.conf"
    : > "$W/c$2-$1.log"
    openvpn --config "$W/c$2-$1.conf" > "$W/c$2-$1.log" 2>&1 &
    CPID=$!
}
# connect PORT: one client run; prints microseconds to "connected".
connect() {
    local t0
    t0=$(now)
    client "$1" 1
    wait_for 10 grep -qs "Initialization Sequence Completed" "$W/c1-$1.log" \
        || { echo "client on $1 did not connect" >&2; cat "$W/c1-$1.log" >&2; kill $CPID; return 1; }
    echo $(( ($(now) - t0) / 1000 ))
    kill -TERM $CPID; wait $CPID 2>/dev/null
}
: > "$W/t-none"; : > "$W/t-plugin"; : > "$W/t-script"
for i in $(seq "$ROUNDS"); do
    connect 1194 >> "$W/t-none" || exit 1
    connect 1195 >> "$W/t-plugin" || exit 1
    connect 1196 >> "$W/t-script" || exit 1
done
N=$(p50 "$W/t-none"); P=$(p50 "$W/t-plugin"); S=$(p50 "$W/t-script")
echo "connect p50 over $ROUNDS interleaved rounds (TCP, client start -> Initialization Sequence Completed):"
echo "  no plugin or script: $N ms"
echo "  seatgate plugin:     $P ms  ($(awk -v a="$P" -v b="$N" 'BEGIN{printf "%.3f", a/b}')x none; goal <= 1.05x)"
echo "  seatgate script:     $S ms  ($(awk -v a="$S" -v b="$N" 'BEGIN{printf "%.3f", a/b}')x none)"

# burst PORT: 20 clients (2..21) at once; prints ms until all are resolved
# and the slowest management `status` answer (ms) meanwhile.
burst() {
    local port=$1 t0 i done_n slow=0 t1 dt mgmt started=()
    mgmt=$W/$2/mgmt.sock
    t0=$(now)
    for i in $(seq 2 21); do client "$port" "$i"; started+=($CPID); PIDS+=($CPID); done
    while :; do
        t1=$(now)
        echo status | socat -t 2 - "UNIX-CONNECT:$mgmt" 2>/dev/null | grep -q '^END' || true
        dt=$(( ($(now) - t1) / 1000 ))
        [ "$dt" -gt "$slow" ] && slow=$dt
        done_n=0
        for i in $(seq 2 21); do
            grep -qs -e AUTH_FAILED -e "Initialization Sequence Completed" "$W/c$i-$port.log" && done_n=$((done_n + 1))
        done
        [ "$done_n" -eq 20 ] && break
        [ $(( $(now) - t0 )) -lt 120000000000 ] || { echo "burst on $port: not resolved in 120 s" >&2; break; }
        sleep 0.02
    done
    echo "$(( ($(now) - t0) / 1000000 )) ms (slowest management status $((slow / 1000)).$(( (slow % 1000) / 100 )) ms; $(grep -ls AUTH_FAILED "$W"/c*-"$port".log | wc -l) refused)"
    kill -TERM "${started[@]}" 2>/dev/null
    wait "${started[@]}" 2>/dev/null
}
echo "20 clients at once, time until all are resolved (deadline $DEADLINE_MS ms):"
echo "  plugin, daemon running: $(burst 1195 plugin)"
kill -STOP "$DPID"
echo "  plugin, daemon hung:    $(burst 1195 plugin)"
echo "  script, daemon hung:    $(burst 1196 script)"
kill -CONT "$DPID"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
PPID_=$(cat "$W/plugin/openvpn.pid")
before=$(rss "$PPID_")
for i in $(seq "$MEM"); do
    connect 1195 >/dev/null || exit 1
done
after=$(rss "$PPID_")
echo "plugin server RSS: $before KiB before, $after KiB after $MEM more connects+disconnects"
echo "binaries: $BIN, $SO ($(stat -c %s "$SO") bytes)"
