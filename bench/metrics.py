#!/usr/bin/env python3
"""Benchmark: what a scrape of the controller's metrics endpoint (docs/metrics.md) costs with
many services.

Run by hand from anywhere (python3 standard library only; root or not):

    python3 bench/metrics.py [--services 1000] [--scrapes 40] [--no-build]

Starts the release `upkeeper` (built first unless --no-build) with `MetricsListen` on a free
loopback port and N services (`sleep`, InitialState running; every tenth with a HealthCheck)
on tmpfs (/dev/shm), kills a tenth of the services once with SIGKILL so that deaths, exit
signals and restarts appear in the series, then measures, for the plain text and for gzip:

* scrape time: from sending `GET /metrics` on a new connection until the last byte is read,
  at the client, each scrape more than the endpoint's 250 ms render cache apart, so every one
  is rendered (and compressed) anew; and the same back to back (answered from the cache);
* controller CPU per scrape: the controller's CPU time (schedstat, all threads) over the
  scrapes, less the same wait without scrapes, divided by the scrapes;
* size: bytes of the answer body, lines, samples, samples per service.

Goal (issue 15): < 10 ms and < 300 KB for 1,000 services. Prints a markdown section and writes
bench/results/metrics-<date>.json. Everything it starts is killed by pid (the script is a
child subreaper) and the tmpfs directory removed, also on an error or Ctrl-C.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (REPO, BenchError, become_subreaper, fmt, host_facts, kill_pid,
                      results_path, summary, to_json, command_output)
from buddy import kill_everything

CACHE_S = 0.25  # metrics/endpoint.rs FRESH


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, gzip, timeout=30.0):
    """(seconds, body bytes, status line) of one GET /metrics on a new connection."""
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if gzip:
        req += b"Accept-Encoding: gzip\r\n"
    req += b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(req)
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
        dt = time.perf_counter() - t0
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    return dt, body, head.split(b"\r\n", 1)[0].decode()


def sched_ns(pid):
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
            total += int(f.read().split()[0])
    return total


def wait(what, pred, timeout):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        ok, last = pred()
        if ok:
            return last
        time.sleep(0.1)
    raise BenchError("%s: not within %.0f s (last: %s)" % (what, timeout, last))


def sample(text, series):
    m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
    return float(m.group(1)) if m else None


def measure(args, bins):
    root = Path(tempfile.mkdtemp(prefix="upk-metrics-", dir="/dev/shm"))
    top = None
    try:
        for d in ("conf", "run", "state"):
            (root / d).mkdir()
        port = free_port()
        ctl = root / "upkeeper.conf"
        ctl.write_text(json.dumps({
            "StateDir": str(root / "state"), "SvcConfigPath": str(root / "conf"),
            "SvcRunPath": str(root / "run"), "UpkBuddyPath": str(bins["upk_buddy"]),
            "MetricsListen": ":%d" % port}) + "\n")
        services = {}
        for i in range(args.services):
            entry = {"ExecStart": "sleep 100000", "InitialState": "running"}
            if i % 10 == 0:
                entry["HealthCheck"] = "true"
                entry["HealthInterval"] = 60
            services["bench::svc-%04d" % i] = entry
        (root / "conf" / "bench.conf").write_text(json.dumps(services) + "\n")
        log = open(root / "upkeeper.log", "wb")
        p = subprocess.Popen([str(bins["upkeeper"]), "--config", str(ctl), "run"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                             start_new_session=True)
        top = p.pid
        up_series = 'upkeeper_service_up{service="bench::svc-%04d",package="bench"}'

        def all_up():
            try:
                _, body, _ = scrape(port, False)
            except OSError as e:
                return False, str(e)
            text = body.decode()
            n = len(re.findall(r"^upkeeper_service_up\{.*\} 1$", text, re.M))
            return n == args.services, "%d up" % n

        t0 = time.monotonic()
        wait("all services up", all_up, 300)
        started_s = time.monotonic() - t0
        # A tenth killed once: deaths, exit signals, restarts in the series.
        killed = 0
        for i in range(0, args.services, 10):
            st = json.loads((root / "run" / ("bench::svc-%04d" % i) / "status").read_text())
            if st.get("pid"):
                kill_pid(st["pid"])
                killed += 1

        def restarted():
            _, body, _ = scrape(port, False)
            text = body.decode()
            n = sum(1 for v in re.findall(r"^upkeeper_service_restarts_total\{.*\} (\S+)$",
                                          text, re.M) if float(v) >= 1)
            ups = len(re.findall(r"^upkeeper_service_up\{.*\} 1$", text, re.M))
            return n == killed and ups == args.services, "%d restarted, %d up" % (n, ups)

        wait("the killed services restarted", restarted, 120)
        time.sleep(CACHE_S * 2)
        res = {"services": args.services, "killed": killed, "start_s": started_s}
        for mode in ("plain", "gzip"):
            gz = mode == "gzip"
            times, sizes = [], []
            # Idle CPU over the same wall time, for the baseline.
            c0 = sched_ns(top)
            time.sleep(args.scrapes * (CACHE_S + 0.05))
            idle_ns = sched_ns(top) - c0
            c0 = sched_ns(top)
            for _ in range(args.scrapes):
                time.sleep(CACHE_S + 0.05)
                dt, body, status = scrape(port, gz)
                if not status.endswith("200 OK"):
                    raise BenchError("scrape answered %s" % status)
                times.append(dt * 1000)
                sizes.append(len(body))
            busy_ns = sched_ns(top) - c0
            cached = []
            for _ in range(args.scrapes):
                dt, body, _ = scrape(port, gz)
                cached.append(dt * 1000)
            res[mode] = {"scrape_ms": summary(times), "cached_ms": summary(cached),
                         "bytes": summary(sizes),
                         "cpu_ms_per_scrape": max(0, busy_ns - idle_ns) / 1e6 / args.scrapes}
        _, body, _ = scrape(port, False)
        text = body.decode()
        samples = [l for l in text.splitlines() if l and not l.startswith("#")]
        res["lines"] = len(text.splitlines())
        res["samples"] = len(samples)
        res["samples_per_service"] = sum(1 for l in samples if 'service="' in l) / args.services
        res["families"] = len(re.findall(r"^# TYPE ", text, re.M))
        if shutil.which("promtool"):
            out = subprocess.run(["promtool", "check", "metrics"], input=body,
                                 capture_output=True)
            res["promtool"] = (out.stdout + out.stderr).decode().strip() or "ok"
        return res
    finally:
        kill_everything([top] if top else [], timeout=20.0)
        shutil.rmtree(root, ignore_errors=True)


def report(res, facts):
    out = ["### Metrics scrape: %d services (release build)" % res["services"], ""]
    out.append("| answer | scrape, rendered (median / p90 / max ms) | scrape, cached (median ms) "
               "| controller CPU per rendered scrape (ms) | body size |")
    out.append("| --- | --- | --- | --- | --- |")
    for mode in ("plain", "gzip"):
        r = res[mode]
        s = r["scrape_ms"]
        out.append("| %s | %s / %s / %s | %s | %s | %s KB |" % (
            "text" if mode == "plain" else "gzip (`Accept-Encoding: gzip`, as Prometheus sends)",
            fmt(s["median"], 2), fmt(s["p90"], 2), fmt(s["max"], 2),
            fmt(r["cached_ms"]["median"], 2), fmt(r["cpu_ms_per_scrape"], 2),
            fmt(r["bytes"]["median"] / 1000, 1)))
    out.append("")
    out.append("%d samples in %d families (%s per service), %d lines; %d of the services killed "
               "once before measuring; promtool check metrics: %s. %d scrapes per row, %s."
               % (res["samples"], res["families"], fmt(res["samples_per_service"], 1),
                  res["lines"], res["killed"], res.get("promtool", "not run"), facts["scrapes"],
                  facts["host"]))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=40)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    become_subreaper()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "upkeeper", "-p", "upk-buddy"],
                       cwd=REPO, check=True)
    bins = {b: REPO / "target" / "release" / b for b in ("upkeeper", "upk_buddy")}
    for b in bins.values():
        if not b.is_file():
            raise BenchError("%s is not built (run without --no-build)" % b)
    res = measure(args, bins)
    h = host_facts(["prometheus"])
    facts = {"scrapes": args.scrapes, "host": "%d cores, kernel %s" % (h["nproc"], h["kernel"]),
             "commit": command_output(["git", "rev-parse", "--short", "HEAD"])}
    text = report(res, facts)
    print(text)
    path = results_path("metrics", args.label)
    path.write_text(to_json({"facts": {**h, **facts}, "results": res, "markdown": text}) + "\n")
    print("\nwrote %s" % path.relative_to(REPO))


if __name__ == "__main__":
    try:
        main()
    except BenchError as e:
        print("metrics.py: %s" % e, file=sys.stderr)
        sys.exit(1)
