#!/bin/sh
# Builds upkeeper and runs it in the foreground on the demo configuration.
# State (run directories, logs, status files) goes to demo/state; Ctrl-C stops the controller
# and leaves the services with their buddies. To stop everything: demo/stop.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
cargo build --quiet --bins
# upkeeper refuses configuration that others could have written (umask 002 checkouts).
chmod go-w demo/upkeeper.conf demo/upkeeper.d/*.conf
exec target/debug/upkeeper --config demo/upkeeper.conf run
