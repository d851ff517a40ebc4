#!/usr/bin/env python3
"""Benchmark: the upkeeper controller against runsvdir (runit), s6-svscan (s6), supervisord and
svscan (daemontools), each supervising many services.

Run by hand as root from anywhere (python3 standard library only):

    python3 bench/controller.py [--services 1000] [--rounds 3] [--idle 30] [--no-build]

Four figures, every supervisor given the same start script (the `#!/bin/sh` that upkeeper renders,
exec'ing the static C program `bench/stamp.c`), the same environment, the same open-file soft
limit and its directories on tmpfs (/dev/shm):

* start: time from launching the top-level supervisor (`upkeeper --config CTL run`,
  `runsvdir DIR`, `s6-svscan DIR`, `supervisord -c CONF -n`, `svscan DIR`) until all N services
  have stamped their start (CLOCK_MONOTONIC, written by the service). Median over --rounds.
* idle CPU: utime+stime of the supervisor tree (top-level supervisor and every per-service
  supervisor; the services excluded) over --idle seconds with the N services running.
* crash storm: --storm-services services each exiting every 100 ms; restarts achieved in a
  10 s window and the tree's CPU. For upkeeper also the audit store: records made and stored,
  the sustained insert rate, and records lost (expected 0).
* control round trip: `restart` of one service as a whole command (`sv restart`,
  `s6-svc -r -wr`, `supervisorctl restart`, `svc -t`, `upkctl restart`), with N running; and
  when the service's new process stamped its start.

Prints a markdown section and writes the raw figures to bench/results/controller-<date>.json.
Everything it starts is killed by pid (the script is a child subreaper, so orphans come back
to it) and the tmpfs directory is removed, also on Ctrl-C or an error. See bench/README.md.
"""

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (command_output, file_facts, host_facts, BENCH, NOTIFY_FD, REPO, BenchError, alive, become_subreaper, fmt, kill_pid,
                      proc_stat, reap, results_path, summary, to_json)


# The kinds, in the order they are run and reported.
KINDS = ["upkeeper", "runit", "s6", "supervisord", "daemontools"]
LABELS = {
    "upkeeper": "upkeeper (controller + upk_buddy)",
    "runit": "runit (runsvdir + runsv)",
    "s6": "s6 (s6-svscan + s6-supervise)",
    "supervisord": "supervisord",
    "daemontools": "daemontools (svscan + supervise)",
}
PACKAGES = {"runit": "runit", "s6": "s6", "supervisord": "supervisor", "daemontools": "daemontools"}
# The programs each kind needs (looked up in PATH), and which processes of a tree are
# supervisors (by executable name); the top-level process always counts. supervisord has no
# per-service supervisor: its children are the services.
PROGRAMS = {
    "runit": ["runsvdir", "runsv", "sv"],
    "s6": ["s6-svscan", "s6-supervise", "s6-svc"],
    "supervisord": ["supervisord", "supervisorctl"],
    "daemontools": ["svscan", "supervise", "svc"],
}
SUPERVISOR_EXES = {
    "upkeeper": {"upkeeper", "upk_buddy"},
    "runit": {"runsvdir", "runsv"},
    "s6": {"s6-svscan", "s6-supervise"},
    "supervisord": set(),
    "daemontools": {"svscan", "supervise"},
}
# Compiled-in limits: runsvdir.c `#define MAXSERVICES 1000`, svscan "up to a limit of 1000
# subdirectories". s6-svscan takes -c.
MAX_SERVICES = {"runit": 1000, "daemontools": 1000}
# What each supervisor does between a death and the next start (the crash storm).
STORM_THROTTLES = {
    "upkeeper": "`UserRateLimit: 0` restarts at once; `MaxConsecutiveFailures: -1` and "
                "`UserMaxRestarts: null`: never gives up, never pauses",
    "runit": "runsv sleeps 1 s after a child that lived < 1 s",
    "s6": "s6-supervise: about one start a second per service, although the service "
          "notifies readiness (notification-fd)",
    "supervisord": "`startsecs=0`, `autorestart=true` (defaults: a child dying within "
                   "startsecs=1 goes BACKOFF and FATAL after startretries=3; exit 0 is "
                   "\"expected\" and not restarted under autorestart=unexpected)",
    "daemontools": "supervise sleeps 1 s after every start",
}
# upkctl's command lines ({upkctl}, {ctl}, {id} replaced): plain, and waiting for running.
UPKCTL_CMDS = ["{upkctl} --config {ctl} restart {id}",
               "{upkctl} --config {ctl} restart --wait {id}"]
# What each way of restarting waits for before it returns.
CTL_WAITS = {
    "upkctl": "the controller's `done`: the buddy acted (status `stopping`)",
    "upkctl --wait": "blocks until the status is `running` again (events, and the status "
                     "re-read meanwhile)",
    "python client on upkeeper.sock (not a whole command)":
        "the controller relays `restart` to the buddy and answers when the buddy answers: "
        "right after the stop began (status `stopping`)",
    "python client direct to the buddy (not through the controller)":
        "subscribes to the buddy, sends `restart`, returns at the `started` record",
    "runit": "sv polls `supervise/status` every 420 ms until the service runs again with a "
             "start time no older than sv's own start second (a few ms when runsv restarted the "
             "service before sv's first look)",
    "s6": "`-wr`: s6-svlisten1 waits for the service's down then up events (no polling)",
    "supervisord": "XML-RPC stopProcess then startProcess, each waiting; `startsecs=0`: "
                   "RUNNING at spawn",
    "daemontools": "nothing: svc writes `t` to `supervise/control` and exits",
}
STAMP_NAME = "bench-stamps"  # per-service stamp file, relative to the service's working dir
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- processes -------------------------------------------------------------------------------


def sched_ns(pid):
    """Nanoseconds on a CPU, summed over pid's threads (/proc/PID/task/*/schedstat), or None."""
    total = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total


def children_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is not None:
            children.setdefault(st[1], []).append(int(name))
    return children


def descendants(root, children=None):
    """Every process whose ppid chain leads to root (root excluded)."""
    children = children if children is not None else children_map()
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def exe_name(pid):
    try:
        target = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return None
    if target.endswith(" (deleted)"):
        target = target[: -len(" (deleted)")]
    return os.path.basename(target)


def age(path, seconds=3600):
    """Sets path's atime and mtime `seconds` into the past."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def kill_everything(supervisors, timeout=20.0):
    """SIGKILLs the given top-level pids, then every remaining descendant of this process
    (buddies, per-service supervisors and services re-parented to us, since we are a
    subreaper), by pid; reaps; bounded."""
    for pid in supervisors:
        kill_pid(pid)
    end = time.monotonic() + timeout
    me = os.getpid()
    while True:
        reap()
        left = [p for p in descendants(me) if proc_stat(p) is not None]
        if not left:
            return
        if time.monotonic() >= end:
            raise BenchError("processes still present after %.0f s: %s" % (timeout, left[:20]))
        for pid in left:
            kill_pid(pid)
        time.sleep(0.02)


class Procs:
    """The top-level supervisors started in one phase."""

    def __init__(self):
        self.pids = {}  # pid -> kind

    def spawn(self, kind, argv, cwd, env, log):
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=out, start_new_session=True)
        self.pids[p.pid] = kind
        return p.pid

    def stop(self):
        pids, self.pids = list(self.pids), {}
        kill_everything(pids)


# ---- statistics ------------------------------------------------------------------------------


# ---- small clients ---------------------------------------------------------------------------


def ndjson_call(sock_path, lines, want_id, timeout, until=None):
    """Connects to a unix socket, sends `lines` (dicts), reads reply lines until the one with
    id `want_id` (and, if `until` is given, until until(messages) is true). Returns the list of
    messages read. Raises BenchError on EOF or timeout."""
    msgs = []
    got_reply = False
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
                raise BenchError("%s: connection closed without a reply (read %d lines: %s)"
                                 % (sock_path, len(msgs), [m.get("type") for m in msgs]))
            try:
                msg = json.loads(line)
            except ValueError:
                raise BenchError("%s: not JSON: %r" % (sock_path, line[:200]))
            msgs.append(msg)
            if msg.get("id") == want_id:
                if msg.get("type") == "error":
                    raise BenchError("%s: error reply: %s" % (sock_path, msg.get("message")))
                got_reply = True
            if got_reply and (until is None or until(msgs)):
                return msgs


def buddy_call(sock_path, request, timeout=10.0):
    """One request to a buddy; returns its reply (the message with id 1)."""
    req = dict(request, id=1)
    msgs = ndjson_call(sock_path, [req], 1, timeout)
    return [m for m in msgs if m.get("id") == 1][-1]


# ---- the benchmark ---------------------------------------------------------------------------


class Setup:
    """One top-level supervisor with its services, ready to launch."""

    def __init__(self, kind, base, names):
        self.kind = kind
        self.base = base
        self.names = names
        self.dirs = {}  # name -> the service's working directory (its stamp file lives there)
        self.argv = None
        self.env = None
        self.log = base / "supervisor.log"
        self.stamp_file = None  # the shared stamp file, when there is one
        self.ctl = None  # upkeeper: the controller file
        self.conf = None  # supervisord: its configuration
        self.state = None  # upkeeper: StateDir


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="upk-ctl-", dir="/dev/shm"))
        os.chmod(self.root, 0o755)
        self.bin = self.root / "bin"
        self.stamp = self.bin / "stamp"
        self.script = None  # the rendered start script, identical for every supervisor
        self.procs = Procs()
        self.bins = {}
        self.facts = {}

    # -- preparation

    def prepare(self):
        a = self.args
        self.facts["git_at_start"] = git_state()
        if not a.no_build:
            print("building: cargo build --release -p upkeeper -p upk-buddy", file=sys.stderr)
            subprocess.run(["cargo", "build", "--release", "-p", "upkeeper", "-p", "upk-buddy"],
                           cwd=REPO, check=True, stdin=subprocess.DEVNULL)
        release = REPO / "target" / "release"
        self.bin.mkdir()
        # Copies on tmpfs: a rebuild of target/ during the run (a shared machine) changes
        # nothing here. The controller finds upk_buddy next to itself.
        if "upkeeper" in a.kinds:
            src_upk = Path(a.upkeeper).resolve() if a.upkeeper else release / "upkeeper"
            src_buddy = Path(a.buddy).resolve() if a.buddy else release / "upk_buddy"
            for src, name in ((src_upk, "upkeeper"), (src_buddy, "upk_buddy")):
                if not src.exists():
                    raise BenchError("%s is missing: cargo build --release -p upkeeper -p "
                                     "upk-buddy" % src)
                shutil.copy2(src, self.bin / name)
                self.bins[name] = self.bin / name
            self.facts["sources"] = {"upkeeper": str(src_upk), "upk_buddy": str(src_buddy)}
        for kind in a.kinds:
            for prog in PROGRAMS.get(kind, []):
                found = shutil.which(prog, path=PATH_ENV)
                if found is None:
                    raise BenchError("%s not found: apt-get install -y --no-install-recommends "
                                     "%s" % (prog, PACKAGES[kind]))
                self.bins[prog] = Path(found)
        src = BENCH / "stamp.c"
        static = subprocess.run(["cc", "-O2", "-static", "-o", str(self.stamp), str(src)],
                                capture_output=True, text=True)
        if static.returncode != 0:
            subprocess.run(["cc", "-O2", "-o", str(self.stamp), str(src)], check=True)
        self.facts["stamp_static"] = static.returncode == 0
        self.script = self.rendered_script()
        # Everything started from here on inherits this soft limit (the controller holds one
        # socket per buddy, supervisord three pipes per program).
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < a.nofile:
            raise BenchError("RLIMIT_NOFILE hard limit %d is below %d" % (hard, a.nofile))
        resource.setrlimit(resource.RLIMIT_NOFILE, (a.nofile, hard))

    def rendered_script(self):
        """The start script as upkeeper renders it (`#!/bin/sh`, the renderer's comment,
        `exec stamp`); the peers get these very bytes as their `run`."""
        text = "#!/bin/sh\nexec %s\n" % self.stamp
        if "upkeeper" not in self.args.kinds:
            return text
        base = self.root / "prep"
        for d in ("conf", "run", "state"):
            (base / d).mkdir(parents=True)
        ctl = base / "upkeeper.conf"
        ctl.write_text(json.dumps({"StateDir": str(base / "state"),
                                   "SvcConfigPath": str(base / "conf"),
                                   "SvcRunPath": str(base / "run")}) + "\n")
        (base / "conf" / "prep.conf").write_text(json.dumps({"prep": {"StartScript": text}}) + "\n")
        out = subprocess.run([str(self.bins["upkeeper"]), "--config", str(ctl), "render"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise BenchError("upkeeper render failed (%d): %s" % (out.returncode, out.stderr))
        rendered = (base / "run" / "prep" / "scripts" / "start").read_text()
        shutil.rmtree(base)
        return rendered

    def env(self, stamp_file, lifetime_ms):
        return {"PATH": PATH_ENV, "STAMP_FILE": str(stamp_file), "LIFETIME_MS": str(lifetime_ms),
                "NOTIFY_FD": str(NOTIFY_FD)}

    def make_setup(self, kind, phase, names, lifetime_ms, shared_stamp):
        """Service directories and the top-level command for `kind`. With shared_stamp every
        service appends to one file (cheap to watch); otherwise each service appends to
        STAMP_NAME in its own working directory."""
        base = self.root / ("%s-%s" % (kind, phase))
        base.mkdir()
        s = Setup(kind, base, names)
        if shared_stamp:
            s.stamp_file = base / "stamps"
            s.env = self.env(s.stamp_file, lifetime_ms)
        else:
            s.env = self.env(STAMP_NAME, lifetime_ms)
        # The buddy starts services from a clean environment (docs/servicedir.md), so the
        # service's variables are in the script itself, for every supervisor alike:
        # `VAR=value exec stamp` sets them for the exec'd program, with no extra process.
        assigns = " ".join("%s=%s" % (k, shlex.quote(str(s.env[k])))
                           for k in ("STAMP_FILE", "LIFETIME_MS", "NOTIFY_FD"))
        s.script = self.script.replace("\nexec ", "\n%s exec " % assigns, 1)
        if kind == "upkeeper":
            conf, run, state = base / "conf", base / "run", base / "state"
            for d in (conf, run, state):
                d.mkdir()
            s.ctl = base / "upkeeper.conf"
            s.state = state
            s.ctl.write_text(json.dumps({"StateDir": str(state), "SvcConfigPath": str(conf),
                                         "SvcRunPath": str(run),
                                         "BuddyPollingInterval": 0.5}, indent=1) + "\n")
            entry = {"StartScript": s.script, "InitialState": "running",
                     "UserRateLimit": 0, "MaxConsecutiveFailures": -1, "UserMaxRestarts": None}
            # Services run in `/` by default: each one's stamps in its run directory, where
            # the peers run theirs.
            entries = {n: dict(entry, WorkingDirectory=str(run / n)) for n in names}
            (conf / "bench.conf").write_text(json.dumps(entries, indent=1) + "\n")
            s.dirs = {n: run / n for n in names}  # created by the controller's renderer
            s.argv = [str(self.bins["upkeeper"]), "--config", str(s.ctl), "run"]
            age(conf)
            return s
        svdir = base / "sv"
        for n in names:
            d = svdir / n
            d.mkdir(parents=True)
            run = d / "run"
            run.write_text(s.script)
            run.chmod(0o755)
            if kind == "s6":
                (d / "notification-fd").write_text("%d\n" % NOTIFY_FD)
            s.dirs[n] = d
        # A scan directory as on a real system: not modified this very second. runsvdir
        # (runit 2.1.2) sleeps 1 s before its first scan when the directory's mtime is the
        # current second, which a directory made just now always is.
        age(svdir)
        if kind == "runit":
            s.argv = [str(self.bins["runsvdir"]), str(svdir)]
        elif kind == "s6":
            s.argv = [str(self.bins["s6-svscan"]), "-c", str(max(1000, 2 * len(names))), str(svdir)]
        elif kind == "daemontools":
            s.argv = [str(self.bins["svscan"]), str(svdir)]
        elif kind == "supervisord":
            s.conf = base / "supervisord.conf"
            (base / "childlogs").mkdir()
            lines = [
                "[unix_http_server]", "file=%s" % (base / "supervisor.sock"), "chmod=0700", "",
                "[supervisord]", "logfile=%s" % (base / "supervisord.log"), "logfile_maxbytes=0",
                "pidfile=%s" % (base / "supervisord.pid"), "childlogdir=%s" % (base / "childlogs"),
                "nodaemon=true", "minfds=%d" % self.args.nofile, "user=root", "",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "",
                "[supervisorctl]", "serverurl=unix://%s" % (base / "supervisor.sock"), "",
            ]
            for n in names:
                lines += ["[program:%s]" % n, "command=%s" % (s.dirs[n] / "run"),
                          "directory=%s" % s.dirs[n], "autostart=true", "autorestart=true",
                          "startsecs=0", "startretries=3", "stopsignal=TERM",
                          "stdout_logfile=NONE", "stderr_logfile=NONE", ""]
            s.conf.write_text("\n".join(lines))
            s.argv = [str(self.bins["supervisord"]), "-c", str(s.conf), "-n"]
        return s

    def launch(self, s):
        return self.procs.spawn(s.kind, s.argv, self.root, s.env, s.log)

    def log_tail(self, s):
        text = ""
        for p in (s.log, s.base / "supervisord.log"):
            if p.exists():
                text += p.read_text(errors="replace")[-1500:]
        return text

    # -- process tree figures

    def supervisor_tree(self, kind, top):
        """{pid: {...}} for the top-level supervisor and every per-service supervisor under it
        (by executable name); services, shells and scripts are left out."""
        exes = SUPERVISOR_EXES[kind]
        out = {}
        for pid in [top] + descendants(top):
            exe = exe_name(pid)
            if exe is None or (pid != top and exe not in exes):
                continue
            st = proc_stat(pid)
            if st is None or st[0] in ("Z", "X"):
                continue
            out[pid] = {"exe": exe, "ticks": st[2], "sched_ns": sched_ns(pid), "top": pid == top}
        return out

    @staticmethod
    def cpu_delta(before, after, seconds):
        """CPU of the processes present in both snapshots, in ms per second of wall time."""
        common = [p for p in before if p in after]
        res = {"seconds": seconds, "processes": len(common),
               "appeared": len([p for p in after if p not in before]),
               "disappeared": len([p for p in before if p not in after])}
        for part, pids in (("total", common), ("top", [p for p in common if before[p]["top"]]),
                           ("children", [p for p in common if not before[p]["top"]])):
            ticks = sum(after[p]["ticks"] - before[p]["ticks"] for p in pids)
            res[part + "_ticks"] = ticks
            res[part + "_ms_per_s"] = ticks * 1000.0 / CLK_TCK / seconds
            if all(before[p]["sched_ns"] is not None and after[p]["sched_ns"] is not None
                   for p in pids):
                ns = sum(after[p]["sched_ns"] - before[p]["sched_ns"] for p in pids)
                res[part + "_sched_ms_per_s"] = ns / 1e6 / seconds
        return res

    @staticmethod
    def tree_pss(tree):
        top, children = 0, []
        for pid, info in tree.items():
            try:
                with open("/proc/%d/smaps_rollup" % pid) as f:
                    pss = next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
            except (OSError, StopIteration):
                continue
            if info["top"]:
                top = pss
            else:
                children.append(pss)
        return {"top_kB": top, "children_kB": sum(children), "children_n": len(children),
                "children_median_kB": statistics.median(children) if children else None}

    # -- stamps

    @staticmethod
    def read_stamps(path):
        """([S ns], [E ns]) of one stamp file."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return [], []
        starts, ends = [], []
        for line in data.split(b"\n"):
            if line.startswith(b"S ") and line[2:].isdigit():
                starts.append(int(line[2:]))
            elif line.startswith(b"E ") and line[2:].isdigit():
                ends.append(int(line[2:]))
        return starts, ends

    def wait_started(self, s, top, t0):
        """Until the shared stamp file holds one start per service; returns figures in ms
        from t0 (the launch)."""
        n = len(s.names)
        bound = 60 + 0.2 * n
        end = time.monotonic() + bound
        while True:
            starts, _ = self.read_stamps(s.stamp_file)
            if len(starts) >= n:
                break
            if not alive(top):
                raise BenchError("%s (pid %d) died: %s" % (s.kind, top, self.log_tail(s)))
            if time.monotonic() >= end:
                raise BenchError("%s: %d of %d services started after %.0f s: %s" % (
                    s.kind, len(starts), n, bound, self.log_tail(s)))
            time.sleep(0.05)
        starts.sort()
        ms = [(x - t0) / 1e6 for x in starts]
        return {"all_ms": ms[n - 1], "first_ms": ms[0], "half_ms": ms[(n - 1) // 2]}

    # -- figures 1, 2, 4: a fleet of N services

    def fleet_round(self, kind, rnd, control):
        a = self.args
        names = ["s%04d" % i for i in range(a.services)]
        s = self.make_setup(kind, "fleet%d" % rnd, names, -1, shared_stamp=True)
        out = {"round": rnd + 1}
        try:
            t0 = time.monotonic_ns()
            top = self.launch(s)
            out["start"] = self.wait_started(s, top, t0)
            print("round %d: %-12s all %d running after %.0f ms" % (
                rnd + 1, kind, len(names), out["start"]["all_ms"]), file=sys.stderr)
            time.sleep(a.settle)
            if not alive(top):
                raise BenchError("%s died during the settle: %s" % (kind, self.log_tail(s)))
            out["stamps_after_settle"] = len(self.read_stamps(s.stamp_file)[0])
            if a.idle > 0:
                t_a = time.monotonic()
                before = self.supervisor_tree(kind, top)
                time.sleep(a.idle)
                t_b = time.monotonic()
                after = self.supervisor_tree(kind, top)
                out["idle"] = self.cpu_delta(before, after, t_b - t_a)
                out["idle"]["stamps_during"] = (len(self.read_stamps(s.stamp_file)[0])
                                                - out["stamps_after_settle"])
                out["memory"] = self.tree_pss(after)
                print("round %d: %-12s idle %.2f ms CPU/s (%d supervisor processes)" % (
                    rnd + 1, kind, out["idle"]["total_ms_per_s"], out["idle"]["processes"]),
                    file=sys.stderr)
            if control:
                out["control"] = self.control(kind, s, top)
        finally:
            self.procs.stop()
            shutil.rmtree(s.base, ignore_errors=True)
        return out

    # -- figure 4: control round trip

    def upkctl_path(self):
        a = self.args
        p = Path(a.upkctl) if a.upkctl else REPO / "target" / "release" / "upkctl"
        if not p.exists():
            return None
        # A copy, like the other upkeeper binaries: a rebuild during the run changes nothing.
        dst = self.bin / "upkctl"
        if not dst.exists():
            shutil.copy2(p, dst)
            self.bins["upkctl"] = dst
            self.facts.setdefault("sources", {})["upkctl"] = str(p)
        return dst

    def control_methods(self, kind, s):
        """[(label, whole command?, argv or None, callable)]."""
        name, d = s.names[0], s.dirs[s.names[0]]

        def run(argv):
            def go():
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   timeout=60, cwd=self.root, env={"PATH": PATH_ENV})
                if r.returncode != 0:
                    raise BenchError("%s exited %d: %s %s" % (
                        " ".join(argv), r.returncode, r.stdout.decode(errors="replace")[-300:],
                        r.stderr.decode(errors="replace")[-300:]))
                return None
            return go

        if kind == "upkeeper":
            methods = []
            upkctl = self.upkctl_path()
            if upkctl is not None:
                for template in self.args.upkctl_cmd or UPKCTL_CMDS:
                    argv = [x.format(upkctl=upkctl, ctl=s.ctl, id=name)
                            for x in shlex.split(template)]
                    label = " ".join(shlex.split(template)).format(
                        upkctl="upkctl", ctl="CTL", id="ID")
                    methods.append((label, True, argv, run(argv)))
            else:
                print("control: no upkctl (%s): python clients only" % (
                    self.args.upkctl or REPO / "target" / "release" / "upkctl"), file=sys.stderr)
            sock_c = s.state / "upkeeper.sock"
            methods.append(("python client on upkeeper.sock (not a whole command)", False,
                            None, lambda: self.controller_restart(sock_c, name)))
            sock = d / "buddy.sock"
            methods.append(("python client direct to the buddy (not through the controller)",
                            False, None, lambda: self.buddy_restart(sock)))
            return methods
        if kind == "runit":
            argv = [str(self.bins["sv"]), "restart", str(d)]
        elif kind == "s6":
            argv = [str(self.bins["s6-svc"]), "-r", "-wr", str(d)]
        elif kind == "supervisord":
            argv = [str(self.bins["supervisorctl"]), "-c", str(s.conf), "restart", name]
        else:
            argv = [str(self.bins["svc"]), "-t", str(d)]
        return [(" ".join([Path(argv[0]).name] + argv[1:]).replace(str(s.base), "DIR"), True,
                 argv, run(argv))]

    @staticmethod
    def controller_restart(sock, service):
        """The controller's client protocol: hello, then restart with id 1; the reply with id 1."""
        msgs = ndjson_call(sock, [{"type": "hello", "version": 1},
                                  {"type": "restart", "id": 1, "service": service}], 1, 10.0)
        return [m for m in msgs if m.get("id") == 1][-1].get("type")

    @staticmethod
    def buddy_restart(sock):
        """Straight to the buddy: subscribe, restart, and wait for the `started` record that
        follows the restart (a seq above the one in the restart's reply)."""
        state = {}

        def done(msgs):
            if "seq" not in state:
                reply = [m for m in msgs if m.get("id") == 3]
                if not reply:
                    return False
                state["seq"] = reply[0]["status"]["seq"]
            return any(m.get("type") == "event" and m["record"].get("kind") == "started"
                       and m["record"]["seq"] > state["seq"] for m in msgs)

        ndjson_call(sock, [{"type": "hello", "version": 1, "id": 1},
                           {"type": "subscribe", "id": 2}, {"type": "restart", "id": 3}],
                    3, 10.0, until=done)
        return "started"

    def control(self, kind, s, top):
        a = self.args
        results = []
        for label, whole, argv, fn in self.control_methods(kind, s):
            res = {"label": label, "whole_command": whole,
                   "argv": [x.replace(str(self.root), "<tmp>") for x in argv] if argv else None,
                   "samples": []}
            results.append(res)
            for i in range(a.ctl_warmup + a.ctl_restarts):
                offset = s.stamp_file.stat().st_size
                t0 = time.monotonic_ns()
                try:
                    reply = fn()
                except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                    # An interface that is not there yet (or fails) is reported, not fatal.
                    res["error"] = "call %d: %s" % (i + 1, str(e).replace(str(self.root), "<tmp>"))
                    print("control: %s: %s: %s" % (kind, label, res["error"]), file=sys.stderr)
                    if not alive(top):
                        raise BenchError("%s died during the control run: %s" % (
                            kind, self.log_tail(s)))
                    break
                t1 = time.monotonic_ns()
                new = self.wait_new_start(s, offset, top)
                if i >= a.ctl_warmup:
                    res["samples"].append({"cmd_ms": (t1 - t0) / 1e6,
                                           "start_ms": (new - t0) / 1e6})
                if reply is not None:
                    res["reply"] = reply
                # Every peer counts in whole seconds somewhere (sv compares its start second
                # with the status's; runsv/supervise throttle restarts within 1 s of a start):
                # the next restart comes ctl_gap after this start.
                delay = (new / 1e9 + a.ctl_gap) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if res["samples"]:
                res["cmd"] = summary([x["cmd_ms"] for x in res["samples"]])
                res["start"] = summary([x["start_ms"] for x in res["samples"]])
                print("control: %-12s %s: median %.1f ms (new start %.1f ms)" % (
                    kind, label, res["cmd"]["median"], res["start"]["median"]), file=sys.stderr)
        return results

    def wait_new_start(self, s, offset, top, timeout=15.0):
        """The first `S` stamp written after `offset` in the shared stamp file."""
        end = time.monotonic() + timeout
        while True:
            with open(s.stamp_file, "rb") as f:
                f.seek(offset)
                data = f.read()
            for line in data.split(b"\n"):
                if line.startswith(b"S ") and line[2:].isdigit():
                    return int(line[2:])
            if not alive(top):
                raise BenchError("%s died during the control run: %s" % (s.kind, self.log_tail(s)))
            if time.monotonic() >= end:
                raise BenchError("%s: no new start within %.0f s of the restart" % (s.kind, timeout))
            time.sleep(0.002)

    # -- figure 3: crash storm

    def storm(self, kind):
        a = self.args
        names = ["c%03d" % i for i in range(a.storm_services)]
        s = self.make_setup(kind, "storm", names, a.storm_lifetime, shared_stamp=False)
        out = {"services": len(names), "lifetime_ms": a.storm_lifetime}
        db = s.state / "upkeeper.db" if kind == "upkeeper" else None
        try:
            t0 = time.monotonic_ns()
            top = self.launch(s)
            bound = 60 + 0.2 * len(names)
            end = time.monotonic() + bound
            while True:
                missing = [n for n in names if not (s.dirs[n] / STAMP_NAME).exists()]
                if not missing:
                    break
                if not alive(top):
                    raise BenchError("%s died: %s" % (kind, self.log_tail(s)))
                if time.monotonic() >= end:
                    raise BenchError("%s: %d services never started (e.g. %s)" % (
                        kind, len(missing), missing[:5]))
                time.sleep(0.05)
            out["all_started_ms"] = (time.monotonic_ns() - t0) / 1e6
            time.sleep(a.storm_warmup)
            samples = []  # (monotonic ns, max(events.id)) for upkeeper
            w0 = time.monotonic_ns()
            if db:
                samples.append((w0, self.max_event_id(db)))
            before = self.supervisor_tree(kind, top)
            w1_goal = w0 + int(a.storm_seconds * 1e9)
            while True:
                left = (w1_goal - time.monotonic_ns()) / 1e9
                if left <= 0:
                    break
                time.sleep(min(0.5, left))
                if not alive(top):
                    raise BenchError("%s died during the storm: %s" % (kind, self.log_tail(s)))
                if db and time.monotonic_ns() < w1_goal:
                    samples.append((time.monotonic_ns(), self.max_event_id(db)))
            w1 = time.monotonic_ns()
            if db:
                samples.append((w1, self.max_event_id(db)))
            after = self.supervisor_tree(kind, top)
            out["cpu"] = self.cpu_delta(before, after, (w1 - w0) / 1e9)
            out["window_ns"] = [w0, w1]
            if kind == "upkeeper":
                out["store"] = self.drain(s, db, top, samples, w0, w1)
        finally:
            self.procs.stop()
        per = {}
        for n in names:
            starts, ends = self.read_stamps(s.dirs[n] / STAMP_NAME)
            per[n] = {"S": len(starts), "E": len(ends),
                      "window": len([x for x in starts if w0 <= x < w1])}
        shutil.rmtree(s.base, ignore_errors=True)
        window_s = (w1 - w0) / 1e9
        in_window = [p["window"] for p in per.values()]
        out["restarts_in_window"] = sum(in_window)
        out["restarts_per_s"] = sum(in_window) / window_s
        out["per_service"] = summary(in_window)
        out["stamps_S"] = sum(p["S"] for p in per.values())
        out["stamps_E"] = sum(p["E"] for p in per.values())
        if "store" in out:
            st = out["store"]
            st["stamps_vs_store"] = {
                "S_stamps": out["stamps_S"], "started_rows": st["by_kind"].get("started", 0),
                "E_stamps": out["stamps_E"], "died_exit_rows": st["died_exit_rows"],
                "died_rows": st["by_kind"].get("died", 0)}
        print("storm: %-12s %d restarts in %.1f s (%.0f/s), supervisor CPU %.0f ms/s" % (
            kind, out["restarts_in_window"], window_s, out["restarts_per_s"],
            out["cpu"]["total_ms_per_s"]), file=sys.stderr)
        return out

    @staticmethod
    def db_connect(db):
        return sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)

    def max_event_id(self, db):
        try:
            with self.db_connect(db) as c:
                return c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        except sqlite3.Error:
            return None

    def drain(self, s, db, top, samples, w0, w1):
        """After the storm: stops every service through its buddy, waits until every buddy's
        records are acknowledged (= committed by the store), then counts."""
        a = self.args
        res = {}
        t_stop = time.monotonic()
        for n in s.names:
            buddy_call(s.dirs[n] / "buddy.sock", {"type": "stop"})
        end = t_stop + a.drain_timeout
        while True:
            statuses = {n: buddy_call(s.dirs[n] / "buddy.sock", {"type": "status"})["status"]
                        for n in s.names}
            pending = {n: st["seq"] - st["acked"] for n, st in statuses.items()
                       if st["acked"] < st["seq"] or st["state"] != "stopped"}
            if not pending:
                break
            if not alive(top):
                raise BenchError("the controller died while draining: %s" % self.log_tail(s))
            if time.monotonic() >= end:
                res["not_drained"] = pending
                break
            time.sleep(0.2)
        res["drain_s"] = time.monotonic() - t_stop
        made = {n: st["seq"] for n, st in statuses.items()}
        with self.db_connect(db) as c:
            rows = c.execute(
                "SELECT s.service, COUNT(*), SUM(e.kind != 'lost'), SUM(e.kind = 'lost'), "
                "SUM(CASE WHEN e.kind = 'lost' THEN e.lost_count ELSE 0 END), MAX(e.seq) "
                "FROM events e JOIN services s ON s.id = e.service_id GROUP BY s.service"
            ).fetchall()
            by_kind = dict(c.execute("SELECT kind, COUNT(*) FROM events GROUP BY kind").fetchall())
            died_exit = c.execute(
                "SELECT COUNT(*) FROM events WHERE kind = 'died' AND cause = 'exit'").fetchone()[0]
            made_in_window = c.execute(
                "SELECT COUNT(*) FROM events WHERE mono_us >= ? AND mono_us < ?",
                (w0 // 1000, w1 // 1000)).fetchone()[0]
        stored = {r[0]: {"rows": r[1], "real": r[2] or 0, "lost_rows": r[3] or 0,
                         "lost_count": r[4] or 0, "max_seq": r[5]} for r in rows}
        lost = gaps = lost_rows = lost_count = 0
        for n in s.names:
            st = stored.get(n, {"real": 0, "lost_rows": 0, "lost_count": 0})
            lost += made[n] - st["real"]
            gaps += made[n] - st["real"] - st["lost_count"]
            lost_rows += st["lost_rows"]
            lost_count += st["lost_count"]
        window_s = (w1 - w0) / 1e9
        ids = [x for x in samples if x[1] is not None]
        inserted = ids[-1][1] - ids[0][1] if len(ids) >= 2 else None
        span = (ids[-1][0] - ids[0][0]) / 1e9 if len(ids) >= 2 else None
        res.update({
            "records_made": sum(made.values()),
            "rows_stored": sum(st["rows"] for st in stored.values()),
            "events_lost": lost, "lost_records": lost_rows, "lost_records_count": lost_count,
            "seq_gaps": gaps, "by_kind": by_kind, "died_exit_rows": died_exit,
            "made_in_window": made_in_window, "made_per_s": made_in_window / window_s,
            "inserted_in_window": inserted,
            "insert_per_s": inserted / span if inserted is not None and span else None,
            "id_samples": [[(t - w0) / 1e9, i] for t, i in samples],
            "controller_log_bytes": s.log.stat().st_size if s.log.exists() else None,
        })
        print("storm: upkeeper store: %d records made, %d stored, %d lost; %.0f inserted/s in "
              "the window; drained %.1f s after the stop" % (
                  res["records_made"], res["rows_stored"], lost,
                  res["insert_per_s"] or float("nan"), res["drain_s"]), file=sys.stderr)
        return res

    # -- the optional store measurement

    def store_test(self):
        argv = ["cargo", "test", "--release", "-p", "upkeeper", "--test", "store", "--",
                "--ignored", "--nocapture", "measure_insert_rate"]
        print("running: " + " ".join(argv), file=sys.stderr)
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        m = re.search(r"(\d+) events in ([\d.]+) s \((\d+) transactions\): (\d+) events/s", r.stdout)
        if r.returncode != 0 or not m:
            return {"error": "exit %d: %s" % (r.returncode, (r.stdout + r.stderr)[-500:])}
        return {"events": int(m.group(1)), "seconds": float(m.group(2)),
                "transactions": int(m.group(3)), "events_per_s": int(m.group(4)),
                "command": " ".join(argv)}

    def cleanup(self):
        try:
            self.procs.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- facts and report ------------------------------------------------------------------------


def git_state():
    def cmd(argv):
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                              stdin=subprocess.DEVNULL).stdout.strip()
    try:
        return {"commit": cmd(["git", "rev-parse", "--short", "HEAD"]),
                "dirty": bool(cmd(["git", "status", "--porcelain", "--untracked-files=no"]))}
    except OSError:
        return None


def machine_facts(bench):
    return {
        **host_facts(PACKAGES.values()),
        "rustc": command_output(["rustc", "--version"]),
        "git": (bench.facts.get("git_at_start") or {}).get("commit"),
        "git_dirty": (bench.facts.get("git_at_start") or {}).get("dirty"),
        "git_at_end": git_state(),
        "binaries": {k: {"path": str(p).replace(str(bench.root), "<tmp>"), **file_facts(p)}
                     for k, p in bench.bins.items() if p.exists()},
        "sources": bench.facts.get("sources"),
        "stamp_static": bench.facts.get("stamp_static"),
        "start_script": bench.script.replace(str(bench.root), "<tmp>") if bench.script else None,
        "nofile_soft": bench.args.nofile,
        "clk_tck": CLK_TCK,
        "tmpfs": "/dev/shm",
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
    }


def report(res):
    a = res["args"]
    f = res["facts"]
    kinds = a["kinds"]
    lines = ["## Controller benchmark (bench/controller.py)", ""]
    lines.append("Machine: %s cores, kernel %s, %s; rustc: %s; upkeeper %s%s; %s." % (
        f["nproc"], f["kernel"], f["date"], f["rustc"], f["git"],
        " (dirty)" if f["git_dirty"] else "",
        ", ".join("%s %s" % (k, v) for k, v in f["packages"].items())))
    lines.append("Every supervisor runs the same start script (upkeeper's rendering: `#!/bin/sh`, "
                 "a comment, `exec stamp`; stamp %s), with the same environment, RLIMIT_NOFILE "
                 "soft %d, directories (and upkeeper's audit store) on tmpfs. Load average at "
                 "the start %s, at the end %s." % (
                     "static" if f["stamp_static"] else "dynamic", f["nofile_soft"],
                     " ".join(res.get("loadavg_start", [])), " ".join(f["loadavg_end"])))
    if a.get("label"):
        lines.append("Label: `%s`." % a["label"])
    lines.append("")
    rounds = res.get("fleet")
    if rounds:
        n = a["services"]
        lines += ["### Start to %d services running (ms from launching the top-level supervisor)"
                  % n, "",
                  "Time until the last of the %d services stamped its start; %d round(s), kinds "
                  "run one at a time in the order %s, a fresh directory every time." % (
                      n, a["rounds"], ", ".join(kinds)), "",
                  "| supervisor | all running, median | min | max | first service (median) "
                  "| half (median) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for k in kinds:
            rs = [r for r in rounds.get(k, []) if "start" in r]
            if not rs:
                lines.append("| %s | skipped: %s | | | | |" % (
                    LABELS[k], res.get("skipped", {}).get(k, "not run")))
                continue
            al = summary([r["start"]["all_ms"] for r in rs])
            lines.append("| %s | %s | %s | %s | %s | %s |" % (
                LABELS[k], fmt(al["median"], 0), fmt(al["min"], 0), fmt(al["max"], 0),
                fmt(statistics.median(r["start"]["first_ms"] for r in rs), 0),
                fmt(statistics.median(r["start"]["half_ms"] for r in rs), 0)))
        if a["idle"] > 0:
            lines += ["", "### Idle CPU of the supervisor tree, %d services running" % n, "",
                      "utime+stime (clock ticks of %d ms) of the top-level supervisor and every "
                      "per-service supervisor (for upkeeper: the controller and the buddies; the "
                      "services excluded), over %.0f s starting %.0f s after the last service "
                      "started; ms of CPU per second of wall time, median over rounds. The "
                      "schedstat column is the same from /proc/PID/task/*/schedstat (ns, no tick "
                      "rounding). PSS is read at the end of the window." % (
                          1000 // f["clk_tck"], a["idle"], a["settle"]), "",
                      "| supervisor | ms CPU/s, median | min | max | schedstat ms/s | top-level "
                      "| per-service supervisors | processes | PSS top-level kB | PSS per-service "
                      "supervisors, sum kB |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for k in kinds:
                rs = [r for r in rounds.get(k, []) if "idle" in r]
                if not rs:
                    continue
                t = summary([r["idle"]["total_ms_per_s"] for r in rs])
                sch = summary([r["idle"].get("total_sched_ms_per_s") for r in rs])
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %d | %s | %s |" % (
                    LABELS[k], fmt(t["median"], 2), fmt(t["min"], 2), fmt(t["max"], 2),
                    fmt(sch["median"] if sch else None, 3),
                    fmt(statistics.median(r["idle"]["top_ms_per_s"] for r in rs), 2),
                    fmt(statistics.median(r["idle"]["children_ms_per_s"] for r in rs), 2),
                    rs[-1]["idle"]["processes"],
                    fmt(statistics.median(r["memory"]["top_kB"] for r in rs), 0),
                    fmt(statistics.median(r["memory"]["children_kB"] for r in rs), 0)))
    storm = res.get("storm")
    if storm:
        any_k = next(iter(storm.values()))
        lines += ["", "### Crash storm: %d services, each exiting %d ms after its start" % (
            any_k["services"], any_k["lifetime_ms"]), "",
                  "Restarts are the services' `S` stamps inside a %.0f s window that opens %.1f s "
                  "after every service has started once; CPU is the supervisor tree's over the "
                  "same window (services excluded)." % (a["storm_seconds"], a["storm_warmup"]), "",
                  "| supervisor | restarts in the window | per second | per service: median "
                  "(min-max) | supervisor CPU ms/s | built-in delay |",
                  "| --- | ---: | ---: | --- | ---: | --- |"]
        for k in kinds:
            x = storm.get(k)
            if not x:
                continue
            p = x["per_service"] or {"median": 0, "min": 0, "max": 0}
            lines.append("| %s | %d | %s | %s (%d-%d) | %s | %s |" % (
                LABELS[k], x["restarts_in_window"], fmt(x["restarts_per_s"], 0),
                fmt(p["median"], 1), p["min"], p["max"], fmt(x["cpu"]["total_ms_per_s"], 0),
                STORM_THROTTLES[k]))
        st = storm.get("upkeeper", {}).get("store")
        if st:
            sv = st["stamps_vs_store"]
            lines += ["", "upkeeper's audit store (`StateDir/upkeeper.db`, table `events`) for "
                      "the whole storm run, after every service was stopped through its buddy "
                      "and every buddy's records were acknowledged (%.1f s after the stop%s):" % (
                          st["drain_s"], "; NOT drained: %s" % st["not_drained"]
                          if st.get("not_drained") else ""), "",
                      "| figure | value |", "| --- | ---: |",
                      "| records made by the buddies (their last `seq`) | %d |" % st["records_made"],
                      "| rows stored | %d |" % st["rows_stored"],
                      "| **events lost** (made - stored, `lost` rows excluded) | **%d** |"
                      % st["events_lost"],
                      "| `lost` rows (records they stand for) | %d (%d) |" % (
                          st["lost_records"], st["lost_records_count"]),
                      "| seq gaps (neither stored nor covered by a `lost` row) | %d |"
                      % st["seq_gaps"],
                      "| records made in the window (by `mono_us`), per second | %d, %s/s |" % (
                          st["made_in_window"], fmt(st["made_per_s"], 0)),
                      "| rows inserted during the window (growth of `MAX(id)`), per second: "
                      "**sustained insert rate** | %s, **%s/s** |" % (
                          st["inserted_in_window"], fmt(st["insert_per_s"], 0)),
                      "| `S` stamps / `started` rows | %d / %d |" % (sv["S_stamps"],
                                                                     sv["started_rows"]),
                      "| `E` stamps / `died` rows with cause `exit` / all `died` rows | %d / %d "
                      "/ %s |" % (sv["E_stamps"], sv["died_exit_rows"], sv.get("died_rows", st["by_kind"].get("died", "-"))),
                      "| controller's stdout (one line per record) | %s bytes |"
                      % st["controller_log_bytes"]]
            lines += ["", "Rows by kind: " + ", ".join(
                "%s %d" % kv for kv in sorted(st["by_kind"].items())) + "."]
    store = res.get("store_test")
    if store:
        lines += ["", "Store capacity (`%s`): %s" % (
            store.get("command", "cargo test ... measure_insert_rate"),
            "%d events in %.3f s, %d transactions: **%d events/s**" % (
                store["events"], store["seconds"], store["transactions"], store["events_per_s"])
            if "events_per_s" in store else "failed: %s" % store.get("error"))]
    ctl = [(k, r["control"]) for k in kinds for r in (rounds or {}).get(k, []) if "control" in r]
    if ctl:
        lines += ["", "### Control round trip: `restart` of one service, %d running (ms)" % a["services"],
                  "",
                  "%d restarts per row after %d warm-up, each started %.1f s after the previous "
                  "new process's start. *command*: from launching the command until it exited "
                  "(or, for the python clients, until the reply/record it waits for); *new "
                  "start*: from the same moment until the new process stamped its start." % (
                      a["ctl_restarts"], a["ctl_warmup"], a["ctl_gap"]), "",
                  "| supervisor | how | command median | p90 | min | max | new start median "
                  "| returns | what it waits for |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
        errors = []
        for k, methods in ctl:
            for m in methods:
                if not m.get("samples"):
                    lines.append("| %s | %s | not available: %s | | | | | | |" % (
                        LABELS[k], m["label"], m.get("error", "no samples")))
                    continue
                c, st = m["cmd"], m["start"]
                after = sum(1 for x in m["samples"] if x["start_ms"] <= x["cmd_ms"])
                when = ("after the new start (%d/%d)" % (after, len(m["samples"]))
                        if after * 2 > len(m["samples"])
                        else "before the new start (%d/%d after)" % (after, len(m["samples"])))
                how = ("`%s`" % " ".join(m["argv"]).replace("<tmp>/", "") if m["whole_command"]
                       else m["label"])
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    LABELS[k], how,
                    fmt(c["median"], 1), fmt(c["p90"], 1), fmt(c["min"], 1), fmt(c["max"], 1),
                    fmt(st["median"], 1), when,
                    CTL_WAITS.get(ctl_key(k, m), "")))
                if m.get("error"):
                    errors.append("%s, %s: stopped after %d samples: %s" % (
                        LABELS[k], m["label"], len(m["samples"]), m["error"]))
        if errors:
            lines += [""] + ["Note: " + e for e in errors]
    lines.append("")
    return "\n".join(lines)


def ctl_key(kind, method):
    if kind != "upkeeper":
        return kind
    if method["label"].startswith("upkctl"):
        return "upkctl --wait" if "--wait" in method["label"] else "upkctl"
    return method["label"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000, help="services per supervisor (start, idle, control)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of start + idle (all kinds each)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds between 'all running' and the idle window")
    p.add_argument("--idle", type=float, default=30.0, help="idle window in seconds (0: skip)")
    p.add_argument("--storm-services", type=int, default=100)
    p.add_argument("--storm-lifetime", type=int, default=100, help="ms each storm service lives")
    p.add_argument("--storm-seconds", type=float, default=10.0, help="storm window in seconds")
    p.add_argument("--storm-warmup", type=float, default=1.0,
                   help="seconds between every storm service having started and the window")
    p.add_argument("--drain-timeout", type=float, default=120.0,
                   help="bound on upkeeper's drain after the storm (seconds)")
    p.add_argument("--ctl-restarts", type=int, default=50, help="control round trips per kind (0: skip)")
    p.add_argument("--ctl-warmup", type=int, default=1, help="round trips run first and not counted")
    p.add_argument("--ctl-gap", type=float, default=1.2,
                   help="seconds from a restarted service's start to the next restart")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    p.add_argument("--skip-fleet", action="store_true", help="no start/idle/control")
    p.add_argument("--skip-storm", action="store_true")
    p.add_argument("--store-test", action="store_true",
                   help="also run the store's ignored insert-rate test (builds the release test)")
    p.add_argument("--nofile", type=int, default=8192, help="RLIMIT_NOFILE soft limit for everything")
    p.add_argument("--no-build", action="store_true", help="use target/release as it is")
    p.add_argument("--upkeeper", help="use this upkeeper binary")
    p.add_argument("--buddy", help="use this upk_buddy binary (copied next to upkeeper)")
    p.add_argument("--upkctl", help="use this upkctl (default target/release/upkctl, if it exists)")
    p.add_argument("--upkctl-cmd", action="append", metavar="TEMPLATE",
                   help="an upkctl command line to time, repeatable ({upkctl}, {ctl}, {id} are "
                        "replaced; default: %s)" % " and ".join(repr(c) for c in UPKCTL_CMDS))
    p.add_argument("--label", default="", help="suffix of the results file name")
    p.add_argument("--report", metavar="JSON", help="only print the markdown of a results file")
    args = p.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error("unknown kinds %s" % bad)
    if os.geteuid() != 0:
        p.error("run as root (every supervisor is compared as root)")
    if args.nofile < 4 * args.services + 1024:
        p.error("--nofile %d is too low for %d services (supervisord holds 3 pipes per program)"
                % (args.nofile, args.services))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)
    become_subreaper()
    bench = Bench(args)
    res = {"args": {k: v for k, v in vars(args).items()},
           "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    try:
        bench.prepare()
        fleet_kinds = []
        res["skipped"] = {}
        for k in args.kinds:
            if args.services > MAX_SERVICES.get(k, args.services):
                res["skipped"][k] = "at most %d services (compiled-in limit)" % MAX_SERVICES[k]
            else:
                fleet_kinds.append(k)
        if not args.skip_fleet:
            res["fleet"] = {k: [] for k in fleet_kinds}
            for rnd in range(args.rounds):
                for k in fleet_kinds:
                    control = rnd == args.rounds - 1 and args.ctl_restarts > 0
                    res["fleet"][k].append(bench.fleet_round(k, rnd, control))
        if not args.skip_storm:
            res["storm"] = {}
            for k in args.kinds:
                res["storm"][k] = bench.storm(k)
        if args.store_test:
            res["store_test"] = bench.store_test()
        res["facts"] = machine_facts(bench)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    text = report(res)
    print(text)
    path = results_path("controller", args.label)
    res["markdown"] = text
    path.write_text(to_json(res) + "\n")
    print("raw figures: %s" % path.relative_to(REPO), file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        sys.exit(1)
