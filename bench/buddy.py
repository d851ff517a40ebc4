#!/usr/bin/env python3
"""Benchmark: upk_buddy against runsv (runit), s6-supervise (s6) and supervise (daemontools).

Run by hand as root from anywhere (python3 standard library only):

    python3 bench/buddy.py [--services 100] [--restarts 60] [--no-build]

Two measurements, every supervisor given the same start script (a `#!/bin/sh` that execs the
static C program `bench/stamp.c`), the same environment, the same open-file soft limit (1024)
and service directories on tmpfs (/dev/shm):

* memory: N supervisors of one kind, each supervising one never-ending service; RSS and PSS
  of each supervisor process from /proc/PID/smaps_rollup, plus a per-mapping breakdown of
  /proc/PID/smaps for one supervisor of each kind. Kinds run one after another (A B C D),
  repeated --mem-rounds times.
* restart latency: one service per kind living 1.1 s (longer than every peer's 1 s throttle),
  all four kinds running at once, started a quarter of a lifetime apart; the gap is the new
  child's "S" stamp minus the dead child's "E" stamp, both CLOCK_MONOTONIC, written by the
  service itself.

Prints a markdown section and writes the raw figures to bench/results/buddy-<date>.json.
Everything it starts is killed by pid (the script is a child subreaper, so orphans come back
to it) and the tmpfs directory is removed, also on Ctrl-C or an error. See bench/README.md.
"""

import argparse
import json
import os
import re
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


# The kinds, in the order they are run and reported.
KINDS = ["upk_buddy", "runsv", "s6-supervise", "supervise"]
PEER_PACKAGES = {"runsv": "runit", "s6-supervise": "s6", "supervise": "daemontools"}
# What each supervisor does between a child's death and the next start, and how the
# benchmark keeps it out of the restart figures.
THROTTLES = {
    "upk_buddy": "UserRateLimit: 0 restarts at once (unset, starts would be >= 1 s apart)",
    "runsv": "sleeps 1 s after a child that lived < 1 s; the child lives 1.1 s",
    "s6-supervise": "waits 1 s after every death unless the service signalled readiness; the "
                    "service writes a newline to notification-fd (the child also lives 1.1 s)",
    "supervise": "sleeps 1 s after every start (before it can reap); the child lives 1.1 s",
}
NOFILE = 1024
STAMP_NAME = "stamps"  # each service's stamp file, in its working directory
# The readiness descriptor: s6-supervise opens it (file `notification-fd`), nobody else does;
# NOTIFY_FD is in every supervisor's environment, stamp writes a newline there if it is a pipe.


# ---- processes -------------------------------------------------------------------------------


def descendants(root):
    """Every process whose ppid chain leads to root (root excluded)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is not None:
            children.setdefault(st[1], []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_everything(supervisors, timeout=10.0):
    """SIGKILLs the given supervisor pids, then every remaining descendant of this process
    (services re-parented to us, since we are a subreaper), by pid; reaps; bounded."""
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
            raise BenchError("processes still present after %.0f s: %s" % (timeout, left))
        for pid in left:
            kill_pid(pid)
        time.sleep(0.02)


class Procs:
    """The supervisors started in one phase."""

    def __init__(self):
        self.pids = {}  # pid -> (kind, name)

    def spawn(self, kind, name, argv, cwd, env, log):
        with open(log, "ab") as out:
            p = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.pids[p.pid] = (kind, name)
        return p.pid

    def stop(self):
        pids, self.pids = list(self.pids), {}
        kill_everything(pids)


# ---- memory figures --------------------------------------------------------------------------

ROLLUP_KEYS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean",
               "Private_Dirty", "Anonymous")
MAP_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def smaps_rollup(pid):
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ROLLUP_KEYS:
                out[key] = int(rest.split()[0])
    return out


def smaps_breakdown(pid, exe):
    """kB of Rss, Pss, Private_Dirty, Private_Clean and Anonymous summed per pathname
    (`by_path`) and per (pathname, permissions) (`by_mapping`), and every mapping as it is
    (`mappings`, with its address range); the supervisor's own binary is called <exe>."""
    rows, cur = [], None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            if MAP_HEADER.match(line):
                parts = line.split(None, 5)
                path = parts[5].strip() if len(parts) > 5 else "[anon]"
                if path == exe:
                    path = "<exe>"
                cur = {"path": path, "perms": parts[1], "size_kB": 0, "range": parts[0]}
                for k in ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Anonymous"):
                    cur[k] = 0
                rows.append(cur)
                lo, hi = parts[0].split("-")
                cur["size_kB"] = (int(hi, 16) - int(lo, 16)) // 1024
            elif cur is not None:
                key, _, rest = line.partition(":")
                if key in cur and key not in ("path", "perms", "size_kB", "range"):
                    cur[key] = int(rest.split()[0])
    detail = {}
    for r in rows:
        k = (r["path"], r["perms"])
        d = detail.setdefault(k, {"path": r["path"], "perms": r["perms"], "size_kB": 0,
                                  "Rss": 0, "Pss": 0, "Private_Dirty": 0,
                                  "Private_Clean": 0, "Anonymous": 0})
        for f in ("size_kB", "Rss", "Pss", "Private_Dirty", "Private_Clean", "Anonymous"):
            d[f] += r[f]
    by_path = {}
    for d in detail.values():
        s = by_path.setdefault(d["path"], {"path": d["path"], "Rss": 0, "Pss": 0,
                                           "Private_Dirty": 0, "Private_Clean": 0,
                                           "Anonymous": 0})
        for f in ("Rss", "Pss", "Private_Dirty", "Private_Clean", "Anonymous"):
            s[f] += d[f]
    return {"by_path": list(by_path.values()), "by_mapping": list(detail.values()),
            "mappings": rows}


# ---- statistics ------------------------------------------------------------------------------


# ---- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="upk-bench-", dir="/dev/shm"))
        os.chmod(self.root, 0o755)
        (self.root / "logs").mkdir()
        self.stamp = self.root / "bin" / "stamp"
        self.script = None  # the start script text, identical for every supervisor
        self.procs = Procs()
        self.bins = {}
        self.facts = {}

    # -- preparation

    def prepare(self):
        a = self.args
        # The buddy is measured as it ships: musl and non-PIE (.cargo/config.toml) when the
        # target is installed, else the host's glibc build.
        musl = "x86_64-unknown-linux-musl"
        have_musl = musl in subprocess.run(["rustup", "target", "list", "--installed"],
                                           capture_output=True, text=True).stdout.split()
        if not a.no_build and not a.buddy:
            print("building: cargo build --release -p upk-buddy -p upkeeper", file=sys.stderr)
            subprocess.run(["cargo", "build", "--release", "-p", "upk-buddy", "-p", "upkeeper"],
                           cwd=REPO, check=True, stdin=subprocess.DEVNULL)
            if have_musl:
                print("building: cargo build --release -p upk-buddy --target " + musl, file=sys.stderr)
                subprocess.run(["cargo", "build", "--release", "-p", "upk-buddy", "--target", musl],
                               cwd=REPO, check=True, stdin=subprocess.DEVNULL)
        release = REPO / "target" / "release"
        shipped = REPO / "target" / musl / "release" / "upk_buddy"
        default_buddy = shipped if have_musl and shipped.exists() else release / "upk_buddy"
        self.bins["upk_buddy"] = Path(a.buddy).resolve() if a.buddy else default_buddy
        self.facts["buddy_build"] = ("musl, non-PIE" if self.bins["upk_buddy"] == shipped
                                     else "given with --buddy" if a.buddy else "glibc (host default)")
        self.bins["upkeeper"] = Path(a.upkeeper).resolve() if a.upkeeper else release / "upkeeper"
        for kind in ("runsv", "s6-supervise", "supervise"):
            found = shutil.which(kind)
            if found is None:
                raise BenchError("%s not found: apt-get install -y --no-install-recommends "
                                 "runit s6 daemontools" % kind)
            self.bins[kind] = Path(found)
        for k, p in self.bins.items():
            if not p.exists():
                raise BenchError("%s: %s is missing" % (k, p))
        self.stamp.parent.mkdir()
        src = BENCH / "stamp.c"
        static = subprocess.run(["cc", "-O2", "-static", "-o", str(self.stamp), str(src)],
                                capture_output=True, text=True)
        if static.returncode != 0:
            subprocess.run(["cc", "-O2", "-o", str(self.stamp), str(src)], check=True)
        self.facts["stamp_static"] = static.returncode == 0
        # The buddy starts services from a clean environment (docs/servicedir.md), so stamp
        # gets its settings as arguments, for every supervisor alike; the stamp file is
        # relative to the service's working directory (its run or service directory).
        self.script = "#!/bin/sh\nexec %s %s %%d %d\n" % (self.stamp, STAMP_NAME, NOTIFY_FD)
        # Everything started from here on inherits this soft limit.
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < NOFILE:
            raise BenchError("RLIMIT_NOFILE hard limit %d is below %d" % (hard, NOFILE))
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))

    def env(self, stamp_file, lifetime_ms):
        e = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "STAMP_FILE": str(stamp_file), "LIFETIME_MS": str(lifetime_ms),
             "NOTIFY_FD": str(NOTIFY_FD)}
        return e

    def render_upk(self, phase, names, lifetime_ms):
        """Renders run directories for `names` with `upkeeper render`; returns {name: dir}."""
        base = self.root / ("upk-" + phase)
        conf, run, state = base / "conf", base / "run", base / "state"
        for d in (conf, run, state):
            d.mkdir(parents=True)
        ctl = base / "upkeeper.conf"
        ctl.write_text(json.dumps({"StateDir": str(state), "SvcConfigPath": str(conf),
                                   "SvcRunPath": str(run)}) + "\n")
        entry = {"StartScript": self.script % lifetime_ms, "InitialState": "running", "UserRateLimit": 0}
        # Services run in `/` by default: each one's stamps in its run directory.
        entries = {n: dict(entry, WorkingDirectory=str(run / n)) for n in names}
        (conf / "bench.conf").write_text(json.dumps(entries, indent=1) + "\n")
        out = subprocess.run([str(self.bins["upkeeper"]), "--config", str(ctl), "render"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise BenchError("upkeeper render failed (%d): %s" % (out.returncode, out.stderr))
        dirs = {n: run / n for n in names}
        for n, d in dirs.items():
            if not (d / "settings.json").exists():
                raise BenchError("upkeeper render did not produce %s" % d)
        # The peers get the very bytes the buddy will execute (the renderer adds a comment
        # line after the #! line), so every supervisor runs an identical script.
        self.script_rendered = (dirs[names[0]] / "scripts" / "start").read_text()
        return dirs

    def peer_dirs(self, kind, phase, names):
        base = self.root / ("%s-%s" % (kind, phase))
        dirs = {}
        for n in names:
            d = base / n
            d.mkdir(parents=True)
            run = d / "run"
            run.write_text(self.script_rendered)
            run.chmod(0o755)
            if kind == "s6-supervise":
                (d / "notification-fd").write_text("%d\n" % NOTIFY_FD)
            dirs[n] = d
        return dirs

    def start(self, kind, name, d, env):
        argv = [str(self.bins[kind]), str(d)]
        return self.procs.spawn(kind, name, argv, self.root, env,
                                self.root / "logs" / ("%s-%s.log" % (kind, name)))

    def wait_running(self, kind, started, stamps, timeout):
        """Until every service has stamped its start (and, for the buddy, status says
        running); fails if a supervisor died or the bound passes."""
        end = time.monotonic() + timeout
        while True:
            waiting = []
            for pid, name in started.items():
                if not alive(pid):
                    log = (self.root / "logs" / ("%s-%s.log" % (kind, name))).read_text()[-2000:]
                    raise BenchError("%s %s (pid %d) died: %s" % (kind, name, pid, log))
                ok = stamps[name].exists() and stamps[name].read_text().startswith("S ")
                if ok and kind == "upk_buddy":
                    try:
                        st = json.loads((self.upk_dirs[name] / "status").read_text())
                        ok = st.get("state") == "running" and bool(st.get("pid"))
                    except (OSError, ValueError):
                        ok = False
                if not ok:
                    waiting.append(name)
            if not waiting:
                return
            if time.monotonic() >= end:
                raise BenchError("%s: %d services not running after %.0f s (e.g. %s)"
                                 % (kind, len(waiting), timeout, waiting[:5]))
            time.sleep(0.05)

    # -- memory

    def memory(self):
        a = self.args
        names = ["m%03d" % i for i in range(a.services)]
        upk = self.render_upk("mem", names, -1)
        samples = {k: [] for k in a.kinds}
        rounds = []
        breakdown = {}
        service_fds = {}
        hello_figs, hello_breakdown = [], None
        for rnd in range(a.mem_rounds):
            per_round = {}
            for kind in a.kinds:
                if kind == "upk_buddy":
                    dirs = upk
                    self.upk_dirs = upk
                else:
                    dirs = self.peer_dirs(kind, "mem%d" % rnd, names)
                stamps = {}
                started = {}
                for n in names:
                    stamps[n] = dirs[n] / STAMP_NAME
                    try:
                        stamps[n].unlink()  # the buddies' run directories serve every round
                    except FileNotFoundError:
                        pass
                    env = self.env(stamps[n], -1)
                    if kind == "upk_buddy":
                        env.update(a.buddy_env)
                    started[self.start(kind, n, dirs[n], env)] = n
                try:
                    self.wait_running(kind, started, stamps, 30 + 0.2 * len(names))
                    time.sleep(a.settle)
                    figs = []
                    for pid, n in started.items():
                        if not alive(pid):
                            raise BenchError("%s %s (pid %d) died during the settle" % (kind, n, pid))
                        r = smaps_rollup(pid)
                        r["pid"] = pid
                        figs.append(r)
                    first = next(iter(started))
                    if rnd == 0:
                        breakdown[kind] = smaps_breakdown(first, str(self.bins[kind]))
                        breakdown[kind]["pid"] = first
                        service_fds[kind] = self.service_fds(first)
                    if kind == "upk_buddy":
                        # The idle figure flatters a buddy whose event path was never run;
                        # one client exchange (what a controller does) runs it once.
                        for pid, n in started.items():
                            self.hello(dirs[n] / "buddy.sock")
                        time.sleep(0.5)
                        for pid, n in started.items():
                            r = smaps_rollup(pid)
                            r["pid"] = pid
                            hello_figs.append(r)
                        if rnd == 0:
                            hello_breakdown = smaps_breakdown(first, str(self.bins[kind]))
                            hello_breakdown["pid"] = first
                finally:
                    self.procs.stop()
                if kind == "upk_buddy":
                    # Fresh start next round: no status to adopt from.
                    for d in upk.values():
                        for f in ("status", "lock", "buddy.sock"):
                            try:
                                (d / f).unlink()
                            except FileNotFoundError:
                                pass
                samples[kind] += figs
                per_round[kind] = {"pss_median": statistics.median(f["Pss"] for f in figs),
                                   "rss_median": statistics.median(f["Rss"] for f in figs)}
                print("memory round %d: %-12s PSS median %s kB" % (
                    rnd + 1, kind, per_round[kind]["pss_median"]), file=sys.stderr)
            rounds.append(per_round)
        result = {"services": a.services, "rounds": rounds, "breakdown": breakdown,
                  "service_fds": service_fds,
                  "samples": samples, "summary": {}}

        def summarise(figs):
            out = {k: summary([f[k] for f in figs]) for k in ("Rss", "Pss")}
            out["Private"] = summary([f["Private_Clean"] + f["Private_Dirty"] for f in figs])
            return out

        for kind, figs in samples.items():
            result["summary"][kind] = summarise(figs)
        if hello_figs:
            result["after_hello"] = {"samples": hello_figs, "summary": summarise(hello_figs),
                                     "breakdown": hello_breakdown}
        return result

    @staticmethod
    def hello(sock_path):
        """One protocol exchange with a buddy, as a controller or client would start."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(sock_path))
            s.sendall(b'{"type":"hello","version":1}\n')
            line = s.makefile("rb").readline()
        if b'"hello"' not in line:
            raise BenchError("%s: unexpected answer to hello: %r" % (sock_path, line[:200]))

    # -- restart latency

    def latency(self):
        a = self.args
        upk = self.render_upk("lat", ["lat"], a.lifetime)
        self.upk_dirs = upk
        stamps, started, order = {}, {}, []
        stagger = a.lifetime / 1000.0 / len(a.kinds)
        t0 = time.monotonic()
        try:
            for i, kind in enumerate(a.kinds):
                d = upk["lat"] if kind == "upk_buddy" else self.peer_dirs(kind, "lat", ["lat"])["lat"]
                stamps[kind] = d / STAMP_NAME
                env = self.env(stamps[kind], a.lifetime)
                if kind == "upk_buddy":
                    env.update(a.buddy_env)
                # Quarter-lifetime offsets keep the four deaths apart on 2 cores.
                delay = t0 + i * stagger - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pid = self.start(kind, "lat", d, env)
                started[kind] = pid
                order.append(kind)
            bound = (a.restarts + 5) * (a.lifetime / 1000.0 + 0.2) * 1.5 + 30
            end = time.monotonic() + bound
            while True:
                gaps = {k: self.gaps(stamps[k]) for k in a.kinds}
                if all(len(g) >= a.restarts for g in gaps.values()):
                    break
                for kind, pid in started.items():
                    if not alive(pid):
                        raise BenchError("%s (pid %d) died during the latency run" % (kind, pid))
                if time.monotonic() >= end:
                    raise BenchError("restarts after %.0f s: %s (wanted %d each)" % (
                        bound, {k: len(g) for k, g in gaps.items()}, a.restarts))
                time.sleep(0.5)
            cpu, mem_after = {}, {}
            for kind, pid in started.items():
                st = proc_stat(pid)
                cpu[kind] = st[2] * 1000.0 / os.sysconf("SC_CLK_TCK") if st else None
                mem_after[kind] = smaps_rollup(pid)
        finally:
            self.procs.stop()
        result = {"lifetime_ms": a.lifetime, "restarts": a.restarts, "start_order": order,
                  "stagger_ms": stagger * 1000, "gaps_ms": {}, "summary": {},
                  "supervisor_cpu_ms": cpu, "memory_after": mem_after}
        for kind in a.kinds:
            g = gaps[kind][: a.restarts]
            result["gaps_ms"][kind] = gaps[kind]
            result["summary"][kind] = summary(g)
        return result

    def service_fds(self, supervisor):
        """The open descriptors of the stamp process under `supervisor` (a fairness check:
        what each supervisor leaves open in its service)."""
        for pid in descendants(supervisor):
            try:
                if os.readlink("/proc/%d/exe" % pid) != str(self.stamp):
                    continue
                fds = {}
                for fd in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
                    target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                    fds[fd] = target.replace(str(self.root), "<tmp>")
                return fds
            except OSError:
                continue
        return None

    @staticmethod
    def gaps(path):
        """Milliseconds from each "E" stamp to the next "S" stamp."""
        try:
            lines = path.read_text().split("\n")
        except FileNotFoundError:
            return []
        out, last_end = [], None
        for line in lines:
            if not line.endswith(tuple("0123456789")):
                continue  # empty or (impossible with single writes) partial line
            kind, ns = line.split()
            if kind == "E":
                last_end = int(ns)
            elif kind == "S" and last_end is not None:
                out.append((int(ns) - last_end) / 1e6)
                last_end = None
        return out

    def cleanup(self):
        try:
            self.procs.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# ---- facts and report ------------------------------------------------------------------------


def machine_facts(bench):
    cmd = command_output
    return {
        **host_facts(PEER_PACKAGES.values()),
        "rustc": cmd(["rustc", "--version"]),
        "git": cmd(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(cmd(["git", "status", "--porcelain", "--untracked-files=no"])),
        "binaries": {k: {"path": str(p), **file_facts(p)} for k, p in bench.bins.items()},
        "stamp_static": bench.facts.get("stamp_static"),
        "buddy_build": bench.facts.get("buddy_build"),
        "nofile_soft": NOFILE,
        "tmpfs": "/dev/shm",
        "loadavg_end": open("/proc/loadavg").read().split()[:3],
    }


def report(res):
    a = res["args"]
    f = res["facts"]
    lines = ["## Buddy benchmark (bench/buddy.py)", ""]
    lines.append("Machine: %s cores, kernel %s, %s; rustc: %s; upkeeper %s%s; runit %s, s6 %s, "
                 "daemontools %s." % (f["nproc"], f["kernel"], f["date"], f["rustc"], f["git"],
                                      " (dirty)" if f["git_dirty"] else "",
                                      f["packages"]["runit"], f["packages"]["s6"],
                                      f["packages"]["daemontools"]))
    lines.append("Every supervisor runs the same start script (`#!/bin/sh`, a comment, `exec "
                 "stamp`; stamp %s), with the same environment, RLIMIT_NOFILE soft %d, service "
                 "directories on tmpfs." % ("static" if f["stamp_static"] else "dynamic",
                                             f["nofile_soft"]))
    if a.get("buddy_env"):
        lines.append("**Observation run: upk_buddy had extra environment %s.**" % a["buddy_env"])
    ub = f["binaries"]["upk_buddy"]
    lines.append("upk_buddy binary: `%s` (%d bytes, sha256 %s...)." % (
        ub["path"], ub["bytes"], ub["sha256"][:12]))
    lines.append("")
    mem = res.get("memory")
    if mem:
        lines += ["### Memory: %d supervisors of each kind, one service each" % mem["services"], "",
                  "Kinds run one at a time (%s), %d round(s); figures pooled over rounds; "
                  "kB from /proc/PID/smaps_rollup of the supervisor process, %.0f s after every "
                  "service stamped its start." % (" ".join(a["kinds"]), len(mem["rounds"]),
                                                    a["settle"]), "",
                  "| supervisor | PSS median | PSS min | PSS max | RSS median | RSS min | RSS max "
                  "| private (clean+dirty) median |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        s = mem["summary"]
        for k in a["kinds"]:
            p, r, pr = s[k]["Pss"], s[k]["Rss"], s[k]["Private"]
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                k, fmt(p["median"]), p["min"], p["max"], fmt(r["median"]), r["min"], r["max"],
                fmt(pr["median"])))
        h = mem.get("after_hello")
        if h:
            p, r, pr = h["summary"]["Pss"], h["summary"]["Rss"], h["summary"]["Private"]
            lines.append("| upk_buddy, after one client `hello` | %s | %s | %s | %s | %s | %s | %s |" % (
                fmt(p["median"]), p["min"], p["max"], fmt(r["median"]), r["min"], r["max"],
                fmt(pr["median"])))
        if "upk_buddy" in s:
            lines.append("")
            ratios = ["upk_buddy PSS = %.2f x %s" % (s["upk_buddy"]["Pss"]["median"]
                                                    / s[k]["Pss"]["median"], k)
                      for k in a["kinds"] if k != "upk_buddy"]
            if h:
                ratios += ["after one hello %.2f x runsv" % (h["summary"]["Pss"]["median"]
                                                             / s["runsv"]["Pss"]["median"])
                           ] if "runsv" in s else []
            lines.append("Ratios of medians: " + "; ".join(ratios) + ".")
        if len(mem["rounds"]) > 1:
            lines += ["", "Per round, PSS median (kB): " + "; ".join(
                "round %d: " % (i + 1) + ", ".join("%s %s" % (k, fmt(v["pss_median"]))
                                                   for k, v in r.items())
                for i, r in enumerate(mem["rounds"])) + "."]
        shown = [(k, "", mem["breakdown"].get(k)) for k in a["kinds"]]
        if h:
            shown.insert(1, ("upk_buddy", " after one client `hello`", h["breakdown"]))
        for kind, when, b in shown:
            if not b:
                continue
            lines += ["", "Where one %s's memory goes%s (pid %d, kB, /proc/PID/smaps by "
                      "pathname; `<exe>` is the supervisor's binary):" % (kind, when, b["pid"]), "",
                      "| mapping | Rss | Pss | Private_Dirty | Private_Clean | Anonymous |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            rows = sorted(b["by_path"], key=lambda r: -r["Pss"])
            tot = {k: sum(r[k] for r in rows) for k in ("Rss", "Pss", "Private_Dirty",
                                                       "Private_Clean", "Anonymous")}
            for r in rows:
                if r["Rss"] == 0:
                    continue
                lines.append("| %s | %d | %d | %d | %d | %d |" % (
                    r["path"], r["Rss"], r["Pss"], r["Private_Dirty"], r["Private_Clean"],
                    r["Anonymous"]))
            lines.append("| **total** | %d | %d | %d | %d | %d |" % (
                tot["Rss"], tot["Pss"], tot["Private_Dirty"], tot["Private_Clean"],
                tot["Anonymous"]))
    lat = res.get("latency")
    if lat:
        lines += ["", "### Restart gap: dead child's last stamp to new child's first (ms)", "",
                  "One service per kind, each child living %d ms; all kinds supervised at the "
                  "same time on this %s-core machine, started %.0f ms apart in the order %s "
                  "so that deaths do not coincide; the first %d gaps of each kind." % (
                      lat["lifetime_ms"], f["nproc"], lat["stagger_ms"],
                      " ".join(lat["start_order"]), lat["restarts"]), "",
                  "| supervisor | median | p99 | min | max | n | built-in delay, and how it is avoided |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        s = lat["summary"]
        for k in a["kinds"]:
            x = s[k]
            lines.append("| %s | %s | %s | %s | %s | %d | %s |" % (
                k, fmt(x["median"], 3), fmt(x["p99"], 3), fmt(x["min"], 3), fmt(x["max"], 3),
                x["n"], THROTTLES[k]))
        if "upk_buddy" in s:
            lines.append("")
            ratios = ["upk_buddy gap = %.2f x %s" % (s["upk_buddy"]["median"] / s[k]["median"], k)
                      for k in a["kinds"] if k != "upk_buddy"]
            lines.append("Ratios of medians: " + "; ".join(ratios) + ".")
            # The four loops restart about once per lifetime each, so gap i of every kind falls
            # in the same 1.1 s window: pairing them cancels the machine's slow drifts.
            g = lat["gaps_ms"]
            u = g["upk_buddy"][: lat["restarts"]]
            paired = []
            for k in a["kinds"]:
                if k == "upk_buddy":
                    continue
                pk = g[k][: lat["restarts"]]
                paired.append("%s %+.3f ms (ratio %.2f)" % (
                    k, statistics.median([x - y for x, y in zip(u, pk)]),
                    statistics.median([x / y for x, y in zip(u, pk)])))
            lines.append("")
            lines.append("Paired by restart number (gap i of upk_buddy against gap i of the "
                         "peer, same 1.1 s window), median of upk_buddy - peer: "
                         + "; ".join(paired) + ".")
        cpu = lat.get("supervisor_cpu_ms") or {}
        if cpu:
            lines.append("")
            lines.append("Supervisor CPU time over the whole latency run (utime+stime, 10 ms "
                         "ticks): " + ", ".join("%s %s ms" % (k, fmt(v, 0) if v is not None else "?")
                                                for k, v in cpu.items()) + ".")
        after = lat.get("memory_after") or {}
        if after:
            lines.append("")
            lines.append("Private_Dirty (kB) of each supervisor at the end of the latency run, "
                         "one instance each (for the buddy: a full ring, no controller): "
                         + ", ".join("%s %d" % (k, v["Private_Dirty"]) for k, v in after.items())
                         + ".")
    lines.append("")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=100, help="supervisors per kind (memory)")
    p.add_argument("--restarts", type=int, default=60, help="restarts per kind (latency)")
    p.add_argument("--lifetime", type=int, default=1100,
                   help="child lifetime in ms for the latency run (> 1000 avoids the peers' throttles)")
    p.add_argument("--mem-rounds", type=int, default=2, help="memory rounds (A B C D each)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds between 'all running' and reading memory")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--no-build", action="store_true", help="use target/release as it is")
    p.add_argument("--buddy", help="use this upk_buddy binary (implies --no-build)")
    p.add_argument("--upkeeper", help="use this upkeeper binary for rendering")
    p.add_argument("--buddy-env", action="append", default=[], metavar="K=V",
                   help="extra environment for upk_buddy only (an observation, not a fair run)")
    p.add_argument("--label", default="", help="suffix of the results file name")
    p.add_argument("--report", metavar="JSON", help="only print the markdown of a results file")
    args = p.parse_args()
    if args.report:
        res = json.loads(Path(args.report).read_text())
        print(report(res))
        return 0
    args.kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        p.error("unknown kinds %s" % bad)
    args.buddy_env = dict(kv.split("=", 1) for kv in args.buddy_env)
    if os.geteuid() != 0:
        p.error("run as root (the peers and the buddy are compared as root)")

    # Ctrl-C, SIGTERM and SIGHUP all unwind through the finally below (SIGINT explicitly:
    # a shell's background job inherits it ignored).
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
        if not args.skip_memory:
            res["memory"] = bench.memory()
        if not args.skip_latency:
            res["latency"] = bench.latency()
        res["facts"] = machine_facts(bench)
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
    text = report(res)
    print(text)
    path = results_path("buddy", args.label)
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
