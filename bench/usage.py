#!/usr/bin/env python3
"""Benchmark: what reading every service's usage costs (issue 14).

Run by hand as root (python3 standard library only), with a release build:

    python3 bench/usage.py --bin target/x86_64-unknown-linux-musl/release [--services 1000]

One controller (`upkeeper run`) with N services (`sleep`), first with `Cgroup` on (each in its
own cgroup: usage from cpu.stat, cgroup.procs and the members' statm), then with `Cgroup:
false` (the main process's own /proc), then with the N services stopped (no usage to read: the
difference to the first is what reading the usage costs). For each, once all are settled:

* a `status` of all N services, R times: the controller's CPU time per answer (its time on a
  CPU, /proc/PID/schedstat), its wall time at the client, and the answer's size; the share of
  one core this costs at a refresh every 2 s is the CPU time / 2 s;
* the buddies' and the controller's CPU over --idle seconds with nobody asking: nothing
  samples on a timer, so an idle fleet costs nothing.

Prints a markdown section and writes bench/results/usage-<date>[-label].json. Everything it
starts is killed by pid (the script is a child subreaper) and the temp directory is removed,
also on an error. Every wait has a bound.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (BenchError, alive, become_subreaper, file_facts, fmt, host_facts,
                      kill_pid, proc_stat, reap, results_path, summary, to_json)

PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REFRESH_S = 2.0  # uptop's USAGE_REFRESH
HZ = os.sysconf("SC_CLK_TCK")


def call(sock_path, request, timeout=60.0):
    """One request to the controller; (every reply line, bytes read, seconds)."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    s.sendall(b'{"type":"hello","version":1,"id":1}\n' + json.dumps(dict(request, id=2)).encode()
              + b"\n")
    buf, lines, size = b"", [], 0
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise BenchError("the controller closed the connection")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                if msg.get("id") != 2:
                    continue
                size += len(line) + 1
                lines.append(msg)
                if not msg.get("more"):
                    return lines, size, time.monotonic() - t0
    finally:
        s.close()


def ticks(pid):
    st = proc_stat(pid)
    return st[2] if st else 0


def cpu_ns(pid):
    """Time on a CPU, ns (/proc/PID/schedstat's first field: finer than clock ticks)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def descendants(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                kids.setdefault(st[1], []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def run_one(args, root, cgroup, running=True):
    label = ("cgroup" if cgroup else "no-cgroup") + ("" if running else "-stopped")
    base = root / label
    conf, run, state = base / "conf", base / "run", base / "state"
    for d in (conf, run, state):
        d.mkdir(parents=True)
    keys = {"StateDir": str(state), "SvcConfigPath": str(conf), "SvcRunPath": str(run)}
    if not cgroup:
        keys["Cgroup"] = False
    (base / "upkeeper.conf").write_text(json.dumps(keys) + "\n")
    names = ["u%04d" % i for i in range(args.services)]
    entry = {"ExecStart": "sleep 100000", "InitialState": "running" if running else "stopped"}
    (conf / "bench.conf").write_text(json.dumps({n: entry for n in names}) + "\n")
    log = open(root / ("%s.log" % label), "ab")
    ctl = subprocess.Popen([str(args.bin / "upkeeper"), "--config", str(base / "upkeeper.conf"),
                            "run"], env={"PATH": PATH_ENV}, stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, start_new_session=True)
    sock = state / "upkeeper.sock"
    try:
        deadline = time.monotonic() + 60 + 0.05 * args.services
        while True:
            if ctl.poll() is not None:
                raise BenchError("the controller exited: see %s" % log.name)
            if time.monotonic() > deadline:
                raise BenchError("%s: services not all running in time" % label)
            try:
                lines, _, _ = call(sock, {"type": "status", "services": []})
                svcs = [s for m in lines for s in m.get("services", [])]
                want = "running" if running else "stopped"
                up = sum(1 for s in svcs if (s.get("status") or {}).get("state") == want)
                if up == args.services:
                    break
            except (OSError, BenchError, ValueError):
                pass
            time.sleep(0.2)
        time.sleep(args.settle)
        sample = svcs[0]
        contained = bool(((sample.get("status") or {}).get("containment") or {}).get("cgroup"))
        if running and contained != cgroup:
            raise BenchError("%s: the services are %scontained" % (label, "" if contained else "not "))
        cpu_ms, wall_ms, sizes = [], [], []
        for _ in range(args.rounds):
            before = cpu_ns(ctl.pid)
            lines, size, secs = call(sock, {"type": "status", "services": []})
            after = cpu_ns(ctl.pid)
            if sum(len(m.get("services", [])) for m in lines) != args.services:
                raise BenchError("%s: a short answer" % label)
            if any(("usage" in s) != running for m in lines for s in m["services"]):
                raise BenchError("%s: usage where it should not be, or none" % label)
            cpu_ms.append((after - before) / 1e6)
            wall_ms.append(secs * 1000.0)
            sizes.append(size)
        buddies = []
        for pid in descendants(ctl.pid):
            try:
                if os.path.basename(os.readlink("/proc/%d/exe" % pid)) == "upk_buddy":
                    buddies.append(pid)
            except OSError:
                pass
        idle_before = {p: ticks(p) for p in buddies + [ctl.pid]}
        time.sleep(args.idle)
        idle = {p: ticks(p) - t for p, t in idle_before.items() if alive(p)}
        out = {
            "services": args.services,
            "contained": contained,
            "cpu_ms_per_answer": summary(cpu_ms),
            "wall_ms_per_answer": summary(wall_ms),
            "answer_bytes": summary(sizes),
            "core_share_at_refresh_pct": summary([c / (REFRESH_S * 1000.0) * 100.0
                                                   for c in cpu_ms]),
            "idle_seconds": args.idle,
            "idle_ticks_buddies": sum(v for p, v in idle.items() if p != ctl.pid),
            "idle_ticks_controller": idle.get(ctl.pid, 0),
            "buddies": len(buddies),
        }
        print("%s: %s ms CPU per answer (median), %s%% of a core at a 2 s refresh" % (
            label, fmt(out["cpu_ms_per_answer"]["median"], 2),
            fmt(out["core_share_at_refresh_pct"]["median"], 2)), file=sys.stderr)
        return out
    finally:
        kill_pid(ctl.pid, signal.SIGTERM)
        try:
            ctl.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill_pid(ctl.pid)
        for p in descendants(os.getpid()):
            kill_pid(p)
        end = time.monotonic() + 20
        while descendants(os.getpid()) and time.monotonic() < end:
            reap()
            time.sleep(0.05)
        reap()
        log.close()


def report(res):
    rows = ["| configuration | services | controller CPU per `status` of all (median, p90) | "
            "wall time at the client (median) | answer size | share of one core at uptop's 2 s "
            "refresh (median) | buddies' CPU while idle (%d s) |"
            % next(iter(res["runs"].values()))["idle_seconds"],
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in res["runs"].items():
        rows.append("| %s | %d | %s ms, %s ms | %s ms | %s kB | %s%% | %d ticks |" % (
            name, r["services"], fmt(r["cpu_ms_per_answer"]["median"], 1),
            fmt(r["cpu_ms_per_answer"]["p90"], 1), fmt(r["wall_ms_per_answer"]["median"], 1),
            fmt(r["answer_bytes"]["median"] / 1000.0, 0),
            fmt(r["core_share_at_refresh_pct"]["median"], 2), r["idle_ticks_buddies"]))
    return "\n".join(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, type=Path,
                   help="directory with upkeeper and upk_buddy (a release build)")
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--label", default="")
    p.add_argument("--report", metavar="JSON", help="only print the markdown of a results file")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    if os.geteuid() != 0:
        p.error("run as root")
    args.bin = args.bin.resolve()
    become_subreaper()
    root = Path(tempfile.mkdtemp(prefix="upk-usage-"))
    os.chmod(root, 0o755)
    try:
        runs = {"cgroup": run_one(args, root, True), "no-cgroup": run_one(args, root, False),
                "stopped (no usage read)": run_one(args, root, True, running=False)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res = {"facts": dict(host_facts([]), upkeeper=file_facts(args.bin / "upkeeper"),
                         upk_buddy=file_facts(args.bin / "upk_buddy")),
           "runs": runs}
    out = results_path("usage", args.label)
    out.write_text(to_json(res) + "\n")
    print(report(res))
    print("\nresults: %s" % out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
