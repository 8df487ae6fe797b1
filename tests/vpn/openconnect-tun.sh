#!/bin/sh
# Optional --script-tun target for openconnect (only if a client must run
# without a tun device; the default recipe uses `--script /bin/true` and a
# kernel tun, which needs nothing else). openconnect hands this script a
# SOCK_DGRAM socket in $VPNFD: it never reports EOF, so a plain `cat` would
# outlive openconnect. Instead find the openconnect ancestor and exit when it
# is gone (1 h at most); traffic is ignored (nothing reads the socket).
p=$PPID
while [ "$p" -gt 1 ] && [ "$(cat /proc/$p/comm 2>/dev/null)" != openconnect ]; do
    p=$(awk '{print $4}' /proc/$p/stat 2>/dev/null || echo 1)
done
i=0
while [ "$p" -gt 1 ] && kill -0 "$p" 2>/dev/null && [ "$i" -lt 3600 ]; do
    sleep 1; i=$((i + 1))
done
