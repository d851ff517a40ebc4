"""What bench/buddy.py and bench/controller.py share: process helpers (/proc, reaping,
killing), statistics and the results files. Standard library only."""

import ctypes
import datetime
import json
import math
import os
import signal
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
# The fd s6-supervise's services write their readiness newline to (`notification-fd`).
NOTIFY_FD = 9
PR_SET_CHILD_SUBREAPER = 36


class BenchError(Exception):
    pass


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError("prctl(PR_SET_CHILD_SUBREAPER): errno %d" % ctypes.get_errno())


def proc_stat(pid):
    """(state, ppid, utime+stime ticks) of pid, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); ppid is field 4; utime/stime are fields 14/15.
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12])


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_pid(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def pct(values, q):
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary(values):
    """n, median, min, max, p90, p99 and mean of the values that are not None (None if none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"n": len(values), "median": statistics.median(values), "min": min(values),
            "max": max(values), "p90": pct(values, 90), "p99": pct(values, 99),
            "mean": statistics.fmean(values)}


def fmt(x, digits=1):
    if x is None:
        return "-"
    return ("%%.%df" % digits) % x


def to_json(value, indent=0):
    """JSON with one line per flat object or list of numbers, so the results file stays
    readable and short."""
    pad = " " * indent
    flat = lambda v: not isinstance(v, (dict, list)) or not v or all(
        not isinstance(x, (dict, list)) for x in (v.values() if isinstance(v, dict) else v))
    if flat(value):
        return json.dumps(value)
    if isinstance(value, dict):
        items = ["%s %s: %s" % (pad, json.dumps(str(k)), to_json(v, indent + 1))
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = ["%s %s" % (pad, to_json(v, indent + 1)) for v in value]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def results_path(kind, label):
    """bench/results/KIND-DATE[-LABEL][-N].json, the first that does not exist yet."""
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    stem = "%s-%s%s" % (kind, datetime.date.today().isoformat(), "-" + label if label else "")
    path = out / (stem + ".json")
    i = 2
    while path.exists():
        path = out / ("%s-%d.json" % (stem, i))
        i += 1
    return path


def command_output(argv):
    """What `argv` prints, stripped, run in the repository; None if it cannot run."""
    import subprocess
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO,
                              stdin=subprocess.DEVNULL).stdout.strip()
    except OSError:
        return None


def host_facts(packages):
    """What every results file says about the machine: date, cores, kernel, and the Debian
    version of each package named."""
    import platform
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "packages": {pkg: command_output(["dpkg-query", "-W", "-f", "${Version}", pkg])
                     for pkg in packages},
    }


def file_facts(path):
    """Size and sha256 of a binary that was measured."""
    import hashlib
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
