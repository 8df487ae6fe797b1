#!/bin/sh
# Test hook for OpenVPN client-connect/client-disconnect and ocserv
# connect-script/disconnect-script. OpenVPN gives hooks NO environment except
# its own variables + --setenv ones (no PATH), so use absolute paths only.
#   HOOK_LOG_DIR  (setenv / env)  where to dump the env: one file per call
#   HOOK_REJECT_DIR               if HOOK_REJECT_DIR/<common_name or USERNAME>
#                                 exists, exit 1 (reject)
# File name: <seq-ns>-<script_type or REASON>-<cn or user>.env
d=${HOOK_LOG_DIR:-/tmp}
who=${common_name:-${USERNAME:-unknown}}
kind=${script_type:-${REASON:-unknown}}
ts=$(/bin/date +%s%N)
/usr/bin/env | /usr/bin/sort > "$d/$ts-$kind-$who.env"
if [ "$kind" = client-connect ] || [ "$kind" = connect ]; then
    if [ -n "${HOOK_REJECT_DIR:-}" ] && [ -e "$HOOK_REJECT_DIR/$who" ]; then
        exit 1
    fi
fi
exit 0
