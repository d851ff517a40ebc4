#!/usr/bin/env python3
"""Where the time of `upkctl stop X` / `upkctl start X` goes: each piece of the control path
timed on its own, with one upkeeper build under its own controller (as bench/fastpath.py runs
it). Run by hand as root:

    python3 bench/control_path.py --buddy before=/work/bench-before/bin [-n 30]

Pieces (medians of n, ms): process start-up (a static no-op, /bin/true, `upkctl --version`),
upkctl commands, Python clients on the controller's and the buddy's sockets (no client
process), the rendered stop script run by hand against a sleeping process, and `kill` alone.
Prints a markdown table; writes bench/results/control-path-<date>[-label].json. Read it with
bench/notes-control-path.md.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import BenchError, become_subreaper, fmt, results_path, summary, to_json
import fastpath
from fastpath import (STAMPS, Bench, Build, buddy_call, controller_call, count, gone,
                      ndjson_call, read_stamps, wait_for)


def timed(fn, n, between=None):
    xs = []
    for _ in range(n):
        if between:
            between()
        t0 = time.monotonic_ns()
        fn()
        xs.append((time.monotonic_ns() - t0) / 1e6)
    return xs


def run(argv, ok=(0,)):
    def go():
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        if r.returncode not in ok:
            raise BenchError("%s: exit %d: %s" % (argv, r.returncode, r.stderr[-500:]))
    return go


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--buddy", required=True, metavar="LABEL=PATH")
    p.add_argument("-n", type=int, default=30)
    p.add_argument("--label", default="")
    args = p.parse_args()
    label, _, path = args.buddy.partition("=")
    path = Path(path).resolve()
    d = path if path.is_dir() else path.parent
    build = Build(label, path / "upk_buddy" if path.is_dir() else path, d / "upkeeper",
                  d / "upkctl")
    # fastpath.Bench with fastpath's own defaults (the rendered script, cgroups on).
    bargs = fastpath.parser().parse_args([])
    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    become_subreaper()
    bench = Bench(bargs)
    bench.builds = [build]
    n = args.n
    res = {"args": vars(args), "loadavg_start": open("/proc/loadavg").read().split()[:3],
           "pieces": {}}
    rows = []

    def add(name, xs, what):
        res["pieces"][name] = {"samples": xs, "summary": summary(xs), "what": what}
        rows.append((name, summary(xs), what))
        print("%-45s %8s ms" % (name, fmt(statistics.median(xs), 3)), file=sys.stderr)

    try:
        bench.prepare()
        bench.start_controllers()
        b = build
        svc = b.run / "ctl"
        upkctl = [str(b.bin / "upkctl"), "--config", str(b.ctl)]
        # 1. process start-up
        add("static no-op (stamp, nothing to stamp)", timed(run([str(bench.stamp), "", "0"]), n),
            "fork+exec+exit of a static binary from Python: the floor under any command")
        add("/bin/true (dynamic, libc)", timed(run(["/bin/true"]), n), "ld.so + libc")
        add("upkctl --version", timed(run(upkctl + ["--version"]), n),
            "upkctl's own start-up: ld.so, libgcc_s + libc, Rust runtime, clap")
        add("upkctl status ctl", timed(run(upkctl + ["status", "ctl"]), n),
            "start-up + config file + connect + hello + status + print")
        # 2. sockets, no client process
        add("controller: connect + hello", timed(
            lambda: ndjson_call(b.sock, [{"type": "hello", "version": 1, "id": 1}], 1), n),
            "accept, SO_PEERCRED, /proc/PID/status and cmdline of the peer, hello")
        add("controller: hello + status", timed(
            lambda: controller_call(b.sock, {"type": "status", "services": ["ctl"]}), n),
            "a read request answered by the controller itself")
        add("buddy: status", timed(lambda: buddy_call(svc / "buddy.sock", {"type": "status"}), n),
            "connect + request + reply at the buddy")

        def up():
            wait_for("ctl up", lambda: bench.service_pid(svc), 10, 0.002)

        pairs = {}
        for name, stop, start in [
                ("upkctl", run(upkctl + ["stop", "ctl"]), run(upkctl + ["start", "ctl"])),
                ("controller socket (python)",
                 lambda: controller_call(b.sock, {"type": "stop", "service": "ctl"}),
                 lambda: controller_call(b.sock, {"type": "start", "service": "ctl"})),
                ("buddy socket (python)",
                 lambda: buddy_call(svc / "buddy.sock", {"type": "stop"}),
                 lambda: buddy_call(svc / "buddy.sock", {"type": "start"}))]:
            st, sa, eff_stop, eff_start = [], [], [], []
            for i in range(n):
                up()
                time.sleep(0.05)
                pid = bench.service_pid(svc)
                t_n = count(read_stamps(svc / STAMPS), "T")
                s_n = count(read_stamps(svc / STAMPS), "S")
                t0 = time.monotonic_ns()
                stop()
                st.append((time.monotonic_ns() - t0) / 1e6)
                wait_for("T", lambda: count(read_stamps(svc / STAMPS), "T") > t_n, 10, 0.0005)
                eff_stop.append((fastpath.last(read_stamps(svc / STAMPS), "T") - t0) / 1e6)
                wait_for("gone", lambda: gone(pid), 10, 0.0005)
                time.sleep(0.05)
                t0 = time.monotonic_ns()
                start()
                sa.append((time.monotonic_ns() - t0) / 1e6)
                wait_for("S", lambda: count(read_stamps(svc / STAMPS), "S") > s_n, 10, 0.0005)
                eff_start.append((fastpath.last(read_stamps(svc / STAMPS), "S") - t0) / 1e6)
            add("stop via %s: reply" % name, st, "until the reply (done / ok)")
            add("stop via %s: T stamp" % name, eff_stop, "until the service's SIGTERM handler ran")
            add("start via %s: reply" % name, sa, "until the reply")
            add("start via %s: S stamp" % name, eff_start, "until the new service stamped")
        # 3. the stop script by hand, against a sleeping stamp
        script = svc / "actions" / "stop"
        victims = []

        def victim():
            pr = subprocess.Popen([str(bench.stamp), "", "-1"], start_new_session=True)
            victims.append(pr)

        def kill_with(argv_fn):
            def go():
                pr = victims[-1]
                r = subprocess.run(argv_fn(pr.pid), stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=10)
                pr.wait(5)
            return go
        if script.exists():
            add("actions/stop PID (sh, then kill)", timed(
                kill_with(lambda pid: [str(script), str(pid)]), n, victim),
                "the rendered stop script run from Python until it and its target exited")
        add("/usr/bin/kill PID", timed(kill_with(lambda pid: ["/usr/bin/kill", str(pid)]), n,
                                       victim), "the kill program alone")
        add("sh -c 'exec /usr/bin/kill PID'", timed(kill_with(
            lambda pid: ["/bin/sh", "-c", "exec /usr/bin/kill %d" % pid]), n, victim),
            "sh without the PATH search")
        res["facts"] = fastpath.machine_facts(bench)
    except KeyboardInterrupt:
        return 130
    finally:
        bench.cleanup()
    lines = ["| piece | median | p90 | min | what it contains |", "| --- | ---: | ---: | ---: | --- |"]
    for name, s, what in rows:
        lines.append("| %s | %s | %s | %s | %s |" % (name, fmt(s["median"], 2), fmt(s["p90"], 2),
                                                   fmt(s["min"], 2), what))
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    text = "\n".join(lines)
    print(text)
    res["markdown"] = text
    out = results_path("control-path", args.label)
    out.write_text(to_json(res) + "\n")
    print("raw figures: %s" % out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        sys.exit(1)
