#!/bin/bash
# vpn-smoke.sh openvpn|openvpn-tcp|ocserv [WORKDIR] [N_CLIENTS]
#
# End-to-end proof of the recipe in README.md, using the hook-log.sh test hook:
# runs a real server + N real clients inside a private network namespace
# (re-execs itself under `unshare --net`), rejects the last client through
# the hook, checks admission/rejection/disconnect hooks and the server's
# session list, then stops everything it started. Bounded: every wait has a
# deadline and the whole run is under `timeout 120`.
# Exit 0 and "N passed, 0 failed" on success. Needs root, openvpn, ocserv,
# openconnect, openssl, iproute2, socat.
set -u
KIND=${1:?usage: vpn-smoke.sh openvpn|openvpn-tcp|ocserv [WORKDIR] [N_CLIENTS]}
HERE=$(cd "$(dirname "$0")" && pwd)

if [ -z "${VPN_SMOKE_IN_NETNS:-}" ]; then
    W=${2:-$(mktemp -d /tmp/vpn-smoke.XXXXXX)}
    exec timeout -k 5 120 unshare --net -- env VPN_SMOKE_IN_NETNS=1 "$0" "$KIND" "$W" "${3:-3}"
fi
W=$2
N=$3
ip link set lo up

PIDS=()
PASS=0
FAIL=0
# SIGTERM, then up to 5 s for a graceful exit (ocserv needs ~2.5 s and must
# reap its own sec-mod/worker children: PID 1 here does not reap orphans),
# then SIGKILL whatever is left.
cleanup() {
    local p i
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for i in $(seq 50); do
        alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT
ok()   { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad()  { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
ms()   { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# wait_for SECONDS CMD...: poll CMD every 10 ms until it succeeds
wait_for() {
    local end=$(( $(date +%s%N) + $1 * 1000000000 )); shift
    until "$@"; do
        [ "$(date +%s%N)" -lt "$end" ] || return 1
        sleep 0.01
    done
}
hooks() { ls "$W/hooklog" | grep -c -- "$1"; }
has_hook() { ls "$W/hooklog" | grep -q -- "$1"; }

mkdir -p "$W/hooklog" "$W/reject"
chmod 755 "$W"
"$HERE/mkpki.sh" "$W/pki" "$((N + 1))" >/dev/null || { echo "mkpki failed"; exit 1; }
echo "work dir: $W, namespace: $(readlink /proc/self/ns/net)"

case $KIND in
openvpn|openvpn-tcp)
    if [ "$KIND" = openvpn ]; then SP=udp4; CP=udp4; else SP=tcp4-server; CP=tcp4-client; fi
    sed -e "s#@DIR@#$W#g; s#@PROTO@#$SP#; s#@PORT@#1194#; s#@HOOK@#$HERE/hook-log.sh#; s#@SOCK@#$W/seatgate.sock#" \
        "$HERE/openvpn-server.conf.tmpl" > "$W/server.conf"
    t=$(date +%s%N)
    openvpn --config "$W/server.conf" > "$W/server.log" 2>&1 &
    PIDS+=($!)
    if wait_for 10 grep -qs "Initialization Sequence Completed" "$W/server.log"; then
        ok "server up in $(ms "$t") ms"
    else bad "server did not start"; cat "$W/server.log"; exit 1; fi

    touch "$W/reject/client$N"          # the last client gets rejected
    declare -A CPID
    t=$(date +%s%N)
    for i in $(seq 1 "$N"); do
        sed -e "s#@DIR@#$W#g; s#@PROTO@#$CP#; s#@PORT@#1194#; s#@CLIENT@#client$i#" \
            "$HERE/openvpn-client.conf.tmpl" > "$W/client$i.conf"
        [ "$CP" = udp4 ] || sed -i '/^explicit-exit-notify/d' "$W/client$i.conf"
        openvpn --config "$W/client$i.conf" > "$W/client$i.log" 2>&1 &
        PIDS+=($!); CPID[$i]=$!
    done
    for i in $(seq 1 "$N"); do
        wait_for 15 grep -qsE "Initialization Sequence Completed|AUTH_FAILED" "$W/client$i.log"
        if [ "$i" -lt "$N" ]; then
            grep -q "Initialization Sequence Completed" "$W/client$i.log" \
                && ok "client$i admitted ($(ms "$t") ms since start of batch)" || bad "client$i not admitted"
        else
            grep -q "AUTH_FAILED" "$W/client$i.log" \
                && ok "client$i rejected: $(grep -o 'AUTH: Received control message: AUTH_FAILED.*' "$W/client$i.log") ($(ms "$t") ms)" \
                || bad "client$i not rejected"
        fi
    done
    wait_for 5 has_hook "client-disconnect-client$N" \
        && ok "client-disconnect called for REJECTED client$N" || bad "no disconnect for rejected client"
    st=$( (printf 'status 3\n'; sleep 0.3; printf 'quit\n') | timeout 5 socat -t 2 - UNIX-CONNECT:"$W/mgmt.sock")
    printf '%s\n' "$st" > "$W/status3.txt"
    # A rejected client stays in CLIENT_LIST (empty Virtual Address, cipher
    # BF-CBC) until the server's 5 s "delayed exit" (UDP; TCP drops at once).
    n=$(printf '%s\n' "$st" | grep -c '^CLIENT_LIST')
    a=$(printf '%s\n' "$st" | awk -F'\t' '$1 == "CLIENT_LIST" && $4 != ""' | wc -l)
    [ "$a" -eq $((N - 1)) ] && ok "status 3: $a clients with a virtual address ($n rows)" \
        || bad "status 3 lists $a clients with an address, want $((N - 1))"
    # client N+1 offers no common data cipher: client-connect runs and admits
    # it, then the server sends AUTH_FAILED and drops it WITHOUT calling
    # client-disconnect (a leaked seat unless the daemon reconciles).
    X=$((N + 1))
    sed -e "s#@DIR@#$W#g; s#@PROTO@#$CP#; s#@PORT@#1194#; s#@CLIENT@#client$X#" \
        "$HERE/openvpn-client.conf.tmpl" > "$W/client$X.conf"
    [ "$CP" = udp4 ] || sed -i '/^explicit-exit-notify/d' "$W/client$X.conf"
    echo "data-ciphers AES-192-GCM" >> "$W/client$X.conf"
    openvpn --config "$W/client$X.conf" > "$W/client$X.log" 2>&1 &
    PIDS+=($!)
    wait_for 10 grep -qs "AUTH_FAILED" "$W/client$X.log" && has_hook "client-connect-client$X" \
        && ok "client$X admitted by hook, then: $(grep -o 'AUTH_FAILED,.*' "$W/client$X.log")" \
        || bad "cipher-fail client$X: unexpected outcome"
    sleep 6   # past the server's 5 s delayed exit
    ! has_hook "client-disconnect-client$X" && ok "no client-disconnect for cipher-fail client$X after 6 s" \
        || bad "client-disconnect was called for cipher-fail client$X"
    t=$(date +%s%N)
    kill -TERM "${CPID[1]}"
    wait_for 10 has_hook client-disconnect-client1 \
        && ok "client-disconnect for client1 $(ms "$t") ms after SIGTERM" || bad "no disconnect for client1"
    ;;
ocserv)
    users=()
    for i in $(seq 1 "$N"); do users+=("user$i:pass$i"); done
    "$HERE/mkocpasswd.sh" "$W/ocpasswd" "${users[@]}"
    chmod 644 "$W/pki/server.key"     # workers run as nobody
    sed -e "s#@DIR@#$W#g; s#@PORT@#4443#; s#@HOOK@#$HERE/hook-log.sh#" "$HERE/ocserv.conf.tmpl" > "$W/ocserv.conf"
    t=$(date +%s%N)
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOOK_LOG_DIR="$W/hooklog" HOOK_REJECT_DIR="$W/reject" \
        SEATGATE_SOCKET="$W/seatgate.sock" ocserv -f -c "$W/ocserv.conf" > "$W/ocserv.log" 2>&1 &
    PIDS+=($!); SPID=$!
    if wait_for 10 occtl -s "$W/occtl.sock" show status >/dev/null 2>&1; then
        ok "ocserv up in $(ms "$t") ms"
    else bad "ocserv did not start"; cat "$W/ocserv.log"; exit 1; fi

    touch "$W/reject/user$N"
    declare -A CPID
    t=$(date +%s%N)
    for i in $(seq 1 "$N"); do
        echo "pass$i" | openconnect --non-inter --passwd-on-stdin --no-dtls --reconnect-timeout 1 \
            -u "user$i" --cafile "$W/pki/ca.crt" --script /bin/true https://127.0.0.1:4443/ \
            > "$W/oc$i.log" 2>&1 &
        PIDS+=($!); CPID[$i]=$!
    done
    for i in $(seq 1 "$N"); do
        wait_for 15 grep -qsE "Configured as|Cookie was rejected" "$W/oc$i.log"
        if [ "$i" -lt "$N" ]; then
            grep -q "Configured as" "$W/oc$i.log" \
                && ok "user$i admitted ($(ms "$t") ms since start of batch)" || bad "user$i not admitted"
        else
            grep -q "Cookie was rejected" "$W/oc$i.log" \
                && ok "user$i rejected: $(grep -o 'HTTP/1.1 401.*' "$W/oc$i.log")" || bad "user$i not rejected"
        fi
    done
    occtl -s "$W/occtl.sock" -j show users > "$W/occtl-users.json"
    n=$(grep -c '"Username"' "$W/occtl-users.json")
    [ "$n" -eq $((N - 1)) ] && ok "occtl -j show users lists $n users" || bad "occtl lists $n users, want $((N - 1))"
    t=$(date +%s%N)
    kill -TERM "${CPID[1]}"
    wait_for 10 has_hook disconnect-user1 \
        && ok "disconnect-script for user1 $(ms "$t") ms after client SIGTERM" || bad "no disconnect for user1"
    sleep 0.5
    ! has_hook "disconnect-user$N" && ok "no disconnect-script for rejected user$N" \
        || bad "disconnect-script called for rejected user$N"
    ;;
*) echo "unknown kind $KIND"; exit 2 ;;
esac

echo "hook calls:"; ls "$W/hooklog" | sed 's/^/  /'
echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
