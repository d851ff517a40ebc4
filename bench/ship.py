#!/usr/bin/env python3
"""The fleet shipper (docs/fleet.md): rows per second into PostgreSQL while catching up, and the
lag from an event to its central row at a steady load.

    python3 bench/ship.py                          # 200k events catch-up; 30 s steady load
    python3 bench/ship.py --events 1000000 --steady-seconds 60 --services 40

Uses target/release (build it first: cargo build --release -p upkeeper -p upk-buddy -p
upkeeper-ship) and PostgreSQL's own programs (/usr/lib/postgresql/*/bin: initdb, pg_ctl, psql;
Debian's postgresql). A private cluster is made in a temp dir with initdb (as nobody when run
as root: PostgreSQL refuses root), listening only on a unix socket there, with the server's
default durability (fsync on, synchronous_commit on).

1. Catch-up: a real controller store (made by a first start of the controller, as
   bench/store.py does) is filled with N events of crash loops, then `upkeeper-ship run --once`
   ships it whole, for each batch size; rows/s = N / wall time, timed from the start of the
   process to its exit (connection, schema and partitions included).
2. Steady load: a controller runs services crash-looping every `--rate` seconds, a shipper
   runs beside it with its default interval (200 ms) and then with 50 ms. The bench watches
   the local store every 5 ms (its largest event id), so for every event shipped in the window
   the lag is its central `shipped_at` (the clock at its insert, in the committing
   transaction) minus the first time its id was seen committed locally (5 ms resolution, and
   the watcher's own delay); and, as a second figure, minus its `wall_us` (when the buddy made
   the record, which includes the controller's own time to store it). Median, p90, p99, max.

Prints one line per figure and writes bench/results/ship-DATE.json. Asserts nothing. Standard
library only."""

import argparse
import bisect
import glob
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from benchlib import (REPO, become_subreaper, host_facts, kill_pid, reap, results_path,
                      summary, to_json)
from store import fill, start, stop

REL = REPO / "target" / "release"


def pg_bin():
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not dirs:
        raise SystemExit("PostgreSQL's programs are missing: apt-get install postgresql")
    return os.path.dirname(dirs[-1])


class Pg:
    """A private cluster on a unix socket in its own temp dir."""

    def __init__(self, root):
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix="upk-pg-", dir="/tmp")
        os.chmod(self.dir, 0o755)
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "nobody", "nogroup")
        self.data = os.path.join(self.dir, "data")
        self.owner(["initdb", "-D", self.data, "-U", "upk", "--auth=trust", "-E", "UTF8",
                    "--locale=C"])
        self.owner(["pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w",
                    "-t", "60", "-o", "-k %s -c listen_addresses='' -c shared_buffers=256MB"
                    % self.dir, "start"])
        self.url = "host=%s user=upk dbname=postgres" % self.dir
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def owner(self, argv):
        cmd = [os.path.join(self.bin, argv[0])] + argv[1:]
        if self.root:
            cmd = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                   "--"] + cmd
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       cwd=self.dir)

    def sql(self, text):
        r = subprocess.run([os.path.join(self.bin, "psql"), "-X", "-A", "-t", "-v",
                            "ON_ERROR_STOP=1", "-d", self.url, "-c", text],
                           capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
        return [l for l in r.stdout.splitlines() if l]

    def reset(self):
        self.sql("DROP TABLE IF EXISTS events, commands, config_changes, gaps, cursors, hosts, "
                 "schema_version CASCADE")

    def close(self):
        try:
            self.owner(["pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def controller_dir(root, name, services, body):
    base = root / name
    conf, run, state = base / "conf", base / "run", base / "state"
    for d in (conf, run, state):
        d.mkdir(parents=True)
    ctl = base / "upkeeper.conf"
    ctl.write_text(json.dumps({"StateDir": str(state), "SvcConfigPath": str(conf),
                               "SvcRunPath": str(run), "UpkBuddyPath": str(REL / "upk_buddy"),
                               "HistoryMaxEvents": None, "HistoryMaxAgeDays": None}) + "\n")
    names = ["s%05d" % i for i in range(services)]
    (conf / "bench.conf").write_text(json.dumps({n: body for n in names}) + "\n")
    t = time.time() - 3600
    os.utime(conf, (t, t))
    return base, ctl, state


def buddies_down(base):
    """Kills the buddies and services a controller left (they carry the run dir)."""
    needle = str(base / "run").encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if needle in f.read():
                    kill_pid(int(pid))
        except OSError:
            pass
    reap()


def catch_up(pg, root, events, services, batches):
    base, ctl, state = controller_dir(root, "catchup", services,
                                      {"ExecStart": "sleep 1000", "InitialState": "stopped"})
    log = open(base / "upkeeper.log", "ab")
    p, _ = start(ctl, state, log)
    db = state / "upkeeper.db"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as c:
            if c.execute("SELECT COUNT(*) FROM incarnations").fetchone()[0] >= services:
                break
        time.sleep(0.2)
    stop(p)
    buddies_down(base)
    rows, _ = fill(db, events, services)
    out = {"events": rows, "services": services, "runs": []}
    for batch in batches:
        pg.reset()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = subprocess.run([str(REL / "upkeeper-ship"), "run", "--store", str(db), "--database",
                            pg.url, "--host", "bench-catchup", "--once", "--batch", str(batch)],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        secs = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        central = int(pg.sql("SELECT count(*) FROM events")[0])
        run = {"batch": batch, "seconds": round(secs, 3), "central": central,
               "rows_per_s": round(central / secs) if secs > 0 else None,
               "shipper_cpu_s": round(cpu, 3), "exit": r.returncode}
        if r.returncode != 0:
            run["stderr"] = r.stderr[-400:]
        # What a central event costs on disk: heap, TOAST and every index, per row.
        size = int(pg.sql("SELECT COALESCE(sum(pg_total_relation_size(inhrelid)), 0) "
                          "FROM pg_inherits WHERE inhparent = 'events'::regclass")[0])
        run["bytes_per_event"] = round(size / central) if central else None
        out["runs"].append(run)
        print("catch-up: batch %5d: %d events in %.2f s: %s rows/s (shipper CPU %.2f s), %s bytes "
              "per event on disk" % (batch, central, secs, run["rows_per_s"], cpu,
                                     run["bytes_per_event"]), flush=True)
    return out


def steady(pg, root, services, rate, seconds, intervals, autogroup_nice=None):
    body = {"StartScript": "#!/bin/sh\nexit 1\n", "InitialState": "running",
            "UserRateLimit": rate, "MaxConsecutiveFailures": -1, "RingbufferSize": 4096}
    base, ctl, state = controller_dir(root, "steady", services, body)
    db = state / "upkeeper.db"
    log = open(base / "upkeeper.log", "ab")
    p, _ = start(ctl, state, log)
    out = {"services": services, "restart_every_s": rate, "seconds": seconds,
           "autogroup_nice": autogroup_nice, "runs": []}
    try:
        for interval in intervals:
            pg.reset()
            ship = subprocess.Popen([str(REL / "upkeeper-ship"), "run", "--store", str(db),
                                     "--database", pg.url, "--host", "bench-steady",
                                     "--interval", str(interval)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log)
            if autogroup_nice is not None:
                for pid in (pg.pid, ship.pid):
                    with open("/proc/%d/autogroup" % pid, "w") as f:
                        f.write("%d" % autogroup_nice)
            # Let it catch up with what the store held before, then measure a window, watching
            # the local store every 5 ms: when each row id was first seen committed there.
            time.sleep(3)
            t_from = int(time.time() * 1e6)
            seen = []
            local = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                top = local.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
                seen.append((int(time.time() * 1e6), top))
                time.sleep(0.005)
            local.close()
            t_to = int(time.time() * 1e6)
            time.sleep(2)
            ship.terminate()
            ship.wait(timeout=30)
            rows = [tuple(int(v) for v in x.split("|")) for x in pg.sql(
                "SELECT local_id, wall_us, (extract(epoch FROM shipped_at) * 1000000)::int8 "
                "FROM events WHERE wall_us >= %d AND wall_us < %d" % (t_from, t_to))]
            made = [(at - wall) / 1000.0 for _, wall, at in rows]
            committed = []
            ids = [top for _, top in seen]
            for lid, _, at in rows:
                i = bisect.bisect_left(ids, lid)
                if 0 < i < len(seen):
                    committed.append((at - seen[i][0]) / 1000.0)
            rate_s = len(rows) / (seconds or 1)
            s, c = summary(made), summary(committed)
            out["runs"].append({"interval_ms": interval, "events": len(rows),
                                "events_per_s": round(rate_s, 1), "lag_from_record_ms": s,
                                "lag_from_local_commit_ms": c})
            if s and c:
                print("steady: interval %4d ms: %d events (%.0f/s): from local commit to central "
                      "row: median %.0f ms, p99 %.0f, max %.0f; from the buddy's record: median "
                      "%.0f ms, p99 %.0f" % (interval, len(rows), rate_s, c["median"], c["p99"],
                                             c["max"], s["median"], s["p99"]), flush=True)
    finally:
        stop(p)
        buddies_down(base)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--services", type=int, default=20)
    ap.add_argument("--batches", default="1000,5000,20000")
    ap.add_argument("--rate", type=float, default=0.2, help="restart every RATE s per service")
    ap.add_argument("--steady-seconds", type=int, default=30)
    ap.add_argument("--intervals", default="200,50")
    ap.add_argument("--autogroup-nice", type=int, default=None,
                    help="give PostgreSQL's and the shipper's scheduling groups this nice value "
                    "(autogroup: every buddy is a session, and so a group, of its own)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    for b in ("upkeeper", "upk_buddy", "upkeeper-ship"):
        if not (REL / b).exists():
            raise SystemExit("%s is missing: cargo build --release -p upkeeper -p upk-buddy -p "
                             "upkeeper-ship" % (REL / b))
    become_subreaper()
    root = tempfile.mkdtemp(prefix="upk-ship-", dir="/tmp")
    from pathlib import Path
    root = Path(root)
    pg = Pg(root)
    results = {"host": host_facts(["postgresql-15", "postgresql"])}
    try:
        results["catch_up"] = catch_up(pg, root, args.events, args.services,
                                       [int(b) for b in args.batches.split(",")])
        results["steady"] = steady(pg, root, args.services, args.rate, args.steady_seconds,
                                   [int(i) for i in args.intervals.split(",")],
                                   args.autogroup_nice)
    finally:
        pg.close()
        shutil.rmtree(root, ignore_errors=True)
    path = results_path("ship", args.label)
    path.write_text(to_json(results) + "\n")
    print("wrote %s" % path.relative_to(REPO))


if __name__ == "__main__":
    sys.exit(main())
