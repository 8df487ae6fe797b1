#!/usr/bin/env bash
# Installs seatgate on a gateway (or any systemd machine) from a built binary:
#   scripts/install.sh [BINARY] [DESTDIR]
# BINARY defaults to target/release/seatgate; DESTDIR (for firmware images)
# to /. An existing /etc/seatgate/seatgate.toml is never overwritten.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${1:-target/release/seatgate}
DEST=${2:-}
[ -x "$BIN" ] || { echo "no binary at $BIN; build it: cargo build --release (or cross, see README)" >&2; exit 1; }
install -D -m 0755 "$BIN" "$DEST/usr/bin/seatgate"
# The OpenVPN plugin, when built (cargo build --profile plugin -p seatgate-openvpn).
SO=${PLUGIN_SO:-$(dirname "$BIN")/../plugin/libseatgate_openvpn.so}
if [ -f "$SO" ]; then
  install -D -m 0644 "$SO" "$DEST/usr/lib/seatgate/seatgate-openvpn.so"
fi
install -D -m 0644 systemd/seatgate.service "$DEST/usr/lib/systemd/system/seatgate.service"
install -D -m 0644 systemd/seatgate.socket "$DEST/usr/lib/systemd/system/seatgate.socket"
install -D -m 0644 systemd/seatgate.sysusers "$DEST/usr/lib/sysusers.d/seatgate.conf"
install -D -m 0644 README.md "$DEST/usr/share/doc/seatgate/README.md"
if [ ! -e "$DEST/etc/seatgate/seatgate.toml" ]; then
  install -D -m 0644 config/seatgate.toml "$DEST/etc/seatgate/seatgate.toml"
  echo "installed the example config: set device and trusted_keys in $DEST/etc/seatgate/seatgate.toml"
fi
if [ -z "$DEST" ] && [ -d /run/systemd/system ]; then
  systemd-sysusers seatgate.conf
  systemctl daemon-reload
  echo "next: seatgate check-config && systemctl enable --now seatgate.socket seatgate.service"
fi
