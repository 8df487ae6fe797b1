#!/usr/bin/env bash
# Checks the systemd units without systemd running (Debian's systemd package
# provides the tools): `systemd-analyze verify` must print nothing (it exits
# 0 even on unknown keys and bad values, so any output is a failure), and the
# service's exposure score must be at most 2.0. The service must not wait
# for the network: admission needs none, hooks connect through the socket
# from boot on, and the cloud loop retries by itself. The metrics service
# (seatgate-metrics.service, run by its timer) is held to the same limit.
# Usage: scripts/check-units.sh [path/to/seatgate binary]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
net=$(grep -nE '^[[:space:]]*(After|Wants|Requires|BindsTo|Requisite)[[:space:]]*=.*(\bnetwork(-online)?\.target\b|wait-online\.service)' systemd/seatgate.service || true)
if [ -n "$net" ]; then
  echo "systemd/seatgate.service waits for the network; admission needs none and hooks time out meanwhile:" >&2
  echo "$net" >&2
  exit 1
fi
echo "no network ordering: clean"
BIN=$(realpath "${1:-target/debug/seatgate}")
THRESHOLD=20 # --threshold takes the score times ten
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify checks that ExecStart exists: point it at the built binary.
UNITS=(seatgate.socket seatgate.service seatgate-metrics.service seatgate-metrics.timer)
for u in "${UNITS[@]}"; do
  sed "s|/usr/bin/seatgate|$BIN|" "systemd/$u" >"$tmp/$u"
done
out=$(cd "$tmp" && systemd-analyze verify "${UNITS[@]/#/$tmp/}" 2>&1) || true
if [ -n "$out" ]; then
  echo "systemd-analyze verify complained:" >&2
  echo "$out" >&2
  exit 1
fi
echo "systemd-analyze verify: clean"
for s in seatgate.service seatgate-metrics.service; do
  score=$(systemd-analyze security --offline=yes "$tmp/$s" 2>&1 | grep -o "Overall exposure level for $s: [0-9.]*")
  echo "$score (limit $((THRESHOLD / 10)).$((THRESHOLD % 10)))"
  systemd-analyze security --offline=yes --threshold=$THRESHOLD "$tmp/$s" >/dev/null
done
