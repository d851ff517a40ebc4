#!/bin/sh
# Builds upkeeper and runs it in the foreground on the demo configuration.
# State (run directories, logs, status files) goes to demo/state; Ctrl-C stops the controller
# and leaves the services with their buddies. To stop everything: demo/stop.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
# The first build takes a few minutes on two cores: cargo's own progress says how far it is
# (one "Compiling" line per crate); later runs are a second of "Finished".
echo "demo: building upkeeper (cargo build --bins; the first build takes a few minutes)" >&2
cargo build --bins
echo "demo: starting the controller on demo/upkeeper.conf (Ctrl-C to stop it)" >&2
# upkeeper refuses configuration that others could have written (umask 002 checkouts).
chmod go-w demo/upkeeper.conf demo/upkeeper.d/*.conf
exec target/debug/upkeeper --config demo/upkeeper.conf run
