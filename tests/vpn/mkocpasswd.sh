#!/bin/sh
# mkocpasswd.sh FILE USER:PASSWORD[:GROUP]...  -> ocserv plain-auth passwd file.
# Format per line: user:group:crypt-hash ("*" = no group). Same as
# `ocpasswd -c FILE [-g GROUP] USER` but non-interactive.
set -eu
f=${1:?usage: mkocpasswd.sh FILE USER:PASSWORD...}; shift
: > "$f"
for up in "$@"; do
    u=${up%%:*}; p=${up#*:}; g='*'
    case $p in *:*) g=${p#*:}; p=${p%%:*};; esac
    printf '%s:%s:%s\n' "$u" "$g" "$(openssl passwd -6 "$p")" >> "$f"
done
chmod 0644 "$f"
