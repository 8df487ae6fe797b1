#!/bin/sh
# mkocpasswd.sh FILE USER:PASSWORD...   -> ocserv plain-auth passwd file.
# Format per line: user:group:crypt-hash ("*" = no group). Same as
# `ocpasswd -c FILE USER` but non-interactive.
set -eu
f=${1:?usage: mkocpasswd.sh FILE USER:PASSWORD...}; shift
: > "$f"
for up in "$@"; do
    u=${up%%:*}; p=${up#*:}
    printf '%s:*:%s\n' "$u" "$(openssl passwd -6 "$p")" >> "$f"
done
chmod 0644 "$f"
