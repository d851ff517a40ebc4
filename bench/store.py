#!/usr/bin/env python3
"""The audit store at scale: how long the controller takes to answer after a start on a store
of N events, and what `stats`, `audit`, `history`, `status`, `why` and `incident` cost there.

    python3 bench/store.py                         # 1M and 10M events, 100 services
    python3 bench/store.py --events 1000000 --services 5000

Uses target/release (build it first: cargo build --release -p upkeeper -p upk-buddy -p
upkctl). Services are configured `InitialState: "stopped"`, so only their buddies run. The
events are written straight into the store's SQLite file (python's sqlite3), between a first
start of the controller (which creates the schema and the service rows) and the measured
start. Prints one line per figure and writes bench/results/store-DATE.json. Asserts nothing.
Standard library only."""

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

from benchlib import REPO, become_subreaper, kill_pid, reap, results_path, summary

REL = REPO / "target" / "release"


def hello(sock, timeout):
    """Seconds until the controller's socket answers a hello, or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(max(0.1, end - time.monotonic()))
                s.connect(str(sock))
                s.sendall(b'{"type":"hello","id":1,"version":1}\n')
                if s.makefile("rb").readline():
                    return True
        except OSError:
            pass
        time.sleep(0.005)
    return False


def start(ctl, state, log):
    sock = state / "upkeeper.sock"
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    p = subprocess.Popen([str(REL / "upkeeper"), "--config", str(ctl), "run"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    ok = hello(sock, 120)
    return p, (time.monotonic() - t0) if ok else None


def stop(p):
    """SIGKILL and wait: the next start must not find its lock still held."""
    kill_pid(p.pid)
    p.wait(timeout=30)
    reap()


def fill(db, events, services):
    """Appends `events` rows spread over every incarnation in the store."""
    c = sqlite3.connect(str(db), timeout=30)
    c.execute("PRAGMA synchronous=OFF")
    incs = c.execute("SELECT i.id, i.service_id, COALESCE(MAX(e.seq), 0) FROM incarnations i "
                     "LEFT JOIN events e ON e.incarnation_id = i.id GROUP BY i.id").fetchall()
    if not incs:
        raise SystemExit("no incarnations: the first start recorded nothing")
    now = int(time.time() * 1e6)
    per = events // len(incs)
    # A crash loop, as the buddy records one: a start naming its config, a death explained with
    # its tail (docs/insight.md), a restart scheduled.
    died = ('{"exit":{"how":"exited","code":1},"uptime":0.1,"reason":"failed","tail":{"stderr":'
            '["bench: cannot bind 0.0.0.0:8080: Address in use","bench: exiting with 1"]}}')
    kinds = [("started", "stopped", "running", "policy", None, '{"config":"3f2a9c0d1e4b5a67"}'),
             ("died", "running", "backoff", "exit", 1, died),
             ("restart_scheduled", "backoff", "backoff", "policy", None, '{"delay":0.0,"failures":1}')]
    for iid, sid, top in incs:
        def rows():
            for k in range(per):
                seq = top + k + 1
                kind, fr, to, cause, code, detail = kinds[k % 3]
                yield (sid, iid, seq, seq, now - (per - k) * 1000, k, kind, fr, to, 4242, code,
                       cause, detail)
        c.executemany("INSERT INTO events (service_id, incarnation_id, seq, first_seq, wall_us, "
                      "mono_us, kind, from_state, to_state, pid, exit_code, cause, detail) "
                      "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows())
        c.commit()
    n = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    c.close()
    return n, now


def timed(argv, runs=5):
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        times.append((time.monotonic() - t0) * 1000)
        if r.returncode != 0:
            return {"error": (r.stdout + r.stderr)[-300:].decode(errors="replace")}
    return summary(times)


def one(args, events, root):
    base = root / ("n%d" % events)
    conf, run, state = base / "conf", base / "run", base / "state"
    for d in (conf, run, state):
        d.mkdir(parents=True)
    ctl = base / "upkeeper.conf"
    ctl.write_text(json.dumps({"StateDir": str(state), "SvcConfigPath": str(conf),
                               "SvcRunPath": str(run), "HistoryMaxEvents": None,
                               "HistoryMaxAgeDays": None}) + "\n")
    names = ["s%05d" % i for i in range(args.services)]
    (conf / "bench.conf").write_text(json.dumps(
        {n: {"ExecStart": "sleep 1000", "InitialState": "stopped"} for n in names}) + "\n")
    t = time.time() - 3600
    os.utime(conf, (t, t))
    log = open(base / "upkeeper.log", "ab")
    out = {"events": events, "services": args.services}
    p, first = start(ctl, state, log)
    out["first_start_s"] = first
    # Wait until every buddy answered (its buddy_started is stored), then stop.
    end = time.monotonic() + 120
    db = state / "upkeeper.db"
    while time.monotonic() < end:
        with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as c:
            if c.execute("SELECT COUNT(*) FROM incarnations").fetchone()[0] >= args.services:
                break
        time.sleep(0.2)
    stop(p)
    t0 = time.monotonic()
    out["rows"], filled_us = fill(db, events, args.services)
    out["fill_s"] = time.monotonic() - t0
    out["db_bytes"] = db.stat().st_size
    starts = []
    for _ in range(args.starts):
        p, s = start(ctl, state, log)
        starts.append(s)
        upkctl = [str(REL / "upkctl"), "--config", str(ctl)]
        if len(starts) == 1:
            out["stats_ms"] = timed(upkctl + ["stats", names[0]])
            out["audit_ms"] = timed(upkctl + ["audit"])
            out["history_ms"] = timed(upkctl + ["history", names[0], "-n", "20"])
            out["status_ms"] = timed(upkctl + ["status"])
            # The questions of docs/insight.md, on the worst case: every service crash-looping
            # in the same seconds (the fill's events end when it began, 1 ms apart per
            # service); the incident is the last 30 s of them (100 services: 3M events at 10M).
            out["why_ms"] = timed(upkctl + ["why", names[0]])
            window = ["--since=@%d" % (filled_us // 1_000_000 - 30),
                      "--until=@%d" % (filled_us // 1_000_000 + 1)]
            out["incident_ms"] = timed(upkctl + ["incident"] + window)
            inc = subprocess.run(upkctl + ["incident", "--json"] + window, capture_output=True,
                                 stdin=subprocess.DEVNULL)
            out["incident_items"] = inc.stdout.count(b"\n")
        stop(p)
    out["start_to_hello_s"] = starts
    print("store: %d events, %d services: start to hello %s s; stats %s ms, audit %s ms, "
          "history %s ms, status %s ms, why %s ms, incident %s ms" % (
              out["rows"], args.services, ", ".join("%.3f" % s if s else "none" for s in starts),
              out["stats_ms"].get("median"), out["audit_ms"].get("median"),
              out["history_ms"].get("median"), out["status_ms"].get("median"),
              out["why_ms"].get("median"), out["incident_ms"].get("median")), file=sys.stderr)
    log.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, action="append",
                    help="events in the store (repeatable; default 1M and 10M)")
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--starts", type=int, default=3, help="measured starts per size")
    ap.add_argument("--dir", default="/tmp", help="where the stores go (a disk, not tmpfs)")
    ap.add_argument("--label", default="")
    ap.add_argument("--keep", action="store_true",
                    help="leave the stores (and their controller files) for a look by hand")
    args = ap.parse_args()
    for b in ("upkeeper", "upk_buddy", "upkctl"):
        if not (REL / b).exists():
            raise SystemExit("target/release/%s is missing: cargo build --release first" % b)
    become_subreaper()
    root = __import__("pathlib").Path(tempfile.mkdtemp(prefix="upk-store-", dir=args.dir))
    res = {"args": vars(args), "runs": []}
    try:
        for n in args.events or [1_000_000, 10_000_000]:
            res["runs"].append(one(args, n, root))
    finally:
        subprocess.run(["pkill", "-KILL", "-f", str(root)], stdin=subprocess.DEVNULL)
        reap()
        if args.keep:
            print("kept %s" % root, file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    path = results_path("store", args.label)
    path.write_text(json.dumps(res, indent=1) + "\n")
    print("wrote %s" % path, file=sys.stderr)


if __name__ == "__main__":
    main()
