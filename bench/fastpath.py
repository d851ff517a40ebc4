#!/usr/bin/env python3
"""Benchmark: the fast path (issue 12). upk_buddy builds side by side with the floor, runsv,
s6-supervise and supervise, in one run.

Run by hand as root (python3 standard library only):

    python3 bench/fastpath.py --buddy before=/work/bench-before/bin --buddy after=DIR

Every --buddy LABEL=PATH is one upkeeper build: PATH is its upk_buddy, or a directory holding
upk_buddy, upkeeper and upkctl (--upkeeper LABEL=PATH and --upkctl LABEL=PATH say otherwise).
Each build runs under its own controller (`upkeeper run`), which renders its run directories.
Four measurements, every supervisor running the same service program (bench/stamp.c) through
the same start script (the first build's rendered scripts/start, byte for byte):

* restart gap after kill -9: the service never exits; the bench SIGKILLs it and measures from
  just before the kill (CLOCK_MONOTONIC) to the new child's "S" stamp; kinds interleaved.
* crash-loop gap: the service exits at once (lifetime 0) and is restarted; the gap is the dead
  child's "E" stamp to the next "S"; one kind at a time, in windows, interleaved.
* stop+start pair: the control client's stop, then its start (wall time of each command), and
  when each took effect (the service's "T" stamp on SIGTERM, its pid gone, the next "S").
* buddy PSS: N idle buddies of each build (no controller), as bench/buddy.py measures it.

Prints a markdown section and writes everything to bench/results/fastpath-<date>[-label].json.
Everything it starts is killed by pid (the script is a child subreaper) and the tmpfs
directory is removed, also on Ctrl-C or an error. Every wait has a bound. See bench/README.md.
"""

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (command_output, file_facts, host_facts, BENCH, NOTIFY_FD, REPO, BenchError, alive, become_subreaper, fmt, kill_pid,
                      proc_stat, reap, results_path, summary, to_json)
from buddy import descendants, kill_everything, smaps_rollup

PEERS = ["runsv", "s6-supervise", "supervise"]
PEER_PACKAGES = {"runsv": "runit", "s6-supervise": "s6", "supervise": "daemontools"}
PEER_CONTROL = {  # kind -> (name, stop argv, start argv); DIR is the service directory
    "runsv": ("runit `sv down` / `sv up`", ["sv", "down", "DIR"], ["sv", "up", "DIR"]),
    "s6-supervise": ("s6 `s6-svc -d` / `s6-svc -u`", ["s6-svc", "-d", "DIR"], ["s6-svc", "-u", "DIR"]),
    "supervise": ("daemontools `svc -d` / `svc -u`", ["svc", "-d", "DIR"], ["svc", "-u", "DIR"]),
}
CRASH_NOTES = {
    "floor": "none: forks ./run again as soon as waitpid returns",
    "upk": "none with `UserRateLimit: 0` (restart delay 0 from the death)",
    "runsv": "sleeps 1 s after a child that lived < 1 s: not comparable",
    "s6-supervise": "at most one spawn a second (a child that lived < 1 s waits for the rest of "
                    "the second, readiness or not): not comparable",
    "supervise": "sleeps 1 s after every start: not comparable",
}
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOFILE = 1024
# A child must have lived this long before it is killed or stopped: runsv sleeps 1 s after a
# child that lived less than 1 s, and supervise sleeps 1 s after every start (it does not even
# read its control fifo then).
MIN_AGE = 1.1
STAMPS = "stamps"  # relative: every supervisor starts its service in the service's directory


# ---- small helpers ---------------------------------------------------------------------------


def read_stamps(path):
    """[(letter, ns)] of a stamp file, in order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n"):
        if len(line) > 2 and line[1:2] == b" " and line[2:].isdigit():
            out.append((line[:1].decode(), int(line[2:])))
    return out


def count(stamps, letter):
    return sum(1 for k, _ in stamps if k == letter)


def last(stamps, letter):
    for k, ns in reversed(stamps):
        if k == letter:
            return ns
    return None


def crash_gaps(stamps):
    """ms from each "E" to the next "S"."""
    out, end = [], None
    for k, ns in stamps:
        if k == "E":
            end = ns
        elif k == "S" and end is not None:
            out.append((ns - end) / 1e6)
            end = None
    return out


def wait_for(what, cond, timeout, poll=0.002, on_timeout=None):
    """Polls cond() until it returns something true; returns it. Bounded."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= end:
            extra = on_timeout() if on_timeout else ""
            raise BenchError("timed out after %.1f s waiting for %s%s" % (timeout, what, extra))
        time.sleep(poll)


def ndjson_call(sock_path, lines, want_id, timeout=10.0):
    """Sends `lines` on a unix socket, reads until the reply with id want_id; returns it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(b"".join(json.dumps(m, separators=(",", ":")).encode() + b"\n" for m in lines))
        f = s.makefile("rb")
        while True:
            try:
                line = f.readline()
            except socket.timeout:
                raise BenchError("%s: no reply within %.0f s" % (sock_path, timeout))
            if not line:
                raise BenchError("%s: closed without a reply" % sock_path)
            msg = json.loads(line)
            if msg.get("id") == want_id:
                if msg.get("type") == "error":
                    raise BenchError("%s: error reply: %s" % (sock_path, msg))
                return msg


def controller_call(sock, request, timeout=10.0):
    return ndjson_call(sock, [{"type": "hello", "version": 1}, dict(request, id=2)], 2, timeout)


def buddy_call(sock, request, timeout=10.0):
    return ndjson_call(sock, [dict(request, id=1)], 1, timeout)


def gone(pid):
    st = proc_stat(pid)
    return st is None or st[0] in ("Z", "X")


# ---- the benchmark ---------------------------------------------------------------------------


class Build:
    """One upkeeper build: its binaries (copied to tmpfs) and its controller."""

    def __init__(self, label, buddy, upkeeper, upkctl):
        self.label = label
        self.src = {"upk_buddy": buddy, "upkeeper": upkeeper, "upkctl": upkctl}
        self.kind = "upk_buddy:" + label
        self.base = None
        self.bin = None
        self.ctl = None
        self.sock = None
        self.run = None
        self.pid = None  # the controller


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="upk-fp-", dir="/dev/shm"))
        os.chmod(self.root, 0o755)
        (self.root / "logs").mkdir()
        self.stamp = self.root / "bin" / "stamp"
        self.floor = self.root / "bin" / "floor"
        self.pids = {}  # pid -> what, every supervisor or controller started
        self.builds = []
        self.bins = {}
        self.script = None
        self.facts = {}
        self.peer_env = {}

    # -- processes

    def spawn(self, what, argv, env=None, cwd=None):
        log = self.root / "logs" / (what.replace("/", "_").replace(":", "_") + ".log")
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, cwd=cwd or self.root, env=env or {"PATH": PATH_ENV},
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True)
        self.pids[p.pid] = what
        return p.pid

    def stop(self, pids, timeout=10.0):
        """SIGKILLs pids and all their descendants, then whatever of theirs was re-parented to
        us (we are a subreaper), by pid; the other processes we started stay. Reaps; bounded."""
        pids = list(pids)
        for p in pids:
            self.pids.pop(p, None)
        doomed = set(pids)
        for p in pids:
            doomed.update(descendants(p))
        me = os.getpid()
        end = time.monotonic() + timeout
        while True:
            for p in doomed:
                kill_pid(p)
            reap()
            # Orphans: our children that we did not start ourselves (a service whose
            # supervisor just died, or one forked between the snapshot and the kill).
            orphans = [c for c in descendants(me) if c not in self.pids
                       and not any(a in self.pids for a in self.ancestors(c, me))]
            doomed.update(orphans)
            left = [p for p in doomed if proc_stat(p) is not None and
                    proc_stat(p)[0] not in ("Z", "X")]
            if not left and not orphans:
                reap()
                return
            if time.monotonic() >= end:
                raise BenchError("processes still present after %.0f s: %s" % (timeout, left))
            time.sleep(0.01)

    @staticmethod
    def ancestors(pid, stop_at):
        out = []
        while True:
            st = proc_stat(pid)
            if st is None or st[1] in (0, stop_at):
                return out
            pid = st[1]
            out.append(pid)

    def log_tail(self, what):
        p = self.root / "logs" / (what.replace("/", "_").replace(":", "_") + ".log")
        try:
            return "; log: " + p.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def service_pid(self, d):
        """The pid of the stamp process whose working directory is d (None if none)."""
        want = str(d)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.readlink("/proc/%s/exe" % name) != self.stamp_exe:
                    continue
                if os.readlink("/proc/%s/cwd" % name) != want:
                    continue
            except OSError:
                continue
            pid = int(name)
            if not gone(pid):
                return pid
        return None

    # -- preparation

    def prepare(self):
        a = self.args
        (self.root / "bin").mkdir()
        src = BENCH / "stamp.c"
        r = subprocess.run(["cc", "-O2", "-static", "-o", str(self.stamp), str(src)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("cc stamp.c: %s" % r.stderr)
        self.stamp_exe = os.path.realpath(self.stamp)
        if a.floor:
            shutil.copy(a.floor, self.floor)
        else:
            r = subprocess.run(["cc", "-O2", "-static", "-o", str(self.floor), a.floor_src],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError("cc %s: %s" % (a.floor_src, r.stderr))
        self.bins["floor"] = self.floor
        self.bins["stamp"] = self.stamp
        for kind in PEERS + ["sv", "s6-svc", "svc"]:
            found = shutil.which(kind)
            if found is None:
                raise BenchError("%s not found: apt-get install -y --no-install-recommends "
                                 "runit s6 daemontools" % kind)
            self.bins[kind] = Path(found)
        for b in self.builds:
            b.base = self.root / b.label
            b.bin = b.base / "bin"
            b.bin.mkdir(parents=True)
            # Copies on tmpfs, side by side: the controller finds upk_buddy next to itself, and
            # a rebuild during the run changes nothing.
            for name, p in b.src.items():
                if p is None or not Path(p).exists():
                    raise BenchError("%s: %s not found (%s)" % (b.label, name, p))
                shutil.copy(p, b.bin / name)
                self.bins["%s:%s" % (name, b.label)] = b.bin / name
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < NOFILE:
            raise BenchError("RLIMIT_NOFILE hard limit %d is below %d" % (hard, NOFILE))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))

    def exec_start(self, lifetime_ms):
        # No shell metacharacters, no expansions, no variables: a build that execs a plain
        # ExecStart without /bin/sh may do so here, and the peers run the same words via sh.
        say = " 1" if self.args.say else ""
        return "%s %s %d %d%s" % (self.stamp, STAMPS, lifetime_ms, NOTIFY_FD, say)

    def service_entries(self, run=None):
        base = {"UserRateLimit": 0, "MaxConsecutiveFailures": -1}
        entries = {
            "kill": dict(base, ExecStart=self.exec_start(-1), InitialState="running"),
            # One service per way of stopping and starting, so that the ways' MIN_AGE waits
            # overlap.
            "ctl": dict(base, ExecStart=self.exec_start(-1), InitialState="running"),
            "ctlnb": dict(base, ExecStart=self.exec_start(-1), InitialState="running"),
            "ctlsock": dict(base, ExecStart=self.exec_start(-1), InitialState="running"),
            "ctlbuddy": dict(base, ExecStart=self.exec_start(-1), InitialState="running"),
            "crash": dict(base, ExecStart=self.exec_start(0), InitialState="stopped"),
        }
        if run is not None:
            # Services run in `/` by default; the stamps are relative to the run directory,
            # where the peers run theirs.
            for name, e in entries.items():
                e["WorkingDirectory"] = str(run / name)
        return entries

    def write_ctl(self, base, entries, cgroup=True):
        conf, run, state = base / "conf", base / "run", base / "state"
        for d in (conf, run, state):
            d.mkdir(parents=True, exist_ok=True)
        ctl = base / "upkeeper.conf"
        keys = {"StateDir": str(state), "SvcConfigPath": str(conf), "SvcRunPath": str(run)}
        if not cgroup:
            keys["Cgroup"] = False
        ctl.write_text(json.dumps(keys, indent=1) + "\n")
        (conf / "bench.conf").write_text(json.dumps(entries, indent=1) + "\n")
        return ctl, run, state

    def start_controllers(self):
        for b in self.builds:
            entries = self.service_entries(b.base / "run")
            b.ctl, b.run, state = self.write_ctl(b.base, entries, b.label not in self.args.no_cgroup)
            b.sock = state / "upkeeper.sock"
            b.pid = self.spawn(b.kind, [str(b.bin / "upkeeper"), "--config", str(b.ctl), "run"])
        for b in self.builds:
            def ready(b=b):
                if not alive(b.pid):
                    raise BenchError("controller %s died%s" % (b.label, self.log_tail(b.kind)))
                if not b.sock.exists():
                    return False
                try:
                    rep = controller_call(b.sock, {"type": "status", "services": []}, 5)
                except (OSError, BenchError):
                    return False
                svcs = {s["service"]: s for s in rep.get("services", [])}
                if set(svcs) != set(self.service_entries()):
                    return False
                if not all(s.get("linked") for s in svcs.values()):
                    return False
                return all((svcs[n].get("status") or {}).get("state") == "running"
                           for n in svcs if n != "crash")
            wait_for("controller %s: every service linked and running" % b.label, ready, 60, 0.1,
                     lambda b=b: self.log_tail(b.kind))
        first = self.builds[0]
        self.script = (first.run / "kill" / "scripts" / "start").read_bytes()
        self.facts["scripts"] = {}
        for b in self.builds:
            for n in ("kill", "crash"):
                self.facts["scripts"]["%s/%s" % (b.label, n)] = (
                    b.run / n / "scripts" / "start").read_text()

    def peer_dir(self, kind, phase, name):
        """A service directory for a peer or the floor, its `run` the rendered start script of
        the first build's service `name`, byte for byte."""
        d = self.root / "peers" / ("%s-%s" % (kind, phase)) / name
        d.mkdir(parents=True)
        text = (self.builds[0].run / name / "scripts" / "start").read_bytes()
        if self.args.no_shell:
            # `run` is the program itself (a symlink to stamp), its arguments as variables:
            # no shell for anyone, the floor at the kernel's cost.
            words = text.decode().strip().splitlines()[-1].split()
            assert words[0] == "exec" and len(words) == 5, words
            (d / "run").symlink_to(self.stamp)
            self.peer_env[str(d)] = {"PATH": PATH_ENV, "STAMP_FILE": words[2],
                                     "LIFETIME_MS": words[3], "NOTIFY_FD": words[4],
                                     "STAMP_SAY": words[5] if len(words) > 5 else ""}
        else:
            (d / "run").write_bytes(text)
            (d / "run").chmod(0o755)
        if kind == "s6-supervise":
            (d / "notification-fd").write_text("%d\n" % NOTIFY_FD)
        return d

    def spawn_peer(self, kind, d):
        exe = self.floor if kind == "floor" else self.bins[kind]
        return self.spawn("%s-%s" % (kind, d.parent.name), [str(exe), str(d)], cwd=d,
                          env=self.peer_env.get(str(d)))

    def wait_up(self, what, d, n_starts, sup_pid, timeout=15.0):
        """Until d/stamps holds n_starts "S" and a stamp process runs in d; returns its pid."""
        def cond():
            if sup_pid is not None and not alive(sup_pid):
                raise BenchError("%s: supervisor %d died%s" % (what, sup_pid, self.log_tail(what)))
            if count(read_stamps(d / STAMPS), "S") < n_starts:
                return None
            return self.service_pid(d)
        return wait_for("%s: service up in %s" % (what, d), cond, timeout, 0.005)

    def age_ok(self, d):
        """Sleeps until the service in d has lived MIN_AGE since its last "S"."""
        s = last(read_stamps(d / STAMPS), "S")
        if s is None:
            return
        left = MIN_AGE - (time.monotonic_ns() - s) / 1e9
        if left > 0:
            time.sleep(left)

    # -- a. restart gap after kill -9

    def kill_phase(self):
        a = self.args
        kinds = {}  # kind -> (service dir, supervisor pid or None)
        started = []
        try:
            for kind in ["floor"] + PEERS:
                d = self.peer_dir(kind, "kill", "kill")
                pid = self.spawn_peer(kind, d)
                started.append(pid)
                kinds[kind] = (d, pid)
            for b in self.builds:
                kinds[b.kind] = (b.run / "kill", b.pid)
            for kind, (d, pid) in kinds.items():
                self.wait_up(kind, d, 1, pid)
            gaps = {k: [] for k in kinds}
            t_end = time.monotonic() + a.kill_timeout
            for rnd in range(a.kills):
                for kind, (d, sup) in kinds.items():
                    self.age_ok(d)
                    pid = self.wait_up(kind, d, 1, sup)
                    n0 = count(read_stamps(d / STAMPS), "S")
                    t = time.monotonic_ns()
                    os.kill(pid, signal.SIGKILL)
                    wait_for("%s: a new start after kill -9 (round %d)" % (kind, rnd),
                             lambda: count(read_stamps(d / STAMPS), "S") > n0, 10, 0.001)
                    s = last(read_stamps(d / STAMPS), "S")
                    gaps[kind].append((s - t) / 1e6)
                    # Let the supervisor finish its bookkeeping (status, records, the
                    # controller's store) before the next kind's kill.
                    time.sleep(a.spacing)
                    if time.monotonic() > t_end:
                        raise BenchError("kill phase: over %.0f s" % a.kill_timeout)
                if rnd % 10 == 9:
                    print("kill -9: %d rounds" % (rnd + 1), file=sys.stderr)
        finally:
            self.stop(started)
        return {"kinds": list(kinds), "gaps_ms": gaps,
                "summary": {k: summary(v) for k, v in gaps.items()}}

    # -- b. crash loop

    def crash_phase(self):
        a = self.args
        windows = {}
        order = ["floor"] + [b.kind for b in self.builds]
        plan = []
        for rnd in range(a.crash_rounds):
            plan += [(k, rnd) for k in (order if rnd % 2 == 0 else order[::-1])]
        if not a.crash_skip_peers:
            plan += [(k, 0) for k in PEERS]
        for kind, rnd in plan:
            # The previous window's aftermath (a controller storing its records) is over.
            time.sleep(a.crash_settle)
            build = next((b for b in self.builds if b.kind == kind), None)
            peer_seconds = a.crash_peer_seconds if kind in PEERS else a.crash_seconds
            if build is None:
                d = self.peer_dir(kind, "crash%d" % rnd, "crash")
                pid = self.spawn_peer(kind, d)
                try:
                    wait_for("%s: crash loop started" % kind,
                             lambda: count(read_stamps(d / STAMPS), "S") >= 1, 10, 0.005)
                    time.sleep(peer_seconds)
                finally:
                    self.stop([pid])
                st = read_stamps(d / STAMPS)
            else:
                d = build.run / "crash"
                try:
                    (d / STAMPS).unlink()
                except FileNotFoundError:
                    pass
                controller_call(build.sock, {"type": "start", "service": "crash"})
                try:
                    wait_for("%s: crash loop started" % kind,
                             lambda: count(read_stamps(d / STAMPS), "S") >= 1, 10, 0.005)
                    time.sleep(peer_seconds)
                finally:
                    controller_call(build.sock, {"type": "stop", "service": "crash"})

                def stopped():
                    try:
                        return json.loads((d / "status").read_text()).get("state") == "stopped"
                    except (OSError, ValueError):
                        return False
                wait_for("%s: crash loop stopped" % kind, stopped, 30, 0.05)
                st = read_stamps(d / STAMPS)
            g = crash_gaps(st)
            windows.setdefault(kind, []).append({"round": rnd, "seconds": peer_seconds,
                                                 "starts": count(st, "S"), "gaps_ms": g})
            print("crash loop: %-22s %d starts in %.1f s, median gap %s ms" % (
                kind, count(st, "S"), peer_seconds,
                fmt(statistics.median(g), 3) if g else "-"), file=sys.stderr)
        out = {"order": [k for k, _ in plan], "windows": windows, "summary": {}}
        for kind, ws in windows.items():
            allg = [x for w in ws for x in w["gaps_ms"]]
            out["summary"][kind] = summary(allg)
            out["summary"][kind]["starts_per_s"] = (sum(w["starts"] for w in ws)
                                                    / sum(w["seconds"] for w in ws))
            out["summary"][kind]["window_medians"] = [
                statistics.median(w["gaps_ms"]) if w["gaps_ms"] else None for w in ws]
        return out

    # -- c. stop + start pairs

    def control_phase(self):
        a = self.args
        methods = []  # (kind, method label, service dir, stop fn, start fn)
        started = []

        def command(argv):
            def go():
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=30)
                if r.returncode != 0:
                    raise BenchError("%s: exit %d: %s" % (" ".join(argv), r.returncode,
                                                           r.stderr.decode(errors="replace")))
            return go

        try:
            for kind in PEERS:
                d = self.peer_dir(kind, "ctl", "ctl")
                pid = self.spawn_peer(kind, d)
                started.append(pid)
                self.wait_up(kind, d, 1, pid)
                name, stop, start = PEER_CONTROL[kind]
                sub = lambda argv, d=d: [str(d) if x == "DIR" else x for x in argv]
                methods.append((kind, name, d, pid, command(sub(stop)), command(sub(start))))
            for b in self.builds:
                d = b.run / "ctl"
                upkctl = str(b.bin / "upkctl")
                methods.append((b.kind, "`upkctl stop` / `upkctl start` (%s)" % b.label, d, b.pid,
                                command([upkctl, "--config", str(b.ctl), "stop", "ctl"]),
                                command([upkctl, "--config", str(b.ctl), "start", "ctl"])))
                if "--no-block" in subprocess.run([upkctl, "stop", "--help"],
                                                  capture_output=True, text=True).stdout:
                    nb = [upkctl, "--config", str(b.ctl)]
                    methods.append((b.kind, "`upkctl stop --no-block` / `start --no-block` (%s)"
                                    % b.label, b.run / "ctlnb", b.pid,
                                    command(nb + ["stop", "--no-block", "ctlnb"]),
                                    command(nb + ["start", "--no-block", "ctlnb"])))
                if not a.no_python_clients:
                    sock = b.sock
                    methods.append((
                        b.kind, "controller socket, python client (%s)" % b.label,
                        b.run / "ctlsock", b.pid,
                        lambda sock=sock: controller_call(sock, {"type": "stop",
                                                                 "service": "ctlsock"}),
                        lambda sock=sock: controller_call(sock, {"type": "start",
                                                                 "service": "ctlsock"})))
                    d = b.run / "ctlbuddy"
                    bs = d / "buddy.sock"
                    methods.append((
                        b.kind, "buddy socket, python client (%s)" % b.label, d, b.pid,
                        lambda bs=bs: buddy_call(bs, {"type": "stop"}),
                        lambda bs=bs: buddy_call(bs, {"type": "start"})))
            rows = {m[1]: [] for m in methods}
            for rnd in range(a.warmup + a.pairs):
                for kind, label, d, sup, stop, start in methods:
                    self.age_ok(d)
                    pid = self.wait_up(label, d, 1, sup)
                    st0 = read_stamps(d / STAMPS)
                    t_before, s_before = count(st0, "T"), count(st0, "S")
                    t0 = time.monotonic_ns()
                    stop()
                    t1 = time.monotonic_ns()
                    wait_for("%s: the T stamp after stop" % label,
                             lambda: count(read_stamps(d / STAMPS), "T") > t_before, 10, 0.0005)
                    wait_for("%s: pid %d gone after stop" % (label, pid), lambda: gone(pid),
                             10, 0.0005)
                    t_gone = time.monotonic_ns()
                    t_stamp = last(read_stamps(d / STAMPS), "T")
                    t2 = time.monotonic_ns()
                    start()
                    t3 = time.monotonic_ns()
                    wait_for("%s: the S stamp after start" % label,
                             lambda: count(read_stamps(d / STAMPS), "S") > s_before, 10, 0.0005)
                    s_stamp = last(read_stamps(d / STAMPS), "S")
                    if rnd < a.warmup:
                        continue
                    rows[label].append({
                        "stop_cmd": (t1 - t0) / 1e6, "start_cmd": (t3 - t2) / 1e6,
                        "pair": (t1 - t0 + t3 - t2) / 1e6,
                        "stop_effect": (t_stamp - t0) / 1e6, "gone": (t_gone - t0) / 1e6,
                        "start_effect": (s_stamp - t2) / 1e6})
                if rnd % 10 == 9:
                    print("stop+start: %d rounds" % (rnd + 1), file=sys.stderr)
        finally:
            self.stop(started)
        out = {"methods": [{"kind": m[0], "label": m[1]} for m in methods], "pairs": rows,
               "summary": {}}
        for label, rs in rows.items():
            out["summary"][label] = {f: summary([r[f] for r in rs]) for f in
                                     ("stop_cmd", "start_cmd", "pair", "stop_effect", "gone",
                                      "start_effect")}
        return out

    # -- d. memory

    def memory_phase(self):
        a = self.args
        names = ["m%03d" % i for i in range(a.mem_services)]
        out = {"services": a.mem_services, "summary": {}, "after_hello": {}}
        kinds = [b.kind for b in self.builds] + (["runsv"] if not a.mem_skip_runsv else [])
        for kind in kinds:
            build = next((b for b in self.builds if b.kind == kind), None)
            base = self.root / ("mem-" + kind.replace(":", "-"))
            if build is not None:
                entry = {"ExecStart": self.exec_start(-1), "InitialState": "running",
                         "UserRateLimit": 0}
                entries = {n: dict(entry, WorkingDirectory=str(base / "run" / n)) for n in names}
                ctl, run, _ = self.write_ctl(base, entries, build.label not in a.no_cgroup)
                r = subprocess.run([str(build.bin / "upkeeper"), "--config", str(ctl), "render"],
                                   capture_output=True, text=True, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    raise BenchError("%s render: %s" % (kind, r.stderr))
                dirs = {n: run / n for n in names}
                exe = build.bin / "upk_buddy"
            else:
                dirs = {}
                for n in names:
                    d = base / n
                    d.mkdir(parents=True)
                    (d / "run").write_bytes(self.script)
                    (d / "run").chmod(0o755)
                    dirs[n] = d
                exe = self.bins[kind]
            pids = {}
            try:
                for n, d in dirs.items():
                    pids[self.spawn("mem-%s-%s" % (kind, n), [str(exe), str(d)], cwd=d)] = n

                def all_up():
                    for pid, n in pids.items():
                        if not alive(pid):
                            raise BenchError("%s %s died" % (kind, n))
                        if count(read_stamps(dirs[n] / STAMPS), "S") < 1:
                            return False
                        if build is not None:
                            try:
                                st = json.loads((dirs[n] / "status").read_text())
                            except (OSError, ValueError):
                                return False
                            if st.get("state") != "running" or not st.get("pid"):
                                return False
                    return True
                wait_for("%s: %d services running" % (kind, len(names)), all_up,
                         30 + 0.2 * len(names), 0.05)
                time.sleep(a.settle)
                figs = [smaps_rollup(p) for p in pids]
                out["summary"][kind] = {k: summary([f[k] for f in figs]) for k in ("Pss", "Rss")}
                if build is not None:
                    for n in names:
                        ndjson_call(dirs[n] / "buddy.sock", [{"type": "hello", "version": 1,
                                                              "id": 1}], 1, 5)
                    time.sleep(0.5)
                    figs = [smaps_rollup(p) for p in pids]
                    out["after_hello"][kind] = {k: summary([f[k] for f in figs])
                                                for k in ("Pss", "Rss")}
            finally:
                self.stop(list(pids))
            print("memory: %-22s PSS median %s kB" % (
                kind, out["summary"][kind]["Pss"]["median"]), file=sys.stderr)
        return out

    def cleanup(self):
        try:
            self.stop(list(self.pids))
            kill_everything([])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- facts and report ------------------------------------------------------------------------


def machine_facts(bench):
    return {
        **host_facts(PEER_PACKAGES.values()),
        "git": command_output(["git", "rev-parse", "--short", "HEAD"]),
        "binaries": {k: {"source": str(next((b.src[k.split(":")[0]] for b in bench.builds
                                              if k.endswith(":" + b.label)), p)),
                         **file_facts(p)}
                     for k, p in bench.bins.items() if p.exists()},
        "builds": [b.label for b in bench.builds],
        "start_script": bench.script.decode() if bench.script else None,
        "scripts": bench.facts.get("scripts"),
        "nofile_soft": NOFILE,
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
    }


def report(res):
    a, f = res["args"], res["facts"]
    builds = f["builds"]
    L = ["## Fast path benchmark (bench/fastpath.py)", ""]
    L.append("Machine: %s cores, kernel %s, %s; load average %s at the start, %s at the end; "
             "bench at %s; runit %s, s6 %s, daemontools %s." % (
                 f["nproc"], f["kernel"], f["date"], " ".join(res["loadavg_start"]),
                 " ".join(f["loadavg_end"]), f["git"], f["packages"]["runit"],
                 f["packages"]["s6"], f["packages"]["daemontools"]))
    if a.get("note"):
        L.append("**%s**" % a["note"])
    L.append("Builds: " + "; ".join("`%s` = %s (buddy sha256 %s...)" % (
        b, f["binaries"]["upk_buddy:" + b]["source"],
        f["binaries"]["upk_buddy:" + b]["sha256"][:12]) for b in builds) + ". Each runs under "
             "its own controller. " + (
                 "The peers and the floor run the program itself (`run` is a symlink to "
                 "`stamp`, its arguments as variables: no shell for anyone); the buddies their "
                 "rendered start script (`%s`)" if a.get("no_shell") else
                 "Every supervisor and the floor run the same start script (the first build's "
                 "rendering, `%s`)") % (f["start_script"] or "").strip().split("\n")[-1] +
             ", the same static `stamp`, nofile %d, on tmpfs." % f["nofile_soft"])
    scripts = f.get("scripts") or {}
    for n in ("kill", "crash"):
        texts = {b: scripts.get("%s/%s" % (b, n)) for b in builds}
        if len(set(texts.values())) > 1:
            L.append("**The builds render `%s`'s start script differently** (see `facts.scripts`): "
                     "the peers run the first build's." % n)
    L.append("")
    kill = res.get("kill")
    if kill:
        s = kill["summary"]
        L += ["### Restart gap after kill -9 (ms): just before the kill to the new child's `S`",
              "", "%d kills per kind, kinds interleaved (one kill, its restart, %.0f ms, the "
              "next kind); every child lived at least %.1f s." % (
                  a["kills"], a["spacing"] * 1000, MIN_AGE), "",
              "| kind | median | p90 | min | max | n | x floor |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        fl = s["floor"]["median"]
        for k in kill["kinds"]:
            x = s[k]
            L.append("| %s | %s | %s | %s | %s | %d | %.2f |" % (
                k, fmt(x["median"], 3), fmt(x["p90"], 3), fmt(x["min"], 3), fmt(x["max"], 3),
                x["n"], x["median"] / fl))
        L.append("")
        for b in builds:
            k = "upk_buddy:" + b
            paired = statistics.median([u / v for u, v in zip(kill["gaps_ms"][k],
                                                               kill["gaps_ms"]["floor"])])
            L.append("- `%s`: %.2f x floor (paired by round: %.2f); %s." % (
                b, s[k]["median"] / fl, paired, ", ".join(
                    "%.2f x %s" % (s[k]["median"] / s[p]["median"], p) for p in PEERS)))
        L.append("")
    crash = res.get("crash")
    if crash:
        s = crash["summary"]
        L += ["### Crash-loop gap (ms): the dead child's `E` to the next `S`, lifetime 0", "",
              "One kind at a time, %d window(s) of %.1f s per build and the floor "
              "(alternating order), one of %.1f s per peer; `UserRateLimit: 0` for the buddies." % (
                  a["crash_rounds"], a["crash_seconds"], a["crash_peer_seconds"]), "",
              "| kind | median | p90 | min | max | n | starts/s | x floor | built-in delay |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        fl = s["floor"]["median"]
        for k in s:
            x = s[k]
            note = CRASH_NOTES.get(k.split(":")[0].replace("upk_buddy", "upk"), "")
            L.append("| %s | %s | %s | %s | %s | %d | %.0f | %s | %s |" % (
                k, fmt(x["median"], 3), fmt(x["p90"], 3), fmt(x["min"], 3), fmt(x["max"], 3),
                x["n"], x["starts_per_s"], "%.2f" % (x["median"] / fl) if k not in PEERS
                else "-", note))
        L.append("")
        L.append("Window medians: " + "; ".join("%s %s" % (k, ", ".join(
            fmt(m, 3) for m in s[k]["window_medians"])) for k in s if k not in PEERS) + ".")
        L.append("")
    ctl = res.get("control")
    if ctl:
        s = ctl["summary"]
        L += ["### Stop + start (ms): the control client's stop, then its start", "",
              "%d pairs per way (after %d warm-up), ways interleaved; every service had run "
              "%.1f s before its stop. *pair* is the stop command's wall time plus the start "
              "command's (each a whole process, from Python's `subprocess.run`); *stop "
              "effect* is from issuing the stop to the service's `T` stamp (its SIGTERM "
              "handler), *gone* to its pid gone from /proc (polled every 0.5 ms), *start "
              "effect* from issuing the start to the new `S`. The start is issued once the "
              "old process is gone." % (a["pairs"], a["warmup"], MIN_AGE), "",
              "| way | pair | stop cmd | start cmd | stop effect | gone | start effect | pair p90 | pair x best peer |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        peers = [m["label"] for m in ctl["methods"] if m["kind"] in PEERS]
        best = min(s[p]["pair"]["median"] for p in peers)
        for m in ctl["methods"]:
            x = s[m["label"]]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %.2f |" % (
                m["label"], fmt(x["pair"]["median"], 2), fmt(x["stop_cmd"]["median"], 2),
                fmt(x["start_cmd"]["median"], 2), fmt(x["stop_effect"]["median"], 2),
                fmt(x["gone"]["median"], 2), fmt(x["start_effect"]["median"], 2),
                fmt(x["pair"]["p90"], 2), x["pair"]["median"] / best))
        L.append("")
        L.append("Python clients are not whole commands: they show the path without a client "
                 "process (connect, `hello`, request, reply).")
        L.append("")
    mem = res.get("memory")
    if mem:
        L += ["### Buddy PSS: %d idle buddies per build, no controller (kB)" % mem["services"], "",
              "| kind | PSS median | min | max | after one `hello` | RSS median |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for k, x in mem["summary"].items():
            h = mem["after_hello"].get(k)
            L.append("| %s | %s | %s | %s | %s | %s |" % (
                k, fmt(x["Pss"]["median"]), x["Pss"]["min"], x["Pss"]["max"],
                fmt(h["Pss"]["median"]) if h else "-", fmt(x["Rss"]["median"])))
        L.append("")
    return "\n".join(L)


def parser():
    """The command line; bench/control_path.py takes its defaults for the Bench it builds."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--buddy", action="append", default=[], metavar="LABEL=PATH", required=False,
                   help="an upk_buddy binary, or a directory with upk_buddy, upkeeper, upkctl")
    p.add_argument("--upkeeper", action="append", default=[], metavar="LABEL=PATH")
    p.add_argument("--upkctl", action="append", default=[], metavar="LABEL=PATH")
    p.add_argument("--floor", help="the floor binary (default: compile --floor-src)")
    p.add_argument("--floor-src", default=str(REPO.parent / "shared" / "bench" / "floor.c"))
    p.add_argument("--kills", type=int, default=60, help="kill -9 restarts per kind")
    p.add_argument("--spacing", type=float, default=0.1,
                   help="seconds after a restart before the next kind's kill")
    p.add_argument("--kill-timeout", type=float, default=900)
    p.add_argument("--crash-rounds", type=int, default=3, help="crash-loop windows per build")
    p.add_argument("--crash-seconds", type=float, default=2.0, help="one crash-loop window")
    p.add_argument("--crash-peer-seconds", type=float, default=3.5,
                   help="the peers' one window (they restart once a second)")
    p.add_argument("--crash-skip-peers", action="store_true")
    p.add_argument("--crash-settle", type=float, default=1.0,
                   help="seconds of quiet before each crash-loop window")
    p.add_argument("--pairs", type=int, default=30, help="stop+start pairs per way")
    p.add_argument("--warmup", type=int, default=2, help="pairs per way not counted")
    p.add_argument("--no-python-clients", action="store_true",
                   help="time only the real commands in the stop+start part")
    p.add_argument("--mem-services", type=int, default=100)
    p.add_argument("--mem-skip-runsv", action="store_true")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--say", action="store_true",
                   help="the service writes a line to stdout at each start and one to stderr "
                        "before each exit (what a death's tail then keeps)")
    p.add_argument("--no-shell", action="store_true",
                   help="the peers' and the floor's run is the program itself, not the buddy's "
                        "start script (kill and crash only)")
    p.add_argument("--no-cgroup", action="append", default=[], metavar="LABEL",
                   help="this build's controller has `Cgroup: false` (services kept by their "
                        "process group): the same binaries with and without cgroups side by side")
    p.add_argument("--skip", default="", help="comma-separated: kill,crash,control,memory")
    p.add_argument("--note", default="", help="a sentence printed in bold under the heading")
    p.add_argument("--label", default="", help="suffix of the results file name")
    p.add_argument("--report", metavar="JSON", help="only print the markdown of a results file")
    return p


def main():
    args = parser().parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    if not args.buddy:
        p.error("give at least one --buddy LABEL=PATH")
    if os.geteuid() != 0:
        p.error("run as root")
    skip = set(x for x in args.skip.split(",") if x)

    def kv(items):
        out = {}
        for item in items:
            k, sep, v = item.partition("=")
            if not sep:
                p.error("%r is not LABEL=PATH" % item)
            out[k] = Path(v).resolve()
        return out

    buddies, upks, ctls = kv(args.buddy), kv(args.upkeeper), kv(args.upkctl)
    builds = []
    for label, path in buddies.items():
        d = path if path.is_dir() else path.parent
        buddy = path / "upk_buddy" if path.is_dir() else path
        builds.append(Build(label, buddy, upks.get(label, d / "upkeeper"),
                            ctls.get(label, d / "upkctl")))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    become_subreaper()
    bench = Bench(args)
    bench.builds = builds
    res = {"args": {k: (v if not isinstance(v, list) else list(v)) for k, v in vars(args).items()},
           "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    t0 = time.monotonic()
    try:
        bench.prepare()
        bench.start_controllers()
        if "kill" not in skip:
            res["kill"] = bench.kill_phase()
        if "crash" not in skip:
            res["crash"] = bench.crash_phase()
        if "control" not in skip:
            res["control"] = bench.control_phase()
        if "memory" not in skip:
            res["memory"] = bench.memory_phase()
        res["facts"] = machine_facts(bench)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    res["seconds"] = time.monotonic() - t0
    text = report(res)
    print(text)
    path = results_path("fastpath", args.label)
    res["markdown"] = text
    path.write_text(to_json(res) + "\n")
    print("raw figures: %s (%.0f s)" % (path.relative_to(REPO), res["seconds"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        sys.exit(1)
