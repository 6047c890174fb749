#!/usr/bin/env python3
"""
Benchmark smtphooks side by side with other SMTP servers.

    python benchmarks/run.py --repeat 3                 # the standard run
    python benchmarks/run.py --scenarios small,idle --repeat 5
    python benchmarks/run.py --consume all              # + smtphooks read()/pipe() sinks
    python benchmarks/run.py --with-node                # + nodemailer smtp-server
    python benchmarks/run.py --with-go                  # + emersion/go-smtp (compiled anchor)
    python benchmarks/run.py --idle-conns 10000 --scenarios idle
    python benchmarks/run.py --report DIR/results.json  # re-print a run's tables

Each server is a small "sink" in benchmarks/sinks/ (accept everything, read
and count every byte, keep nothing, print "BENCH messages=N bytes=B" on
SIGTERM). For every scenario and repeat the servers run one after another
(A B C, A B C, ...), each in a fresh process on a fresh loopback port: start,
wait for 220, one warm-up message, read its CPU time and RSS from /proc,
drive the load, read CPU time and peak RSS (VmHWM) again, SIGTERM, check the
message count it printed. CPU time and RSS are summed over the server's whole
process tree (smtphooks-workers2 forks; a wrapper may exec), re-read at every
sample. Figures are medians over repeats; ratios are
medians of per-repeat ratios (same repeat, so machine drift cancels).

Load: Postfix's smtp-source when installed (small, persistent, large), else
the bundled asyncio client (clients/load.py), which talks the same way;
clients/pipelined.py and clients/idle.py for the other two scenarios. Counts
are sized per server by a short pilot so that a run lasts about
--target-seconds (or fixed with --target-seconds 0 / --n), within bounds, and
every client run has a timeout; --budget bounds the whole run. Traffic goes
to 127.0.0.1 only. Stdlib only; the sinks need their own packages (see
--python / --smtphooks-python).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SINKS = os.path.join(HERE, "sinks")
CLIENTS = os.path.join(HERE, "clients")
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
SUBJECT = "smtphooks"
MB = 1e6


# ------------------------------------------------------------------ scenarios

class Scenario:
    def __init__(self, name, unit, higher, eff_unit, default_n, bounds, pilot_n, describe):
        self.name, self.unit, self.higher, self.eff_unit = name, unit, higher, eff_unit
        self.default_n, self.bounds, self.pilot_n, self.describe = (
            default_n, bounds, pilot_n, describe)


def make_scenarios(o):
    return {
        "small": Scenario(
            "small", "msg/s", True, "msg/CPU-s", 5000, (100, 200000), 300,
            f"1 KiB message per connection, {o.sessions} parallel sessions "
            f"(smtp-source -s {o.sessions} -m N -l 1024)"),
        "persistent": Scenario(
            "persistent", "msg/s", True, "msg/CPU-s", 10000, (100, 500000), 500,
            f"1 KiB messages, {o.sessions} parallel sessions, connections kept "
            f"(smtp-source -d -s {o.sessions} -m N -l 1024)"),
        "large": Scenario(
            "large", "MB/s", True, "MB/CPU-s", 20, (2, 2000), 2,
            f"{o.large_size / 1048576:g} MiB messages, {o.large_sessions} parallel sessions "
            f"(smtp-source -s {o.large_sessions} -m N -l {o.large_size}); MB = 10^6 B"),
        "pipelined": Scenario(
            "pipelined", "msg/s", True, "msg/CPU-s", 10000, (100, 500000), 500,
            "one connection, N 1 KiB transactions, one round trip each "
            "(clients/pipelined.py)"),
        "idle": Scenario(
            "idle", "KiB/conn", False, None, o.idle_conns, (1, 100000), None,
            f"{o.idle_conns} connections send EHLO and sit idle, opened in {o.idle_steps} "
            f"batches (<= {o.idle_concurrency} handshakes in flight); figure = marginal "
            "server RSS per connection over the last batch (clients/idle.py)"),
    }


#: The targets of the performance issue: (peer, ratio): smtphooks / peer must
#: be >= ratio (<= for idle, where lower is better).
TARGETS = {
    "small": ("twisted-mail", 1.2),
    "persistent": ("node-smtp-server", 1.1),
    "large": ("node-smtp-server", 1.2),
    "pipelined": ("node-smtp-server", 1.1),
    "idle": ("twisted-mail", 1.0),
}


# ------------------------------------------------------------------ servers

VARIANTS = {
    # name: extra arguments of sinks/smtphooks_sink.py
    "smtphooks": [],
    "smtphooks-read": ["--consume", "read"],
    "smtphooks-pipe": ["--consume", "pipe"],
    "smtphooks-async": ["--hooks", "async"],
    # Twisted's own EPollReactor instead of smtphooks.reactor's (the sinks' default)
    "smtphooks-default-reactor": ["--default-reactor"],
    # two forked processes sharing one listening socket (docs/operations.md)
    "smtphooks-workers2": ["--workers", "2", "--reuse-port"],
}
PEERS = ["aiosmtpd", "twisted-mail", "node-smtp-server", "go-smtp", "smtp-sink"]

#: go-smtp: Debian's golang-go, golang-github-emersion-go-smtp-dev and
#: golang-github-emersion-go-sasl-dev (a GOPATH tree; no modules, no network).
GO_PACKAGES = ("golang-go golang-github-emersion-go-smtp-dev "
               "golang-github-emersion-go-sasl-dev")


class Unavailable(Exception):
    pass


def is_subject(name):
    """smtphooks sinks: the named variants, and smtphooks+PATCH+... (micro/patches.py)."""
    return name in VARIANTS or name.startswith(SUBJECT + "+")


def patch_names():
    """The names in micro/patches.py's VARIANTS (read, not imported: that needs smtphooks)."""
    import re

    with open(os.path.join(HERE, "micro", "patches.py")) as f:
        text = f.read()
    block = text[text.index("VARIANTS = {"):]
    return set(re.findall(r'^    "([a-z-]+)":', block[:block.index("}")], re.MULTILINE))


def subject_args(name):
    if name in VARIANTS:
        return VARIANTS[name]
    return ["--patch", ",".join(name.split("+")[1:])]


def server_command(name, port, o):
    """(argv, env) that start server NAME on 127.0.0.1:PORT."""
    env = dict(os.environ)
    if is_subject(name):
        if o.engine_path:
            env["PYTHONPATH"] = o.engine_path + os.pathsep + env.get("PYTHONPATH", "")
        argv = [o.smtphooks_python, os.path.join(SINKS, "smtphooks_sink.py"), str(port),
                "--size", str(o.size_limit), *subject_args(name)]
        if o.hook_style == "async" and "--hooks" not in argv:
            argv += ["--hooks", "async"]
        return argv, env
    if name == "aiosmtpd":
        return [o.python, os.path.join(SINKS, "aiosmtpd_sink.py"), str(port)], env
    if name == "twisted-mail":
        return [o.python, os.path.join(SINKS, "twisted_mail_sink.py"), str(port)], env
    if name == "node-smtp-server":
        if o.node_modules:
            env["BENCH_NODE_MODULES"] = o.node_modules
        return [o.node, os.path.join(SINKS, "node_sink.js"), str(port)], env
    if name == "go-smtp":
        return [build_go_sink(o), str(port)], env
    if name == "smtp-sink":
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [o.smtp_sink, *user, "-m", "16384", f"{HOST}:{port}", "511"], env
    raise Unavailable(f"unknown server {name!r}")


def build_go_sink(o):
    """The go-smtp sink's binary, built on first use into o.go_cache.

    GOPATH mode (GO111MODULE=off, GOPATH=o.gopath, default /usr/share/gocode
    where Debian's -dev packages put the sources), CGO_ENABLED=0, no module
    proxy. The binary's name carries a hash of the source, `go version` and
    the package version, so an edit or an upgrade rebuilds; the build cache
    lives beside it. Raises Unavailable when Go or the packages are missing.
    """
    if getattr(o, "go_binary", None):
        return o.go_binary
    hint = (f"needs Go and emersion/go-smtp + go-sasl in {o.gopath}/src (Debian: apt-get "
            f"install {GO_PACKAGES}; or set BENCH_GOPATH)")
    go = shutil.which("go")
    if not go:
        raise Unavailable("go not found; " + hint)
    missing = [m for m in ("go-smtp", "go-sasl")
               if not os.path.isdir(os.path.join(o.gopath, "src", "github.com", "emersion", m))]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not found; " + hint)
    import hashlib

    src = os.path.join(SINKS, "go_smtp_sink.go")
    env = dict(os.environ, GO111MODULE="off", GOPATH=o.gopath, GOFLAGS="", CGO_ENABLED="0",
               GOPROXY="off", GOCACHE=os.path.join(o.go_cache, "gocache"))
    try:
        version = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60,
                                 env=env, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"go version failed: {e}") from None
    pkg = os.environ.get("BENCH_GO_SMTP_VERSION")
    if not pkg:
        try:
            pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}",
                                  "golang-github-emersion-go-smtp-dev"], capture_output=True,
                                 text=True, timeout=30, check=False).stdout.strip()
        except OSError:
            pkg = ""
        pkg = pkg.rsplit("-", 1)[0] if "-" in pkg else pkg  # 0.12.1-1 -> 0.12.1
    pkg = pkg or "unknown"
    with open(src, "rb") as f:
        key = hashlib.sha256(f.read() + f"\0{version}\0{pkg} {o.gopath}".encode())
    binary = os.path.join(o.go_cache, "go-smtp-sink-" + key.hexdigest()[:16])
    if not os.access(binary, os.X_OK):
        os.makedirs(o.go_cache, exist_ok=True)
        tmp = f"{binary}.tmp.{os.getpid()}"
        print(f"building the go-smtp sink ({version}, go-smtp {pkg}) -> {binary}",
              file=sys.stderr, flush=True)
        try:
            r = subprocess.run([go, "build", "-o", tmp, "-ldflags",
                                f"-X main.goSMTPVersion={pkg}", src], capture_output=True,
                               text=True, timeout=600, env=env, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise Unavailable(f"go build failed: {e}") from None
        if r.returncode:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            last = "; ".join((r.stderr or r.stdout).strip().splitlines()[-5:])
            raise Unavailable(f"go build of {src} failed (GO111MODULE=off GOPATH={o.gopath}): "
                              f"{last}")
        os.replace(tmp, binary)
    o.go_binary = binary
    return binary


def check_available(name, o):
    """Raise Unavailable with a reason when NAME cannot run here."""
    def imports(python, module, env=None):
        try:
            r = subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                               text=True, timeout=60, env=env, check=False)
        except OSError as e:
            raise Unavailable(f"{python}: {e}") from None
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise Unavailable(f"{python} cannot import {module}: {last}")

    if is_subject(name):
        _, env = server_command(name, 0, o)
        imports(o.smtphooks_python, "smtphooks, twisted", env)
        if name not in VARIANTS:
            known = patch_names()
            unknown = [p for p in name.split("+")[1:] if p not in known]
            if unknown:
                raise Unavailable(f"unknown patch(es) {unknown}; see micro/patches.py")
    elif name == "aiosmtpd":
        imports(o.python, "aiosmtpd.smtp")
    elif name == "twisted-mail":
        imports(o.python, "twisted.mail.smtp")
    elif name == "node-smtp-server":
        if not o.node:
            raise Unavailable("node not found")
        where = [p for p in [o.node_modules, *os.environ.get("NODE_PATH", "").split(":")] if p]
        if not any(os.path.isdir(os.path.join(p, "smtp-server")) for p in where):
            raise Unavailable("smtp-server not found: npm install --prefix /tmp/peers "
                              "smtp-server@3 and set BENCH_NODE_MODULES=/tmp/peers/node_modules")
    elif name == "go-smtp":
        build_go_sink(o)
    elif name == "smtp-sink":
        if not (o.smtp_sink and os.access(o.smtp_sink, os.X_OK)):
            raise Unavailable("smtp-sink not found (Debian package postfix)")
    else:
        raise Unavailable(f"unknown server {name!r}; known: {', '.join([*VARIANTS, *PEERS])}")


# ------------------------------------------------------------------ /proc

def _children():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            kids.setdefault(int(s[s.rfind(")") + 2:].split()[1]), []).append(int(d))
    return kids


def proc_tree(pid):
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids, kernel_only=False):
    """utime + stime (+ waited-for children) of PIDS, from /proc/PID/stat;
    with kernel_only, stime + cstime alone."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        # fields[11:15] = utime stime cutime cstime (stat fields 14-17)
        total += int(fields[12]) + int(fields[14]) if kernel_only else sum(
            int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KIB
        except OSError:
            pass
    return total


def hwm_kib(pids):
    """Peak RSS (VmHWM) of PIDS, from /proc/PID/status."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


# ------------------------------------------------------------------ plumbing

def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def read_reply(f):
    while True:
        line = f.readline(4096)
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return line[:3].decode("ascii", "replace")


def wait_for_greeting(port, proc, deadline):
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                code = read_reply(s.makefile("rb"))
                s.sendall(b"QUIT\r\n")
                if code == "220":
                    return
                last = f"greeting {code}"
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"no 220 greeting on port {port}: {last}")


def warm_up(port):
    """One whole transaction, so first-use costs are not billed to the run."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        f = s.makefile("rb")
        for send, code in ((b"", "220"), (b"EHLO warmup.bench.test\r\n", "250"),
                           (b"MAIL FROM:<sender@bench.test>\r\n", "250"),
                           (b"RCPT TO:<rcpt@bench.test>\r\n", "250"), (b"DATA\r\n", "354"),
                           (b"Subject: warm-up\r\n\r\n" + b"W" * 78 + b"\r\n.\r\n", "250"),
                           (b"QUIT\r\n", "221")):
            if send:
                s.sendall(send)
            got = read_reply(f)
            if got != code:
                raise RuntimeError(f"warm-up: after {send[:20]!r} expected {code}, got {got}")


def start_server(name, port, o, log_path):
    argv, env = server_command(name, port, o)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)


def stop_server(proc, grace=10.0):
    """SIGTERM the server's process group, SIGKILL it after GRACE seconds."""
    def signal_group(sig):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait(5)
            return "killed"
    signal_group(signal.SIGKILL)  # anything it left behind in its group
    return "stopped"


def server_totals(log_path):
    adapter, totals = None, None
    try:
        with open(log_path, "rb") as f:
            for raw in f:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("bench-adapter ") and adapter is None:
                    adapter = line[len("bench-adapter "):]
                elif line.startswith("BENCH "):
                    totals = dict(kv.split("=", 1) for kv in line[6:].split() if "=" in kv)
    except OSError:
        pass
    return adapter, totals


def run_client(argv, timeout, log_path):
    """Run a load client; (rc, wall s, client CPU s, timed out, last JSON line)."""
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out = {}

        def reap():
            _, status, usage = os.wait4(proc.pid, 0)
            out.update(t1=time.monotonic(), status=status,
                       cpu=usage.ru_utime + usage.ru_stime)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        timed_out = waiter.is_alive()
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            waiter.join(10)
        proc.returncode = os.waitstatus_to_exitcode(out["status"]) if "status" in out else -9
    summary = None
    with open(log_path, "rb") as f:
        for line in reversed(f.read().decode("utf-8", "replace").splitlines()):
            if line.startswith("{"):
                try:
                    summary = json.loads(line)
                except ValueError:
                    pass
                break
    wall = out.get("t1", time.monotonic()) - t0
    return proc.returncode, wall, out.get("cpu", 0.0), timed_out, summary


def client_plan(sc, o, port, n):
    """(argv, work units) of one throughput drive."""
    py = sys.executable
    if sc.name == "pipelined":
        return [py, os.path.join(CLIENTS, "pipelined.py"), "--port", str(port),
                "--messages", str(n), "--timeout", "30"], n
    sessions = o.large_sessions if sc.name == "large" else o.sessions
    size = o.large_size if sc.name == "large" else 1024
    work = n * size / MB if sc.name == "large" else n
    if o.client == "smtp-source":
        extra = ["-d"] if sc.name == "persistent" else []
        return [o.smtp_source, *extra, "-s", str(sessions), "-m", str(n), "-l", str(size),
                "-M", "bench.test", "-f", "sender@bench.test", "-t", "rcpt@bench.test",
                f"{HOST}:{port}"], work
    extra = ["--persistent"] if sc.name == "persistent" else []
    return [py, os.path.join(CLIENTS, "load.py"), "--port", str(port), "--sessions",
            str(sessions), "--messages", str(n), "--size", str(size),
            "--deadline", str(o.client_timeout), *extra], work


# ------------------------------------------------------------------ runs

def drive(o, sc, port, n, log_path):
    argv, work = client_plan(sc, o, port, n)
    rc, wall, ccpu, timed_out, summary = run_client(argv, o.client_timeout, log_path)
    if timed_out:
        raise RuntimeError(f"client timed out after {o.client_timeout:g}s")
    if rc != 0:
        raise RuntimeError(f"client exited {rc} (see {log_path})")
    # The Python clients time the transfer only (no interpreter start-up).
    elapsed = summary["elapsed"] if summary and "elapsed" in summary else wall
    return work, elapsed, ccpu, summary


def calibrate(o, sc, server, logs):
    """Pilot: grow N until one drive lasts o.pilot_seconds; size N for o.target_seconds."""
    lo, hi = sc.bounds
    n, pilot = sc.pilot_n, []
    port = free_port()
    slog = os.path.join(logs, f"{sc.name}-pilot-{server}.server.log")
    clog = os.path.join(logs, f"{sc.name}-pilot-{server}.client.log")
    proc = start_server(server, port, o, slog)
    try:
        wait_for_greeting(port, proc, time.monotonic() + o.start_timeout)
        warm_up(port)
        for _ in range(6):
            _, elapsed, _, _ = drive(o, sc, port, n, clog)
            pilot.append((n, round(elapsed, 3)))
            if elapsed >= o.pilot_seconds or n >= hi:
                break
            n = min(hi, int(n * min(10.0, max(2.0, 1.3 * o.pilot_seconds / max(elapsed, 1e-3)))))
    finally:
        stop_server(proc)
    n_last, elapsed = pilot[-1]
    target = n_last / max(elapsed, 1e-3) * o.target_seconds
    if target >= 100:
        scale = 10 ** (len(str(int(target))) - 2)
        target = round(target / scale) * scale
    return max(lo, min(hi, int(target))), pilot


def settled_rss(root, settle):
    """Median RSS of ROOT's process tree (walked again at every sample)."""
    time.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(rss_kib(proc_tree(root)))
        time.sleep(0.1)
    return statistics.median(samples)


def drive_idle(o, port, root, rss0, log_path, on_level=None):
    """The idle scenario: RSS at every batch level; the figure is the last slope."""
    argv = [sys.executable, os.path.join(CLIENTS, "idle.py"), "--port", str(port),
            "--conns", str(o.idle_conns), "--concurrency", str(o.idle_concurrency),
            "--steps", str(o.idle_steps), "--deadline", str(o.client_timeout),
            "--hold", "30"]
    levels = [(0, rss0)]
    with open(log_path, "ab") as log:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True)
        deadline = time.monotonic() + o.client_timeout + 60
        pending, summary, served = b"", None, 0
        try:
            while summary is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("idle client did not finish in time")
                ready, _, _ = select.select([proc.stdout], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError(f"idle client ended early (see {log_path})")
                log.write(chunk)
                pending += chunk
                while b"\n" in pending and summary is None:
                    raw, pending = pending.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith("LEVEL "):
                        kv = dict(x.split("=", 1) for x in line.split()[2:])
                        served = int(kv["served"])
                        levels.append((served, settled_rss(root, o.idle_settle)))
                        if on_level is not None:
                            on_level(int(line.split()[1]), served)
                        proc.stdin.write(b"next\n")
                        proc.stdin.flush()
                    elif line.startswith("{"):
                        summary = json.loads(line)
        finally:
            if proc.poll() is None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
    if not served:
        raise RuntimeError("idle: no connection served")
    (n1, r1), (n2, r2) = levels[-2], levels[-1]
    figure = (r2 - r1) / (n2 - n1) if n2 > n1 else (r2 - rss0) / n2
    return {"figure": figure, "avg_kib_per_conn": (r2 - rss0) / n2, "served": served,
            "levels": levels, "alive": summary.get("alive"), "client": summary}


def one_run(o, sc, server, n, rep, logs):
    tag = f"{sc.name}-r{rep}-{server}"
    slog = os.path.join(logs, tag + ".server.log")
    clog = os.path.join(logs, tag + ".client.log")
    rec = {"scenario": sc.name, "repeat": rep, "server": server, "n": n, "ok": False,
           "loadavg": open("/proc/loadavg").read().split()[0]}
    port = free_port()
    proc = start_server(server, port, o, slog)
    try:
        wait_for_greeting(port, proc, time.monotonic() + o.start_timeout)
        warm_up(port)
        time.sleep(0.2)
        pids = proc_tree(proc.pid)
        cpu0, rss0 = cpu_seconds(pids), rss_kib(pids)
        sys0 = cpu_seconds(pids, kernel_only=True)
        rec["rss_base_kib"] = rss0
        if sc.name == "idle":
            rec.update(drive_idle(o, port, proc.pid, rss0, clog))
            expected = 0
            if rec["served"] < n:
                rec["note"] = f"served {rec['served']}/{n}"
            elif rec.get("alive") is not None and rec["alive"] < rec["served"]:
                rec["note"] = f"{rec['served'] - rec['alive']} idle sessions closed by server"
        else:
            work, elapsed, ccpu, summary = drive(o, sc, port, n, clog)
            rec.update(work=work, elapsed=elapsed, client_cpu=ccpu, figure=work / elapsed)
            if summary and "pipelining" in summary:
                rec["pipelining"] = summary["pipelining"]
            expected = n
        pids = proc_tree(proc.pid)
        rec["server_cpu"] = cpu_seconds(pids) - cpu0
        rec["server_sys"] = cpu_seconds(pids, kernel_only=True) - sys0
        if rec["server_cpu"] > 0:
            rec["sys_share"] = 100.0 * rec["server_sys"] / rec["server_cpu"]
        rec["rss_peak_kib"] = hwm_kib(pids)
        if sc.name != "idle" and rec["server_cpu"] > 0:
            rec["efficiency"] = rec["work"] / rec["server_cpu"]
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001 - recorded; the table shows it
        rec["error"] = f"{type(e).__name__}: {e}"
        expected = None
    finally:
        rec["stop"] = stop_server(proc)
    rec["adapter"], totals = server_totals(slog)
    if totals and "messages" in totals:
        rec["server_messages"] = int(totals["messages"])
        rec["server_bytes"] = int(totals.get("bytes", -1))
        if rec["ok"] and expected is not None and rec["server_messages"] != expected + 1:
            rec["ok"] = False
            rec["error"] = (f"server counted {rec['server_messages']} messages, "
                            f"expected {expected + 1} (incl. warm-up)")
    elif rec["ok"] and server != "smtp-sink":
        rec["note"] = (rec.get("note", "") + " no BENCH totals line").strip()
    return rec


# ------------------------------------------------------------------ report

def fmt(x, nd=None):
    if x is None:
        return "-"
    if nd is None:
        nd = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{nd}f}"


def figures(results, scenario, server, key="figure"):
    return {r["repeat"]: r[key] for r in results
            if r["scenario"] == scenario and r["server"] == server and r.get("ok")
            and r.get(key) is not None}


def median_of(results, scenario, server, key="figure"):
    v = figures(results, scenario, server, key)
    return statistics.median(v.values()) if v else None


def ratio(results, scenario, a, b, key="figure"):
    """Median over repeats of a/b, both from the same repeat."""
    fa, fb = figures(results, scenario, a, key), figures(results, scenario, b, key)
    rs = [fa[k] / fb[k] for k in fa if fb.get(k)]
    return statistics.median(rs) if rs else None


def report(meta):
    results, servers = meta["results"], meta["servers"]
    scs = make_scenarios(argparse.Namespace(**meta["sizes"]))
    scenarios = [scs[n] for n in meta["scenarios"]]
    subjects = [s for s in servers if is_subject(s)]
    main_subject = SUBJECT if SUBJECT in servers else (subjects[0] if subjects else None)
    peers = [s for s in servers if not is_subject(s)]
    out = []

    # 1. The summary: medians and smtphooks / peer ratios per scenario.
    out.append("## Summary: medians, and smtphooks ÷ peer (median of same-repeat ratios)\n")
    head = ["scenario", "unit", *servers]
    if main_subject:
        head += [f"{main_subject} ÷ {p}" for p in peers]
        head += ["issue target"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|")
    for sc in scenarios:
        row = [sc.name, sc.unit + (" ↑" if sc.higher else " ↓")]
        row += [fmt(median_of(results, sc.name, s)) for s in servers]
        if main_subject:
            row += [fmt(ratio(results, sc.name, main_subject, p), 2) for p in peers]
            peer, want = TARGETS.get(sc.name, (None, None))
            if peer:
                got = ratio(results, sc.name, main_subject, peer)
                cmp = "≥" if sc.higher else "≤"
                if got is None:
                    verdict = f"{cmp} {want:g}× {peer} (not run)"
                else:
                    met = got >= want if sc.higher else got <= want
                    verdict = f"{cmp} {want:g}× {peer}: {'met' if met else 'NOT met'}"
                row.append(verdict)
            else:
                row.append("-")
        out.append("| " + " | ".join(row) + " |")
    if main_subject:
        out.append("\nSame, in work per server CPU-second (fairer on 2 cores, where the load "
                   "generator competes for CPU):\n")
        head = ["scenario", "unit", *servers, *[f"{main_subject} ÷ {p}" for p in peers]]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---", "---"] + ["--:"] * (len(head) - 2)) + "|")
        for sc in scenarios:
            if not sc.eff_unit:
                continue
            row = [sc.name, sc.eff_unit]
            row += [fmt(median_of(results, sc.name, s, "efficiency")) for s in servers]
            row += [fmt(ratio(results, sc.name, main_subject, p, "efficiency"), 2)
                    for p in peers]
            out.append("| " + " | ".join(row) + " |")

    # 2. smtphooks variants against the main sink.
    others = [s for s in subjects if s != main_subject]
    if main_subject and others:
        out.append(f"\n## smtphooks variants ÷ {main_subject} (on_data: async for; "
                   "same-repeat ratios; > 1 is faster, for idle < 1 is leaner)\n")
        head = ["scenario", *[f"{s}" for s in others]]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["--:"] * len(others)) + "|")
        for sc in scenarios:
            out.append("| " + " | ".join(
                [sc.name] + [fmt(ratio(results, sc.name, s, main_subject), 2) for s in others])
                + " |")

    # 3. Details per scenario.
    for sc in scenarios:
        runs = [r for r in results if r["scenario"] == sc.name]
        if not runs:
            continue
        out.append(f"\n### {sc.name} — {sc.unit} ({'higher' if sc.higher else 'lower'} "
                   f"is better)\n\n{sc.describe}.\n")
        if sc.name == "idle":
            head = ["server", sc.unit, "min–max", "avg KiB/conn", "served", "base RSS MiB",
                    "peak RSS MiB", "srv CPU s", "ok"]
        else:
            head = ["server", "N", sc.unit, "min–max", "srv CPU s", "of it kernel", sc.eff_unit,
                    "client CPU s", "peak RSS MiB", "ok"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] + ["--:"] * (len(head) - 1)) + "|")
        for s in servers:
            mine = [r for r in runs if r["server"] == s]
            if not mine:
                continue
            fig = figures(results, sc.name, s)
            spread = f"{fmt(min(fig.values()))}–{fmt(max(fig.values()))}" if fig else "-"
            peak = median_of(results, sc.name, s, "rss_peak_kib")
            ok = f"{sum(1 for r in mine if r.get('ok'))}/{len(mine)}"
            if sc.name == "idle":
                base = median_of(results, sc.name, s, "rss_base_kib")
                served = min((r.get("served", 0) for r in mine if r.get("ok")), default=None)
                row = [s, fmt(median_of(results, sc.name, s)), spread,
                       fmt(median_of(results, sc.name, s, "avg_kib_per_conn")),
                       str(served) if served is not None else "-",
                       fmt(base / 1024 if base else None, 1),
                       fmt(peak / 1024 if peak else None, 1),
                       fmt(median_of(results, sc.name, s, "server_cpu"), 2), ok]
            else:
                ns = sorted({r["n"] for r in mine})
                share = median_of(results, sc.name, s, "sys_share")
                row = [s, "/".join(f"{n:,}" for n in ns), fmt(median_of(results, sc.name, s)),
                       spread, fmt(median_of(results, sc.name, s, "server_cpu"), 2),
                       f"{share:.0f}%" if share is not None else "-",
                       fmt(median_of(results, sc.name, s, "efficiency")),
                       fmt(median_of(results, sc.name, s, "client_cpu"), 2),
                       fmt(peak / 1024 if peak else None, 1), ok]
            out.append("| " + " | ".join(row) + " |")
        notes = [f"- {r['server']} r{r['repeat']}: {r.get('error') or r.get('note')}"
                 for r in runs if r.get("error") or r.get("note")]
        adv = {r["server"]: r["pipelining"] for r in runs if "pipelining" in r}
        if adv:
            notes.append("- PIPELINING advertised: " + ", ".join(
                f"{s} {'yes' if v else 'no'}" for s, v in adv.items()))
        if notes:
            out.append("\n" + "\n".join(notes))

    if meta.get("smoke"):
        out.append("\n**Smoke run**: tiny counts, one repeat; the figures mean nothing.")
    m = meta["machine"]
    out.append(f"\nMachine: {m.get('nproc')} CPUs ({m.get('cpu')}), Linux {m.get('kernel')}, "
               f"load average {m.get('loadavg_start')} → {m.get('loadavg_end')}. "
               f"Client: {meta['client']}. Repeats: {meta['repeat']}. "
               f"Engine: {meta.get('engine')}.")
    adapters = meta.get("adapters", {})
    if adapters:
        out.append("Servers: " + "; ".join(f"{a}" for a in adapters.values()) + ".")
    out.append("Ratios are medians over repeats of (smtphooks ÷ peer) within one repeat. "
               "srv CPU s = server CPU time (user+sys, /proc/PID/stat) during the drive, "
               "'of it kernel' its system-time share; "
               "peak RSS = VmHWM over the server's life; CPU and RSS figures are sums over "
               "all processes of a server (its process tree).")
    return "\n".join(out)


# ------------------------------------------------------------------ main

def machine_info():
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": sys.version.split()[0],
            "loadavg_start": " ".join(open("/proc/loadavg").read().split()[:3])}


def git_state():
    """HEAD and whether the engine differs from it (read-only git commands)."""
    def git(*args):
        try:
            r = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args],
                               capture_output=True, text=True, timeout=10, check=False)
            return r.stdout.strip() if r.returncode == 0 else None
        except OSError:
            return None
    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "no git"
    dirty = git("status", "--porcelain", "--", "smtphooks")
    return f"git {head}{' + uncommitted changes in smtphooks/' if dirty else ''}"


def snapshot_engine(outdir):
    """Copy the checkout's smtphooks/ so that every run measures the same code."""
    src = os.path.join(ROOT, "smtphooks")
    dst = os.path.join(outdir, "engine")
    shutil.copytree(src, os.path.join(dst, "smtphooks"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="small,persistent,large,pipelined,idle")
    p.add_argument("--servers", help="comma list (default: smtphooks,aiosmtpd,twisted-mail "
                   "plus what --consume/--with-* add); known: " + ", ".join([*VARIANTS, *PEERS])
                   + ", and smtphooks+PATCH[+PATCH...] with the candidate changes of "
                   "micro/patches.py")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--consume", default="async-for",
                   help="smtphooks on_data styles to run: async-for (always), read, pipe, or "
                   "'all' (adds the smtphooks-read and smtphooks-pipe sinks)")
    p.add_argument("--async-hooks-variant", action="store_true",
                   help="also run smtphooks-async: envelope hooks as async def")
    p.add_argument("--hook-style", choices=("sync", "async"), default="sync",
                   help="envelope hooks of the main smtphooks sink (default: plain functions)")
    p.add_argument("--size-limit", type=int, default=50 * 1024 * 1024,
                   help="smtphooks size option (enforced, advertised); default 50 MiB")
    p.add_argument("--with-node", action="store_true",
                   help="add nodemailer smtp-server (needs node and BENCH_NODE_MODULES)")
    p.add_argument("--with-go", action="store_true",
                   help="add emersion/go-smtp, the compiled anchor (built on first use; "
                   "needs Debian's " + GO_PACKAGES + ")")
    p.add_argument("--with-smtp-sink", action="store_true",
                   help="add Postfix smtp-sink, the C reference")
    p.add_argument("--python", default=sys.executable,
                   help="Python for the aiosmtpd and twisted.mail sinks (default: this one)")
    p.add_argument("--smtphooks-python", help="Python for the smtphooks sink (default: --python)")
    p.add_argument("--smtphooks-from", choices=("checkout", "installed"), default="checkout",
                   help="checkout: a snapshot of this checkout's smtphooks/ taken at start "
                   "(default); installed: whatever that Python imports")
    p.add_argument("--client", choices=("auto", "smtp-source", "python"), default="auto",
                   help="load generator for small/persistent/large (auto: smtp-source if found)")
    p.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    p.add_argument("--smtp-sink", default=shutil.which("smtp-sink") or "/usr/sbin/smtp-sink")
    p.add_argument("--out", help="results directory (default: a new /tmp/smtphooks-bench-*)")
    p.add_argument("--report", metavar="RESULTS_JSON", help="re-print the tables of a run")
    p.add_argument("--peer-scenarios", metavar="LIST",
                   help="run the peers only in these scenarios (default: all)")
    p.add_argument("--smoke", action="store_true",
                   help="for CI: tiny counts, one repeat, peers only in 'small', servers "
                   "that cannot run are skipped; proves the benchmark runs, measures nothing")
    g = p.add_argument_group("sizes and bounds")
    g.add_argument("--target-seconds", type=float, default=5.0,
                   help="size N per server so one drive lasts about this long (0: fixed N)")
    g.add_argument("--pilot-seconds", type=float, default=0.8)
    g.add_argument("--n", action="append", default=[], metavar="[SERVER:]SCENARIO=N",
                   help="fix a count (repeatable)")
    g.add_argument("--sessions", type=int, default=20)
    g.add_argument("--large-size", type=int, default=10 * 1048576)
    g.add_argument("--large-sessions", type=int, default=2)
    g.add_argument("--idle-conns", type=int, default=2000)
    g.add_argument("--idle-concurrency", type=int, default=100)
    g.add_argument("--idle-steps", type=int, default=2)
    g.add_argument("--idle-settle", type=float, default=1.0)
    g.add_argument("--client-timeout", type=float, default=120.0, help="per drive, s")
    g.add_argument("--start-timeout", type=float, default=30.0)
    g.add_argument("--cooldown", type=float, default=0.5, help="pause between runs, s")
    g.add_argument("--budget", type=float, default=3600.0,
                   help="stop starting runs after this many seconds")
    o = p.parse_args(argv)
    if o.smoke:
        o.repeat, o.target_seconds, o.cooldown, o.idle_settle = 1, 0, 0, 0.05
        o.idle_conns, o.large_size, o.client_timeout = 40, 1048576, 60
        o.n = [*o.n, "small=20", "persistent=40", "large=2", "pipelined=40"]
        o.peer_scenarios = o.peer_scenarios or "small"
    o.smtphooks_python = o.smtphooks_python or o.python
    o.node = shutil.which("node")
    o.node_modules = os.environ.get("BENCH_NODE_MODULES")
    o.gopath = os.environ.get("BENCH_GOPATH") or "/usr/share/gocode"
    o.go_cache = os.environ.get("BENCH_GO_CACHE") or f"/tmp/smtphooks-bench-go-{os.getuid()}"
    o.go_binary = None
    o.fixed = {}
    for spec in o.n:
        try:
            key, n = spec.split("=")
            server, _, scen = key.rpartition(":")
            o.fixed[(server or None, scen)] = int(n)
        except ValueError:
            p.error(f"--n wants [SERVER:]SCENARIO=N, got {spec!r}")
    return p, o


def main(argv=None):
    p, o = parse_args(argv)
    if o.report:
        with open(o.report) as f:
            print(report(json.load(f)))
        return 0
    scs = make_scenarios(o)
    names = [n for n in o.scenarios.split(",") if n]
    bad = [n for n in names if n not in scs]
    if bad:
        p.error(f"unknown scenario(s) {bad}; have {list(scs)}")
    if o.servers:
        servers = o.servers.split(",")
    else:
        servers = [SUBJECT, "aiosmtpd", "twisted-mail"]
        styles = ["read", "pipe"] if o.consume == "all" else o.consume.split(",")
        servers[1:1] = [f"smtphooks-{s}" for s in styles if f"smtphooks-{s}" in VARIANTS]
        if o.async_hooks_variant:
            servers.insert(1, "smtphooks-async")
        if o.with_node:
            servers.append("node-smtp-server")
        if o.with_go:
            servers.append("go-smtp")
        if o.with_smtp_sink:
            servers.append("smtp-sink")
    if o.client == "auto":
        o.client = "smtp-source" if os.access(o.smtp_source, os.X_OK) else "python"
    elif o.client == "smtp-source" and not os.access(o.smtp_source, os.X_OK):
        p.error(f"smtp-source not found at {o.smtp_source} (Debian package postfix)")

    outdir = o.out or tempfile.mkdtemp(prefix="smtphooks-bench-", dir="/tmp")
    logs = os.path.join(outdir, "logs")
    os.makedirs(logs, exist_ok=True)
    o.engine_path = None
    engine = "installed smtphooks of " + o.smtphooks_python
    if o.smtphooks_from == "checkout" and any(is_subject(s) for s in servers):
        o.engine_path = snapshot_engine(outdir)
        engine = f"checkout snapshot ({git_state()})"

    available = []
    for s in servers:
        try:
            check_available(s, o)
            available.append(s)
        except Unavailable as e:
            if not o.smoke and is_subject(s):
                p.error(f"{s}: {e}")
            print(f"skipping {s}: {e}", file=sys.stderr)
    servers = available
    if not any(is_subject(s) for s in servers):
        p.error("no smtphooks sink can run")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = o.idle_conns + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else want, hard))
    if "idle" in names and resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
        print(f"warning: open-file limit below {want}; idle runs may fail", file=sys.stderr)

    meta = {"argv": sys.argv if argv is None else argv, "machine": machine_info(),
            "servers": servers, "scenarios": names, "repeat": o.repeat, "client": o.client,
            "engine": engine, "smoke": o.smoke,
            "sizes": {k: getattr(o, k) for k in ("sessions", "large_size", "large_sessions",
                                                 "idle_conns", "idle_steps",
                                                 "idle_concurrency")},
            "calibration": {}, "adapters": {}, "results": []}
    path = os.path.join(outdir, "results.json")
    print(f"results -> {outdir}  (servers: {', '.join(servers)}; load: {o.client})",
          file=sys.stderr, flush=True)
    t_start = time.monotonic()

    def over_budget():
        return time.monotonic() - t_start > o.budget

    def save():
        with open(path, "w") as f:
            json.dump(meta, f, indent=1)

    failures = 0
    for name in names:
        sc = scs[name]
        counts = {}
        for s in servers:
            if not is_subject(s) and o.peer_scenarios and name not in \
                    o.peer_scenarios.split(","):
                continue
            n = o.fixed.get((s, name), o.fixed.get((None, name)))
            if n is None and name == "idle":
                n = o.idle_conns
            if n is None and o.target_seconds <= 0:
                n = sc.default_n
            if n is None and not over_budget():
                try:
                    n, pilot = calibrate(o, sc, s, logs)
                except Exception as e:  # noqa: BLE001 - fall back to the fixed count
                    n, pilot = sc.default_n, f"failed: {e}"
                meta["calibration"].setdefault(name, {})[s] = {"n": n, "pilot": pilot}
                print(f"[{name} pilot] {s:18s} N={n:,} {pilot}", file=sys.stderr, flush=True)
                time.sleep(o.cooldown)
            counts[s] = n
        for rep in range(1, o.repeat + 1):
            for s in servers:
                if not is_subject(s) and o.peer_scenarios and name not in \
                        o.peer_scenarios.split(","):
                    continue
                if over_budget() or counts[s] is None:
                    rec = {"scenario": name, "repeat": rep, "server": s, "ok": False,
                           "n": counts[s], "error": "skipped: --budget exhausted"}
                else:
                    rec = one_run(o, sc, s, counts[s], rep, logs)
                meta["results"].append(rec)
                if rec.get("adapter"):
                    meta["adapters"].setdefault(s, rec["adapter"])
                failures += not rec.get("ok")
                save()
                if rec.get("ok"):
                    extra = (f" srv_cpu={rec['server_cpu']:.2f}s peak_rss="
                             f"{rec['rss_peak_kib'] / 1024:.1f}MiB")
                    msg = f"{fmt(rec['figure'])} {sc.unit}{extra} {rec.get('note', '')}"
                else:
                    msg = "FAILED: " + rec.get("error", "?")
                print(f"[{name} r{rep}] {s:18s} {msg}", file=sys.stderr, flush=True)
                if o.cooldown:
                    time.sleep(o.cooldown)
    meta["machine"]["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    meta["elapsed"] = round(time.monotonic() - t_start, 1)
    save()
    table = report(meta)
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\n(results: {path}; {meta['elapsed']:g} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
