#!/bin/sh
# Trivial --script-tun target for openconnect: holds the VPN fd ($VPNFD)
# open and discards traffic. openconnect calls it once; it exits when
# openconnect closes the socket or after 1 h at most.
exec /usr/bin/timeout 3600 /bin/cat <&"${VPNFD:-0}" >/dev/null
