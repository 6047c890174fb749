"""
Soak test: Postfix's smtp-source sends mail at a bounded rate for N minutes
to a live smtphooks server; the server's memory must not grow and every
message smtp-source counts as sent must be delivered.

Usage: python benchmarks/soak.py [--minutes 10] [--server twistd|sink]
                                 [--sessions 10] [--wait 1] [--json FILE]

Two smtp-source streams run side by side, each with half of --sessions
parallel sessions that wait --wait seconds after each message (so the rate
is at most sessions / wait messages a second):

  - "churn": a new connection for every message (2,000-byte payload), which
    exercises connection setup and teardown (on_close, timers, counters);
  - "persistent": one connection per session for all its messages (-d,
    30,000-byte payload), which exercises the per-transaction reset.

--server twistd (the default) runs `twistd -n smtphooks` delivering to a
Maildir in a temporary directory (fsync per message), as an operator runs
it; messages delivered = files in Maildir/new.  --server sink runs
benchmarks/attack/sink.py and reads its own count.

The server's RSS (VmRSS in /proc/PID/status) is sampled every --sample
seconds: before any mail, after the first minute (warm), at the end, and its
maximum are reported.  Everything is bounded: smtp-source is killed if it
runs past twice the planned time plus a minute, and the server is killed at
the end.  Loopback only.  Exit status 0 when sent == delivered and no
smtp-source failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SINK = os.path.join(HERE, "attack", "sink.py")
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int | None:
    """The resident set size of process C{pid} in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def wait_listening(port: int, proc: subprocess.Popen, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)  # the greeting
                s.sendall(b"QUIT\r\n")
                s.recv(512)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the server did not listen on {port} within {bound:.0f} s")


class Server:
    def __init__(self, kind: str, workdir: str, port: int) -> None:
        self.kind = kind
        self.port = port
        self.maildir = os.path.join(workdir, "Maildir")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        self.stdout_path = os.path.join(workdir, "server.out")
        self.stderr_path = os.path.join(workdir, "server.err")
        if kind == "twistd":
            argv = [
                sys.executable, "-c", TWISTD, "-n", "--pidfile=",
                "--logfile", os.path.join(workdir, "twistd.log"),
                "smtphooks", "--listen", f"tcp:{port}:interface=127.0.0.1",
                "--maildir", self.maildir, "--name", "soak.test",
                "--disable-reverse-lookup",
            ]
        else:
            argv = [sys.executable, SINK, "--port", str(port), "--size", "0"]
        self._out = open(self.stdout_path, "w")
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, cwd=workdir,
                                     env=env)
        self.pid = self.proc.pid

    def delivered(self) -> int:
        if self.kind == "twistd":
            try:
                return len(os.listdir(os.path.join(self.maildir, "new")))
            except OSError:
                return 0
        before = os.path.getsize(self.stdout_path)
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(self.stdout_path) as f:
                f.seek(before)
                for line in f.read().split("\n")[:-1]:  # complete lines only
                    if line.startswith("STATS "):
                        return int(json.loads(line[6:])["delivered"])
            time.sleep(0.1)
        raise SystemExit("the sink did not report its count")

    def leftovers(self) -> int:
        """Files left in Maildir/tmp (a failed or interrupted write)."""
        if self.kind != "twistd":
            return 0
        try:
            return len(os.listdir(os.path.join(self.maildir, "tmp")))
        except OSError:
            return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        self._err.close()


def counter(output: bytes) -> int:
    """The last value of smtp-source's -c counter ("1\\r2\\r3\\r\\n")."""
    values = [v for v in output.replace(b"\n", b"\r").split(b"\r") if v.strip().isdigit()]
    return int(values[-1]) if values else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--server", choices=("twistd", "sink"), default="twistd")
    p.add_argument("--sessions", type=int, default=10, help="parallel sessions in all (>= 2)")
    p.add_argument("--wait", type=int, default=1, help="seconds each session waits per message")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = p.parse_args()
    if not os.path.exists(SMTP_SOURCE):
        raise SystemExit("smtp-source (Postfix) is not installed")
    if a.sessions < 2 or a.wait < 1:
        raise SystemExit("--sessions must be >= 2 and --wait >= 1")

    seconds = a.minutes * 60
    half = a.sessions // 2
    # Each session sends about one message per --wait seconds.
    per_stream = max(half, int(seconds * half / a.wait))
    streams = [
        ("churn", ["-s", str(half), "-l", "2000"]),
        ("persistent", ["-d", "-s", str(a.sessions - half), "-l", "30000"]),
    ]
    workdir = tempfile.mkdtemp(prefix="smtphooks-soak-")
    port = free_port()
    server = Server(a.server, workdir, port)
    print(f"soak: {a.server} server pid {server.pid} on 127.0.0.1:{port}, {a.minutes:g} min, "
          f"{a.sessions} sessions, <= {a.sessions / a.wait:g} msg/s, workdir {workdir}",
          flush=True)
    samples: list[tuple[float, int]] = []
    procs: list[tuple[str, subprocess.Popen]] = []
    ok = False
    try:
        wait_listening(port, server.proc)
        rss0 = rss(server.pid) or 0
        samples.append((0.0, rss0))
        for name, extra in streams:
            argv = [SMTP_SOURCE, "-c", "-w", str(a.wait), "-m", str(per_stream),
                    "-M", "soak.client", "-f", "sender@soak.client", "-t", "rcpt@soak.test",
                    *extra, f"127.0.0.1:{port}"]
            procs.append((name, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE)))
        t0 = time.monotonic()
        hard_stop = t0 + 2 * seconds + 60
        next_sample = t0 + a.sample
        killed = False
        while any(proc.poll() is None for _, proc in procs):
            now = time.monotonic()
            if now > hard_stop:
                for _, proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                killed = True
                break
            if now >= next_sample:
                value = rss(server.pid)
                if value is None:
                    raise SystemExit("the server died")
                samples.append((now - t0, value))
                next_sample += a.sample
                if int(now - t0) % 60 < a.sample:
                    print(f"  {now - t0:6.0f} s  RSS {value / MiB:6.1f} MiB  "
                          f"delivered {server.delivered()}", flush=True)
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        results = {}
        for name, proc in procs:
            out, err = proc.communicate(timeout=30)
            results[name] = {
                "planned": per_stream,
                "sent": counter(out),
                "rc": proc.returncode,
                "stderr": err.decode(errors="replace").strip()[-500:],
            }
        sent = sum(r["sent"] for r in results.values())
        # Delivery is synchronous with the 250, so the count is final now;
        # wait a little anyway for the last fsync/rename to be visible.
        deadline = time.monotonic() + 30
        delivered = server.delivered()
        while delivered < sent and time.monotonic() < deadline:
            time.sleep(0.5)
            delivered = server.delivered()
        rss_end = rss(server.pid) or 0
        samples.append((elapsed, rss_end))
        warm = next((v for t, v in samples if t >= 60), samples[-1][1])
        peak = max(v for _, v in samples)
        leftovers = server.leftovers()
        ok = (
            not killed
            and sent == delivered
            and all(r["rc"] == 0 and r["sent"] == r["planned"] for r in results.values())
            and leftovers == 0
        )
        figures = {
            "server": a.server,
            "minutes_planned": a.minutes,
            "seconds": round(elapsed, 1),
            "sessions": a.sessions,
            "max_rate": a.sessions / a.wait,
            "streams": results,
            "sent": sent,
            "delivered": delivered,
            "rate": round(sent / elapsed, 2) if elapsed else 0,
            "rss_start": rss0,
            "rss_warm_1min": warm,
            "rss_end": rss_end,
            "rss_peak": peak,
            "maildir_tmp_leftovers": leftovers,
            "killed": killed,
            "ok": ok,
            "samples": samples,
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, "
                       f"Linux {platform.release()}, Python {platform.python_version()}",
            "loadavg_end": os.getloadavg(),
        }
        print()
        print("| server | minutes | sent | delivered | rate msg/s | RSS start | RSS @1 min | "
              "RSS end | RSS peak | end - 1 min |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {a.server} | {elapsed / 60:.1f} | {sent} | {delivered} | {figures['rate']} | "
              f"{rss0 / MiB:.1f} MiB | {warm / MiB:.1f} MiB | {rss_end / MiB:.1f} MiB | "
              f"{peak / MiB:.1f} MiB | {(rss_end - warm) / MiB:+.1f} MiB |")
        for name, r in results.items():
            print(f"  {name}: planned {r['planned']}, sent {r['sent']}, rc {r['rc']}"
                  + (f", stderr: {r['stderr']}" if r["stderr"] else ""))
        print("soak", "OK" if ok else "FAILED",
              f"(sent {sent}, delivered {delivered}, Maildir/tmp leftovers {leftovers})")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(figures, f, indent=1)
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.stop()
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
