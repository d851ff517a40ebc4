#!/bin/sh
# Stops every demo buddy (each stops its service first, then exits).
here=$(cd "$(dirname "$0")" && pwd)
for status in "$here"/state/buddies/*/status; do
    [ -f "$status" ] || continue
    pid=$(sed -n 's/.*"buddy_pid":\([0-9]*\).*/\1/p' "$status")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && echo "stopping buddy $pid ($(dirname "$status"))"
done
