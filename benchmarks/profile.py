#!/usr/bin/env python3
"""
Profile the smtphooks sink under one benchmark scenario's load.

    python benchmarks/profile.py persistent                 # py-spy, 5 s of load
    python benchmarks/profile.py large --tool cprofile
    python benchmarks/profile.py small --consume pipe --hooks async
    python benchmarks/profile.py idle --idle-conns 10000    # where the memory goes

It starts benchmarks/sinks/smtphooks_sink.py (same options as run.py: full
feature path, 50 MiB size limit), sends one warm-up message, then drives it
with the scenario's client while a profiler watches the server only:

  py-spy     (default) samples the running server from outside (py-spy must
             be on PATH or next to --python); the report ranks functions and
             lines by "self" time (the frame on top of the stack) and by
             "total" time (anywhere on the stack), in % of the samples.
  cprofile   runs the server's reactor under cProfile (deterministic, but it
             slows Python calls ~2x, so it overstates call-heavy code);
             the report is pstats sorted by tottime and cumtime.

For idle, it reports tracemalloc's top allocation sites per connection
instead (the sink is started with PYTHONTRACEMALLOC and dumps on SIGUSR1).
Files go to --out (default a new /tmp/smtphooks-profile-*): raw samples /
.prof, the report, server and client logs.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # the driver: its clients and /proc probes


def parse_frames(path):
    """py-spy raw output: 'frame;frame;... count' lines, root first."""
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame):
    """'name (path/to/file.py:123)' -> 'name (file.py:123)', package-relative."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    for marker in ("site-packages/", "lib/python3", "/engine/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return name, path, line


def py_spy_report(path, top):
    stacks = parse_frames(path)
    total = sum(c for _, c in stacks) or 1
    self_line, self_func = collections.Counter(), collections.Counter()
    incl_func = collections.Counter()
    for frames, count in stacks:
        if not frames:
            continue
        name, where, line = short(frames[-1])
        self_line[f"{name} ({where}:{line})"] += count
        self_func[f"{name} ({where})"] += count
        seen = set()
        for fr in frames:
            n, w, _ = short(fr)
            key = f"{n} ({w})"
            if key not in seen:
                seen.add(key)
                incl_func[key] += count
    out = [f"{total} samples"]
    for title, counter in (("self time by function", self_func),
                           ("self time by line", self_line),
                           ("total time by function (anywhere on the stack)", incl_func)):
        out.append(f"\n## {title}\n")
        for key, count in counter.most_common(top):
            out.append(f"{100.0 * count / total:6.1f}%  {key}")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["small", "persistent", "large", "pipelined", "idle"])
    p.add_argument("--tool", choices=["py-spy", "cprofile"], default="py-spy")
    p.add_argument("--python", default=sys.executable, help="Python for the sink")
    p.add_argument("--smtphooks-from", choices=("checkout", "installed"), default="checkout")
    p.add_argument("--consume", default="async-for", choices=["async-for", "read", "pipe"])
    p.add_argument("--hooks", default="sync", choices=["sync", "async"])
    p.add_argument("--seconds", type=float, default=5.0, help="approximate length of the load")
    p.add_argument("--n", type=int, help="message count (default: sized by a pilot)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--gil", action="store_true",
                   help="py-spy: only samples that hold the GIL (Python execution; no "
                   "syscalls, no waiting in epoll)")
    p.add_argument("--idle-conns", type=int, default=2000)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out")
    a = p.parse_args()

    # Reuse the driver's option set so that its client plans apply unchanged.
    _, o = bench.parse_args(["--python", a.python, "--smtphooks-from", a.smtphooks_from,
                             "--idle-conns", str(a.idle_conns), "--target-seconds",
                             str(a.seconds)])
    o.client = "smtp-source" if os.access(o.smtp_source, os.X_OK) else "python"
    o.hook_style = a.hooks
    sc = bench.make_scenarios(o)[a.scenario]
    outdir = a.out or tempfile.mkdtemp(prefix="smtphooks-profile-", dir="/tmp")
    os.makedirs(outdir, exist_ok=True)
    o.engine_path = bench.snapshot_engine(outdir) if a.smtphooks_from == "checkout" else None
    server = "smtphooks" if a.consume == "async-for" else f"smtphooks-{a.consume}"

    n = a.n
    if n is None and a.scenario != "idle":
        n, pilot = bench.calibrate(o, sc, server, outdir)
        print(f"pilot: N={n} {pilot}", file=sys.stderr)

    argv, env = bench.server_command(server, bench.free_port(), o)
    port = int(argv[2])
    prof_path = os.path.join(outdir, "server.prof")
    if a.tool == "cprofile":
        argv += ["--profile", prof_path]
    if a.scenario == "idle":
        env["PYTHONTRACEMALLOC"] = "1"
        argv += ["--tracemalloc", os.path.join(outdir, "tracemalloc.txt")]
    slog = os.path.join(outdir, "server.log")
    clog = os.path.join(outdir, "client.log")
    with open(slog, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    spy = None
    try:
        bench.wait_for_greeting(port, proc, time.monotonic() + 30)
        bench.warm_up(port)
        if a.tool == "py-spy" and a.scenario != "idle":
            exe = shutil.which("py-spy") or os.path.join(os.path.dirname(a.python), "py-spy")
            raw = os.path.join(outdir, "samples.txt")
            spy = subprocess.Popen([exe, "record", "--pid", str(proc.pid), "--rate",
                                    str(a.rate), "--format", "raw", "--output", raw,
                                    "--nonblocking", *(["--gil"] if a.gil else [])],
                                   stdout=subprocess.DEVNULL, stderr=open(
                                       os.path.join(outdir, "py-spy.log"), "wb"))
            time.sleep(1.0)
        cpu0 = bench.cpu_seconds(bench.proc_tree(proc.pid))
        if a.scenario == "idle":
            rss0 = bench.rss_kib(bench.proc_tree(proc.pid))
            os.kill(proc.pid, signal.SIGUSR1)  # tracemalloc baseline
            time.sleep(1)

            def level(k, served):
                if k == o.idle_steps:  # all connections held: the growth since baseline
                    os.kill(proc.pid, signal.SIGUSR1)
                    time.sleep(3)

            r = bench.drive_idle(o, port, proc.pid, rss0, clog, on_level=level)
            print(f"idle: {r['figure']:.2f} KiB/conn marginal, {r['avg_kib_per_conn']:.2f} "
                  f"avg (RSS, under tracemalloc), levels {r['levels']}")
        else:
            work, elapsed, ccpu, _ = bench.drive(o, sc, port, n, clog)
            cpu = bench.cpu_seconds(bench.proc_tree(proc.pid)) - cpu0
            print(f"{a.scenario}: N={n} {work / elapsed:,.1f} {sc.unit} (under the profiler), "
                  f"server CPU {cpu:.2f}s, client CPU {ccpu:.2f}s")
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
        bench.stop_server(proc, grace=30)
    if a.tool == "py-spy" and a.scenario != "idle":
        text = py_spy_report(os.path.join(outdir, "samples.txt"), a.top)
    elif a.tool == "cprofile":
        import io
        import pstats

        buf = io.StringIO()
        st = pstats.Stats(prof_path, stream=buf)
        st.sort_stats("tottime").print_stats(a.top)
        st.sort_stats("cumulative").print_stats(a.top)
        text = buf.getvalue()
    else:
        text = open(os.path.join(outdir, "tracemalloc.txt")).read()
    with open(os.path.join(outdir, "report.txt"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"\n(files in {outdir})")


if __name__ == "__main__":
    main()
