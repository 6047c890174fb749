"""
Attack a live smtphooks server over loopback and check that it holds: bounded
memory, deadlines at every stage, every limit answered, nothing lost.

Usage: python benchmarks/attack.py [--quick] [--only NAME,...] [--json FILE]
                                   [--seed N] [--list]

The server is benchmarks/attack/sink.py (the public API only: SMTPServer with
size=1 MiB, max_clients=5000 and short timeouts, see PROFILES) in a child
process; it records the Message-ID of every message it delivers.  A second
sink without a size limit takes the "no limit" attack, a third one with small
max_clients / max_clients_per_ip the "limits" attack.

Each attack is bounded in count and in time.  Around each one the script
waits until the server has no connection left, then reads the server's RSS
(VmRSS of /proc/PID/status) before, its peak during (VmHWM, reset through
/proc/PID/clear_refs, and a 20 ms sampler), and after; a "prober" meanwhile
sends one legitimate message on a fresh connection every PROBE_INTERVAL
seconds and records its latency (connect to the 250 after the message).

Verdicts:
  - memory attacks: peak RSS - RSS before < 16 MiB;
  - connection attacks (idle, slowloris, ...): RSS after - before < 16 MiB
    (the peak, divided by the connection count, is reported per connection);
  - every attack: the replies the protocol promises, the server logged no
    unexpected error, on_close ran once per connection (opened == closed),
    and the legitimate client was served in < 2 s (< 10 s in --quick mode,
    which only checks that it is served, on a CI machine of unknown speed);
  - at the end: every message answered 250 (flood + probes) was delivered
    exactly once, and no message that was not answered 250 was delivered.

An attack marked "todo" shows a known engine bug (see docs/security.md,
"Known issues"): its failure is reported as TODO and does not fail the run;
if it passes, the table says UNEXPECTED PASS so that the mark is removed.

--quick runs the attacks with tiny counts and timeouts of a second or two
(the CI smoke test, tests/test_attack_smoke.py, about 15 s; the todo attacks
and the bigger storm are left out).  --list names the attacks.  Exit status 0
when every verdict passes.  Loopback only; nothing is sent anywhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SINK = os.path.join(HERE, "attack", "sink.py")
KiB = 1024
MiB = 1024 * KiB
MEMORY_TARGET = 16 * MiB

PROFILES: dict[str, dict[str, Any]] = {
    "full": dict(
        line=64 * MiB,
        data_line=64 * MiB,
        oversize=50 * MiB,
        slowloris=300,
        slow_interval=2.0,
        idle=1000,
        middata=200,
        garbage=200,
        storm=10_000,
        big_storm=200_000,
        storm_hold=3.0,
        flood_messages=2000,
        flood_clients=20,
        hooks=10,
        tls=60,
        shutdown_clients=20,
        shutdown_slow_clients=4,
        shutdown_after=1.0,
        shutdown_pause=2.0,
        close_timeout=5.0,
        probe_interval=0.5,
        latency_target=2.0,
        socket_timeout=10.0,
        command_timeout=6.0,
        data_timeout=15.0,
        hook_timeout=3.0,
    ),
    "quick": dict(
        line=4 * MiB,
        data_line=4 * MiB,
        oversize=3 * MiB,
        slowloris=12,
        slow_interval=0.3,
        idle=50,
        middata=16,
        garbage=27,
        storm=1000,
        big_storm=5000,
        storm_hold=0.3,
        flood_messages=60,
        flood_clients=4,
        hooks=2,
        tls=10,
        shutdown_clients=6,
        shutdown_slow_clients=2,
        shutdown_after=0.4,
        shutdown_pause=0.8,
        close_timeout=1.5,
        probe_interval=0.25,
        latency_target=10.0,
        socket_timeout=2.0,
        command_timeout=0.8,
        data_timeout=1.6,
        hook_timeout=0.8,
    ),
}

#: Seconds to wait for something a working server does at once.
PATIENCE = 20.0


# -- the servers -------------------------------------------------------------


def read_status(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * KiB
    except OSError:
        return None
    return None


class Sink:
    """
    benchmarks/attack/sink.py in a child process.
    """

    def __init__(self, name: str, workdir: str) -> None:
        self.name = name
        self.record = os.path.join(workdir, f"{name}.delivered")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.pid = 0
        self._stats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, **options: Any) -> None:
        argv = [sys.executable, SINK, "--port", "0", "--record", self.record]
        for key, value in options.items():
            argv += ["--" + key.replace("_", "-"), str(value)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        with open(self.stderr_path, "w") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env
            )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line.startswith(b"PORT "):
            raise SystemExit(f"sink {self.name} did not start: {line!r}; see {self.stderr_path}")
        self.port = int(line.split()[1])
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            if line.startswith(b"STATS "):
                self._stats.put_nowait(json.loads(line[6:]))

    async def stats(self) -> dict[str, Any]:
        """The sink's counters (see sink.py), after a gc.collect() there."""
        async with self._lock:
            while not self._stats.empty():
                self._stats.get_nowait()
            if self.proc is None or self.proc.returncode is not None:
                raise RuntimeError(f"sink {self.name} is not running")
            os.kill(self.pid, signal.SIGUSR1)
            return await asyncio.wait_for(self._stats.get(), PATIENCE)

    def rss(self) -> int:
        return read_status(self.pid, "VmRSS") or 0

    def reset_peak(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            return True
        except OSError:
            return False

    def peak(self) -> int:
        return read_status(self.pid, "VmHWM") or 0

    def delivered_ids(self) -> list[str]:
        try:
            with open(self.record) as f:
                return f.read().split()
        except OSError:
            return []

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()


# -- a small SMTP client -----------------------------------------------------


class Closed(Exception):
    """The server closed the connection."""


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def enhanced(self) -> str:
        return self.lines[-1].split(" ", 1)[0] if self.lines else ""

    def __str__(self) -> str:
        return f"{self.code} {self.lines[-1] if self.lines else ''}"[:100]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: Reply | None = None

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        greeting: bool = True,
        rcvbuf: int | None = None,
        source: str | None = None,
        timeout: float = PATIENCE,
    ) -> Client:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if source is not None:
                sock.bind((source, 0))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
            reader, writer = await asyncio.open_connection(sock=sock, limit=1 * MiB)
        except BaseException:
            sock.close()
            raise
        client = cls(reader, writer)
        if greeting:
            client.greeting = await client.reply(timeout)
        return client

    async def reply(self, timeout: float = PATIENCE) -> Reply:
        lines = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), timeout)
            except asyncio.IncompleteReadError as e:
                raise Closed(f"closed after {lines} {e.partial[:80]!r}") from None
            except ConnectionError as e:
                raise Closed(repr(e)) from None
            text = line[:-2].decode("utf-8", "replace")
            lines.append(text[4:])
            if text[3:4] != "-":
                return Reply(int(text[:3]) if text[:3].isdigit() else 0, lines)

    async def replies(self, count: int, timeout: float = PATIENCE) -> list[Reply]:
        return [await self.reply(timeout) for _ in range(count)]

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self, timeout: float = PATIENCE) -> None:
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def command(self, line: str | bytes, timeout: float = PATIENCE) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply(timeout)

    async def expect(self, line: str | bytes, code: int, timeout: float = PATIENCE) -> Reply:
        reply = await self.command(line, timeout)
        if reply.code != code:
            raise AssertionError(f"{line!r}: expected {code}, got {reply}")
        return reply

    async def envelope(self, rcpt: str = "rcpt@attack.test", helo: bool = True) -> None:
        if helo:
            await self.expect("EHLO client.attack.test", 250)
        await self.expect("MAIL FROM:<sender@client.attack.test>", 250)
        await self.expect(f"RCPT TO:<{rcpt}>", 250)

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and drop) until the server closes; False if it does not in time."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if not await asyncio.wait_for(self.reader.read(64 * KiB), left):
                    return True
        except (ConnectionError, OSError):
            return True
        except asyncio.TimeoutError:
            return False

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass


def message(msgid: str, size: int = 0, rng: random.Random | None = None) -> bytes:
    """A message with a Message-ID, padded to about C{size} bytes of body."""
    head = (
        f"Message-ID: <{msgid}>\r\nFrom: <sender@client.attack.test>\r\n"
        f"To: <rcpt@attack.test>\r\nSubject: {msgid}\r\n\r\n"
    ).encode()
    lines = []
    rng = rng or random.Random(msgid)
    total = 0
    while total < size:
        line = b"." * rng.randint(0, 2) + b"x" * rng.randint(0, 200)
        lines.append(line)
        total += len(line) + 2
    return head + b"\r\n".join(lines) + b"\r\n"


def stuffed(body: bytes) -> bytes:
    data = body.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


# -- the prober: a legitimate client, all along ------------------------------


class Prober:
    """
    Sends one message every C{interval} seconds on a fresh connection and
    records the latency, labelled with the attack under way.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sink: Sink | None = None
        self.label: str | None = None
        self.latencies: dict[str, list[float | None]] = collections.defaultdict(list)
        self.failures: dict[str, list[str]] = collections.defaultdict(list)
        self.acked: dict[str, list[str]] = collections.defaultdict(list)
        self._count = 0
        self._active = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def resume(self, sink: Sink, label: str) -> None:
        self.sink, self.label = sink, label
        self._active.set()

    async def pause(self) -> None:
        self._active.clear()
        await self._idle.wait()

    async def _loop(self) -> None:
        while True:
            await self._active.wait()
            sink, label = self.sink, self.label
            assert sink is not None and label is not None
            self._idle.clear()
            try:
                self._count += 1
                msgid = f"probe-{self._count}@attack.test"
                t0 = time.monotonic()
                try:
                    await asyncio.wait_for(self._probe(sink, msgid), 15)
                    self.latencies[label].append(time.monotonic() - t0)
                    self.acked[sink.name].append(msgid)
                except Exception as e:  # noqa: BLE001 - recorded as a failed probe
                    self.latencies[label].append(None)
                    self.failures[label].append(f"{type(e).__name__}: {e}"[:200])
            finally:
                self._idle.set()
            await asyncio.sleep(self.interval)

    async def _probe(self, sink: Sink, msgid: str) -> None:
        client = await Client.connect(sink.port)
        try:
            if client.greeting is None or client.greeting.code != 220:
                raise AssertionError(f"greeting {client.greeting}")
            await client.envelope()
            await client.expect("DATA", 354)
            client.send(stuffed(message(msgid, 300)))
            reply = await client.reply()
            if reply.code != 250:
                raise AssertionError(f"message: {reply}")
            client.send(b"QUIT\r\n")
        finally:
            await client.close()


# -- running attacks and measuring -------------------------------------------


@dataclass
class Outcome:
    ok: bool
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)
    #: connections the server refused before on_connect (closed - opened)
    refused: int = 0


@dataclass
class Attack:
    name: str
    title: str
    kind: str  # "memory" or "connections"
    run: Callable[[Context], Awaitable[Outcome]]
    sink: str = "main"
    probe: bool = True
    bound: Callable[[dict[str, Any]], float] = lambda p: 120.0
    #: a known engine bug makes this attack fail (as trial's todo): its
    #: failure is reported but does not fail the run
    todo: str | None = None
    #: run in --quick mode too
    quick: bool = True


@dataclass
class Context:
    profile: dict[str, Any]
    sinks: dict[str, Sink]
    rng: random.Random
    quick: bool
    workdir: str
    timeouts: dict[str, float]

    @property
    def sink(self) -> Sink:
        return self.sinks["main"]

    @property
    def port(self) -> int:
        return self.sinks["main"].port


class Sampler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.max = 0
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        while True:
            self.max = max(self.max, self.sink.rss())
            await asyncio.sleep(0.02)

    async def stop(self) -> int:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.max = max(self.max, self.sink.rss())
        return self.max


async def quiesce(sink: Sink, bound: float) -> dict[str, Any]:
    """Wait until the sink has no connection left (bounded); return its stats."""
    deadline = time.monotonic() + bound
    while True:
        stats = await sink.stats()
        if stats["live"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


@dataclass
class Row:
    name: str
    title: str
    kind: str
    ok: bool
    detail: str
    seconds: float
    rss_before: int
    rss_peak: int
    rss_after: int
    latencies: list[float | None]
    checks: list[str]
    extra: dict[str, Any]
    todo: str | None = None

    @property
    def passed(self) -> bool:
        """The run passes: this row passed, or failed as its todo says."""
        return self.ok or self.todo is not None

    @property
    def status(self) -> str:
        if self.todo is not None:
            return "UNEXPECTED PASS" if self.ok else "TODO (expected failure)"
        return "PASS" if self.ok else "FAIL"

    @property
    def verdict(self) -> str:
        if self.todo is not None:
            if self.ok:
                return f"UNEXPECTED PASS (remove the todo: {self.todo})"
            return f"TODO, expected failure ({self.todo}): " + "; ".join(self.checks)
        return "PASS" if self.ok else "FAIL: " + "; ".join(self.checks)

    @property
    def peak_growth(self) -> int:
        return self.rss_peak - self.rss_before

    @property
    def growth(self) -> int:
        return self.rss_after - self.rss_before


async def run_attack(attack: Attack, ctx: Context, prober: Prober) -> Row:
    sink = ctx.sinks[attack.sink]
    prof = ctx.profile
    settle = 2 * prof["socket_timeout"] + 15
    await prober.pause()
    before = await quiesce(sink, settle)
    sink.reset_peak()
    sampler = Sampler(sink)
    if attack.probe:
        prober.resume(sink, attack.name)
    t0 = time.monotonic()
    bound = attack.bound(prof)
    try:
        outcome = await asyncio.wait_for(attack.run(ctx), bound)
    except asyncio.TimeoutError:
        outcome = Outcome(False, f"did not finish within its bound of {bound:.0f} s")
    except Exception as e:  # noqa: BLE001 - an attack that breaks is a failed verdict
        outcome = Outcome(False, f"{type(e).__name__}: {e}"[:300])
    seconds = time.monotonic() - t0
    if attack.probe:
        # A short attack may be over before the first probe: let one through.
        deadline = time.monotonic() + 20
        while not prober.latencies.get(attack.name) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    await prober.pause()
    peak = max(await sampler.stop(), sink.peak())
    after = await quiesce(sink, settle)
    checks = [] if outcome.ok else ["not the expected outcome (see the outcome column)"]
    ok = outcome.ok
    if after["live"]:
        ok = False
        checks.append(f"{after['live']} connections still open {settle:.0f} s after the attack")
    errors = after["errors"] - before["errors"]
    if errors:
        ok = False
        checks.append(f"the server logged {errors} unexpected errors (see {sink.stderr_path})")
    opened = after["opened"] - before["opened"]
    closed = after["closed"] - before["closed"]
    if closed - opened != outcome.refused:
        ok = False
        checks.append(f"on_connect ran {opened} times, on_close {closed} times "
                      f"(expected {outcome.refused} refused connections)")
    row = Row(
        attack.name, attack.title, attack.kind, ok, outcome.detail, seconds,
        before["rss"], peak, after["rss"], prober.latencies.get(attack.name, []) if attack.probe
        else [], checks, dict(outcome.extra, opened=opened, closed=closed,
                              delivered=after["delivered"] - before["delivered"]),
        attack.todo,
    )
    if attack.kind == "memory" and row.peak_growth >= MEMORY_TARGET:
        row.ok = False
        row.checks.append(f"peak RSS grew {row.peak_growth / MiB:.1f} MiB (target < 16 MiB)")
    if row.growth >= MEMORY_TARGET:
        row.ok = False
        row.checks.append(f"RSS after grew {row.growth / MiB:.1f} MiB (target < 16 MiB)")
    if attack.probe:
        lat = row.latencies
        failed = [x for x in lat if x is None]
        if not lat:
            row.ok = False
            row.checks.append("the legitimate client did not get through at all")
        elif failed:
            row.ok = False
            row.checks.append(f"{len(failed)}/{len(lat)} legitimate messages failed: "
                              f"{prober.failures[attack.name][:2]}")
        elif max(x for x in lat if x is not None) >= prof["latency_target"]:
            row.ok = False
            row.checks.append(f"legitimate latency {max(lat):.2f} s "  # type: ignore[type-var]
                              f"(target < {prof['latency_target']:g} s)")
    return row


# -- the attacks ---------------------------------------------------------------


async def attack_endless_line(ctx: Context) -> Outcome:
    total = ctx.profile["line"]
    client = await Client.connect(ctx.port)
    await client.expect("EHLO client.attack.test", 250)
    chunk = b"A" * (256 * KiB)
    sent = 0
    while sent < total:
        client.send(chunk)
        await client.drain(60)
        sent += len(chunk)
    client.send(b"\r\nNOOP\r\n")
    first = await client.reply(60)
    second = await client.reply()
    await client.command("QUIT")
    await client.close()
    ok = (first.code, first.enhanced) == (500, "5.5.2") and second.code == 250
    return Outcome(ok, f"{sent // MiB} MiB without LF: {first}; then NOOP: {second.code}")


async def _endless_data_line(ctx: Context, sink: Sink, expect: int, msgid: str) -> Outcome:
    total = ctx.profile["data_line"]
    client = await Client.connect(sink.port)
    await client.envelope()
    await client.expect("DATA", 354)
    client.send(f"Message-ID: <{msgid}>\r\nSubject: one long line\r\n\r\n".encode())
    chunk = b"B" * (256 * KiB)
    sent = 0
    while sent < total:
        client.send(chunk)
        await client.drain(60)
        sent += len(chunk)
    client.send(b"\r\n.\r\n")
    reply = await client.reply(60)
    noop = await client.command("NOOP")
    await client.close()
    delivered = sink.delivered_ids().count(f"<{msgid}>")
    ok = reply.code == expect and noop.code == 250 and delivered == (1 if expect == 250 else 0)
    return Outcome(ok, f"{sent // MiB} MiB line in DATA: {reply}; delivered {delivered}x")


async def attack_endless_data_line(ctx: Context) -> Outcome:
    return await _endless_data_line(ctx, ctx.sink, 552, "dataline-limited@attack.test")


async def attack_endless_data_line_nolimit(ctx: Context) -> Outcome:
    return await _endless_data_line(ctx, ctx.sinks["nolimit"], 250, "dataline-nolimit@attack.test")


async def attack_oversize_data(ctx: Context) -> Outcome:
    total = ctx.profile["oversize"]
    client = await Client.connect(ctx.port)
    await client.expect("EHLO client.attack.test", 250)
    declared = await client.command(f"MAIL FROM:<big@client.attack.test> SIZE={total}")
    await client.expect("MAIL FROM:<big@client.attack.test>", 250)
    await client.expect("RCPT TO:<rcpt@attack.test>", 250)
    await client.expect("DATA", 354)
    client.send(b"Message-ID: <oversize-data@attack.test>\r\n\r\n")
    line = b"x" * 998 + b"\r\n"
    chunk = line * 256
    sent = 0
    while sent < total:
        client.send(chunk)
        await client.drain(60)
        sent += len(chunk)
    client.send(b".\r\n")
    reply = await client.reply(60)
    noop = await client.command("NOOP")
    await client.close()
    delivered = ctx.sink.delivered_ids().count("<oversize-data@attack.test>")
    ok = (
        (declared.code, declared.enhanced) == (552, "5.3.4")
        and (reply.code, reply.enhanced) == (552, "5.3.4")
        and noop.code == 250
        and delivered == 0
    )
    return Outcome(ok, f"SIZE={total // MiB} MiB: {declared.code}; {sent // MiB} MiB body: "
                       f"{reply}; delivered {delivered}x")


async def attack_oversize_bdat(ctx: Context) -> Outcome:
    total = ctx.profile["oversize"]
    client = await Client.connect(ctx.port)
    await client.envelope()
    client.send(f"BDAT {total} LAST\r\n".encode())
    head = b"Message-ID: <oversize-bdat@attack.test>\r\n\r\n"
    client.send(head)
    chunk = b"y" * (256 * KiB)
    left = total - len(head)
    while left > 0:
        piece = chunk if left >= len(chunk) else chunk[:left]
        client.send(piece)
        await client.drain(60)
        left -= len(piece)
    reply = await client.reply(60)
    noop = await client.command("NOOP")
    await client.close()
    delivered = ctx.sink.delivered_ids().count("<oversize-bdat@attack.test>")
    ok = (reply.code, reply.enhanced) == (552, "5.3.4") and noop.code == 250 and delivered == 0
    return Outcome(ok, f"BDAT {total // MiB} MiB LAST: {reply}; delivered {delivered}x")


async def attack_slowloris(ctx: Context) -> Outcome:
    prof = ctx.profile
    n, interval = prof["slowloris"], prof["slow_interval"]
    limit = {"command": prof["command_timeout"], "data": prof["data_timeout"]}
    bound = prof["data_timeout"] + 3 * interval + 10

    async def loris(i: int) -> tuple[str, bool, float, str]:
        mode = "command" if i % 2 == 0 else "data"
        await asyncio.sleep(i * 0.005)  # a ramp, not a thundering herd
        client = await Client.connect(ctx.port)
        if mode == "data":
            await client.envelope()
            await client.expect("DATA", 354)
            payload = message(f"slowloris-{i}@attack.test", 2000)
        else:
            payload = b"EHLO slowloris.client.attack.test\r\n" * 3
        replies: list[Reply] = []
        closed = asyncio.Event()
        closed_at = [0.0]

        async def read() -> None:
            try:
                while True:
                    replies.append(await client.reply(bound))
            except (Closed, asyncio.TimeoutError):
                pass
            closed_at[0] = time.monotonic()
            closed.set()

        reader = asyncio.ensure_future(read())
        t0 = time.monotonic()
        k = 0
        try:
            while not closed.is_set() and time.monotonic() - t0 < bound:
                try:
                    client.send(payload[k % len(payload):k % len(payload) + 1])
                except (ConnectionError, OSError):
                    break
                k += 1
                try:
                    await asyncio.wait_for(closed.wait(), interval)
                except asyncio.TimeoutError:
                    pass
            try:
                await asyncio.wait_for(closed.wait(), 5)
            except asyncio.TimeoutError:
                pass
        finally:
            cut = closed.is_set()
            reader.cancel()
            client.abort()
        last = str(replies[-1]) if replies else "no reply"
        return mode, cut, (closed_at[0] or time.monotonic()) - t0, last

    results = await asyncio.gather(*(loris(i) for i in range(n)), return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    done = [r for r in results if not isinstance(r, BaseException)]
    problems = []
    times: dict[str, list[float]] = collections.defaultdict(list)
    for mode, cut, after, last in done:
        times[mode].append(after)
        if not cut:
            problems.append(f"{mode} slowloris not cut after {after:.0f} s")
        elif after > limit[mode] + interval + 3:
            problems.append(f"{mode} slowloris cut only after {after:.1f} s")
        elif not (last.startswith("421 ") and "too long" in last):
            problems.append(f"{mode} slowloris got {last}")
    detail = ", ".join(
        f"{len(v)} {mode} cut after {min(v):.1f}-{max(v):.1f} s (limit {limit[mode]:g} s)"
        for mode, v in sorted(times.items())
    )
    if broken:
        problems.append(f"{len(broken)} failed: {broken[0]!r}"[:200])
    return Outcome(not problems, detail + ("; " + "; ".join(problems[:3]) if problems else ""),
                   {"cut_seconds": {m: [min(v), max(v)] for m, v in times.items()}})


async def attack_idle(ctx: Context) -> Outcome:
    prof = ctx.profile
    n = prof["idle"]
    clients: list[Client] = []
    t0 = time.monotonic()
    for start in range(0, n, 100):
        batch = await asyncio.gather(
            *(Client.connect(ctx.port) for _ in range(min(100, n - start))),
            return_exceptions=True,
        )
        clients += [c for c in batch if isinstance(c, Client)]
    opened_in = time.monotonic() - t0
    greeted = sum(1 for c in clients if c.greeting and c.greeting.code == 220)
    all_open = ctx.sink.rss()
    stats = await ctx.sink.stats()
    live = stats["live"]

    async def until_closed(c: Client) -> tuple[str, float]:
        try:
            reply = await c.reply(prof["socket_timeout"] + 20)
            text = f"{reply.code} {reply.lines[-1]}"[:40]
        except (Closed, asyncio.TimeoutError) as e:
            text = type(e).__name__
        closed = await c.wait_closed(10)
        t = time.monotonic() - t0
        c.abort()
        return (text if closed else "still open"), t

    results = await asyncio.gather(*(until_closed(c) for c in clients))
    codes = collections.Counter(r[0] for r in results)
    slowest = max((t for _, t in results), default=0.0)
    ok = (
        len(clients) == n
        and greeted == n
        and codes.get("421 Timeout, closing connection", 0) == n
        and slowest <= prof["socket_timeout"] + opened_in + 5
    )
    return Outcome(
        ok,
        f"{len(clients)} opened in {opened_in:.1f} s ({live} live at the server), "
        f"closed by the server: {dict(codes)}, last after {slowest:.1f} s "
        f"(socket_timeout {prof['socket_timeout']:g} s)",
        {"rss_all_open": all_open, "connections": n},
    )


async def attack_middata(ctx: Context) -> Outcome:
    n = ctx.profile["middata"]
    rng = ctx.rng
    cuts = [b"", b"\r\n", b"\r\n.", b"\r\n.\r", b"\n.\n", b"\r\n.\n"]
    sem = asyncio.Semaphore(20)
    ids = []

    async def one(i: int) -> str:
        async with sem:
            msgid = f"middata-{i}@attack.test"
            ids.append(msgid)
            client = await Client.connect(ctx.port)
            await client.envelope()
            await client.expect("DATA", 354)
            body = stuffed(message(msgid, rng.randint(0, 300 * KiB), random.Random(i)))[:-5]
            client.send(body + cuts[i % len(cuts)])
            await client.drain()
            await asyncio.sleep(0.01)
            if i % 2:
                client.abort()  # RST
                return "reset"
            client.writer.close()  # FIN, without QUIT
            await client.wait_closed(5)
            client.abort()
            return "closed"

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    delivered = set(ctx.sink.delivered_ids()) & {f"<{x}>" for x in ids}
    ok = not broken and not delivered
    how = collections.Counter(r for r in results if isinstance(r, str))
    return Outcome(ok, f"{dict(how)} mid-DATA (cut mid-line or inside <CRLF>.<CRLF>); "
                       f"delivered: {len(delivered)}" + (f"; failed: {broken[0]!r}" if broken
                                                         else ""))


def client_hello() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="attack.test")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def smuggling(i: int, variant: bytes) -> bytes:
    return (
        b"EHLO smuggler.attack.test\r\nMAIL FROM:<s@client.attack.test>\r\n"
        b"RCPT TO:<rcpt@attack.test>\r\nDATA\r\n"
        + f"Message-ID: <smuggle-{i}@attack.test>\r\n\r\nhello\r\n".encode()
        + variant
        + b"MAIL FROM:<evil@client.attack.test>\r\nRCPT TO:<victim@attack.test>\r\nDATA\r\n"
        + f"Message-ID: <smuggled-{i}@attack.test>\r\n\r\nforged\r\n.\r\nQUIT\r\n".encode()
    )


async def attack_garbage(ctx: Context) -> Outcome:
    n = ctx.profile["garbage"]
    rng = ctx.rng
    hello = client_hello()
    kinds: list[tuple[str, bool, Callable[[int], bytes], str | None]] = [
        # name, wait for the greeting first, payload, expected reply
        ("random", True, lambda i: rng.randbytes(rng.randint(1, 8192)), None),
        ("random-at-once", False, lambda i: rng.randbytes(rng.randint(1, 8192)), None),
        ("tls-clienthello", False, lambda i: hello, None),
        ("http-get", True, lambda i: b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
         "421 This is an SMTP server"),
        ("http-connect", True, lambda i: b"CONNECT mx.example:25 HTTP/1.1\r\n\r\n",
         "421 This is an SMTP server"),
        ("nul-and-controls", True,
         lambda i: b"\x00" * 300 + b"\r\n" + bytes(range(32)) * 4 + b"\r\n" * 20,
         "421 Too many unrecognized"),
        ("bad-utf8", True, lambda i: b"EHLO \xff\xfe\r\nMAIL FROM:<\xc3\x28@x>\r\n"
                                     b"RCPT TO:<\xed\xa0\x80@x>\r\nQUIT\r\n", "221"),
        ("smuggle-lf", True, lambda i: smuggling(i, b"\n.\n"), "221"),
        ("smuggle-crlf-lf", True, lambda i: smuggling(i, b"\r\n.\n"), "221"),
        ("smuggle-lf-crlf", True, lambda i: smuggling(i, b"\n.\r\n"), "221"),
        ("smuggle-cr", True, lambda i: smuggling(i, b"\r.\r"), "221"),
        ("proxy-v2-on-plain", False,
         lambda i: b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + rng.randbytes(12), None),
        ("header-injection", True, lambda i: b"EHLO x\r\nMAIL FROM:<a@x> ENVID=a+0D+0AX:y\r\n"
                                             b"HELO a\rb\r\nQUIT\r\n", "221"),
    ]
    sem = asyncio.Semaphore(25)
    wait = 2.0 if not ctx.quick else 0.5

    async def one(i: int) -> tuple[str, str, bool]:
        name, greet, payload, _ = kinds[i % len(kinds)]
        async with sem:
            client = await Client.connect(ctx.port, greeting=greet)
            try:
                client.send(payload(i))
                replies: list[Reply] = []
                try:
                    while True:
                        replies.append(await client.reply(wait))
                except (Closed, asyncio.TimeoutError):
                    pass
                closed = await client.wait_closed(0.05)
            finally:
                client.abort()
            ours = [r for r in replies if not str(r).startswith("220 attack.test")]
            return name, (str(ours[-1]) if ours else "-"), closed

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    problems = []
    seen: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        if isinstance(r, BaseException):
            continue
        name, last, closed = r
        seen[name][last[:9] + (" closed" if closed else "")] += 1
        expected = next(k[3] for k in kinds if k[0] == name)
        if expected is not None and not last.startswith(expected):
            problems.append(f"{name}: {last}")
    smuggled = [x for x in ctx.sink.delivered_ids() if x.startswith("<smuggled-")]
    carriers = [x for x in ctx.sink.delivered_ids() if x.startswith("<smuggle-")]
    if smuggled:
        problems.append(f"SMUGGLED messages delivered: {smuggled[:3]}")
    if broken:
        problems.append(f"{len(broken)} failed: {broken[0]!r}"[:200])
    summary = "; ".join(f"{k}: {dict(v)}" for k, v in seen.items())
    return Outcome(
        not problems,
        f"{n} clients, {len(kinds)} kinds; smuggling carriers delivered {len(carriers)}, "
        f"smuggled {len(smuggled)}" + ("; " + "; ".join(problems[:3]) if problems else ""),
        {"outcomes": summary},
    )


STORM_CYCLE = [
    ("NOOP", 250), ("HELP", 214), ("EHLO storm.attack.test", 250), ("RSET", 250),
    ("VRFY postmaster", 252), ("MAIL FROM:<storm@client.attack.test>", 250),
    ("RCPT TO:<rcpt@attack.test>", 250), ("RSET", 250),
]


async def _storm(ctx: Context, count: int, commands: list[tuple[str, int]]) -> Outcome:
    client = await Client.connect(ctx.port, rcvbuf=4096)
    await client.expect("EHLO storm.attack.test", 250)
    expected = [commands[i % len(commands)][1] for i in range(count)]
    blob = b"".join(
        commands[i % len(commands)][0].encode() + b"\r\n" for i in range(count)
    )
    client.send(blob)
    # Do not read for a while: the server must stop reading us instead of
    # buffering replies.
    await asyncio.sleep(ctx.profile["storm_hold"])
    unsent = client.writer.transport.get_write_buffer_size()
    t0 = time.monotonic()
    got = []
    try:
        for _ in range(count):
            got.append((await client.reply(PATIENCE)).code)
    except (Closed, asyncio.TimeoutError) as e:
        detail = f"only {len(got)}/{count} replies ({type(e).__name__})"
        client.abort()
        return Outcome(False, detail)
    read_in = time.monotonic() - t0
    quit_reply = await client.command("QUIT")
    await client.close()
    in_order = got == expected
    return Outcome(
        in_order and quit_reply.code == 221,
        f"{count} commands pipelined without reading for {ctx.profile['storm_hold']:g} s "
        f"({len(blob) // KiB} KiB"
        + (f"; {unsent // KiB} KiB still unsent by the client: the server had stopped reading"
           if unsent else "")
        + f"); then {len(got)} replies in {read_in:.1f} s, "
        f"{'in order' if in_order else 'OUT OF ORDER'}; QUIT: {quit_reply}",
    )


async def attack_storm(ctx: Context) -> Outcome:
    return await _storm(ctx, ctx.profile["storm"], STORM_CYCLE)


async def attack_big_storm(ctx: Context) -> Outcome:
    return await _storm(ctx, ctx.profile["big_storm"], [("HELP", 214), ("EHLO x.test", 250)])


async def attack_storm_never_reads(ctx: Context) -> Outcome:
    prof = ctx.profile
    client = await Client.connect(ctx.port, rcvbuf=4096)
    blob = b"HELP\r\n" * prof["big_storm"]
    client.send(blob)
    t0 = time.monotonic()
    limit = 2 * prof["socket_timeout"] + 5
    live = 1
    while time.monotonic() - t0 < limit + 5:
        live = (await ctx.sink.stats())["live"]
        if live == 0:
            break
        await asyncio.sleep(0.2)
    took = time.monotonic() - t0
    client.abort()
    return Outcome(
        live == 0 and took <= limit,
        f"{prof['big_storm']} HELP, never reading: "
        + (f"disconnected by the server after {took:.1f} s" if live == 0 else
           f"STILL CONNECTED after {took:.0f} s")
        + f" (socket_timeout {prof['socket_timeout']:g} s, then as long again for the 421)",
    )


async def attack_slow_reader(ctx: Context) -> Outcome:
    """
    A client pipelines 64 KiB of HELP (about 10,900 commands; the server
    reads them at once), then reads the replies steadily but slowly, so that
    reading them all takes about 2.5 x socket_timeout, then sends NOOP and
    QUIT.  It is never idle for long: it reads all the time, and it sends
    its next command as soon as it has its replies.  The server must answer
    every command; it counts replies still queued in the kernel as activity,
    but replies already in the client's buffers are the client's business.
    """
    prof = ctx.profile
    count = 64 * KiB // len(b"HELP\r\n")
    client = await Client.connect(ctx.port, rcvbuf=4096)
    help_reply = await client.command("HELP")
    size = sum(len(line) + 6 for line in help_reply.lines) * count
    rate = size / (2.5 * prof["socket_timeout"])  # bytes per second
    client.send(b"HELP\r\n" * count)
    t0 = time.monotonic()
    got = bytearray()
    helps = 0
    closed = False
    while helps < count:
        try:
            data = await asyncio.wait_for(client.reader.read(4096), PATIENCE)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            data = b""
        if not data:
            closed = True
            break
        got += data
        helps += data.count(b"\r\n214 ") + (got[:4] == b"214 " and len(got) == len(data))
        ahead = len(got) / rate - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    took = time.monotonic() - t0
    finals = [line for line in bytes(got).split(b"\r\n") if line[3:4] == b" "]
    helps = sum(1 for line in finals if line.startswith(b"214 "))
    others = [line.decode(errors="replace")[:50] for line in finals if not line.startswith(b"214 ")]
    after = "-"
    if not closed:
        try:
            noop = await client.command("NOOP")
            quit_reply = await client.command("QUIT")
            after = f"NOOP {noop.code}, QUIT {quit_reply.code}"
        except (Closed, asyncio.TimeoutError) as e:
            after = f"then {type(e).__name__}"
    client.abort()
    # Every command must be answered, in order.  The client's own buffers
    # may hold the last replies long after the server handed them over: if
    # it then stays silent beyond socket_timeout, a 421 after the last reply
    # is right (the server cannot see a client reading its own buffer).
    late_421 = others == ["421 Timeout, closing connection"]
    ok = helps == count and (
        (not others and after == "NOOP 250, QUIT 221") or (late_421 and closed)
    )
    return Outcome(
        ok,
        f"{count} HELP pipelined, replies read at {rate / KiB:.0f} KiB/s for {took:.1f} s "
        f"(socket_timeout {prof['socket_timeout']:g} s): {helps}/{count} answered"
        + (f", then {others[:1]}" if others else "")
        + (", then the server closed the connection" if closed else f"; {after}"),
    )


async def attack_slow_consumer(ctx: Context) -> Outcome:
    """
    A legitimate client sends a 6 MiB message as fast as the server lets
    it, to an on_data that reads slowly (0.25 s a chunk), so that the whole
    takes longer than data_timeout; the server holds the client back
    (backpressure), so the client is not slow: it must get 250.
    """
    prof = ctx.profile
    sink = ctx.sinks["nolimit"]
    client = await Client.connect(sink.port)
    await client.envelope("slowread@attack.test")
    await client.expect("DATA", 354)
    msgid = "slowread@attack.test"
    client.send(f"Message-ID: <{msgid}>\r\n\r\n".encode())
    line = b"z" * 998 + b"\r\n"
    t0 = time.monotonic()
    sent = 0
    try:
        while sent < 6 * MiB:
            client.send(line * 64)
            await client.drain(prof["data_timeout"] * 3)
            sent += len(line) * 64
        client.send(b".\r\n")
        reply = await client.reply(prof["data_timeout"] * 3)
    except (Closed, ConnectionError, OSError, asyncio.TimeoutError) as e:
        reply = Reply(0, [type(e).__name__])
    took = time.monotonic() - t0
    client.abort()
    delivered = sink.delivered_ids().count(f"<{msgid}>")
    return Outcome(
        reply.code == 250 and delivered == 1,
        f"{sent // MiB} MiB sent as fast as on_data reads (0.25 s a chunk) for {took:.1f} s "
        f"(data_timeout {prof['data_timeout']:g} s): {reply}; delivered {delivered}x",
    )


async def attack_flood(ctx: Context) -> Outcome:
    prof = ctx.profile
    total, clients = prof["flood_messages"], prof["flood_clients"]
    per = total // clients
    acked: list[str] = []
    refused: list[str] = []

    async def sender(c: int) -> None:
        rng = random.Random(c)
        pipelined = c % 2 == 1
        client: Client | None = None
        for i in range(per):
            if client is None or i % 25 == 0:
                if client is not None:
                    await client.command("QUIT")
                    await client.close()
                client = await Client.connect(ctx.port)
                await client.expect("EHLO flood.attack.test", 250)
            msgid = f"flood-{c}-{i}@attack.test"
            body = stuffed(message(msgid, rng.randint(200, 32 * KiB), rng))
            if pipelined:
                client.send(b"MAIL FROM:<f@client.attack.test>\r\nRCPT TO:<rcpt@attack.test>\r\n"
                            b"DATA\r\n")
                codes = [r.code for r in await client.replies(3)]
            else:
                codes = [
                    (await client.command("MAIL FROM:<f@client.attack.test>")).code,
                    (await client.command("RCPT TO:<rcpt@attack.test>")).code,
                    (await client.command("DATA")).code,
                ]
            if codes != [250, 250, 354]:
                refused.append(f"{msgid}: {codes}")
                await client.command("RSET")
                continue
            client.send(body)
            reply = await client.reply()
            if reply.code == 250:
                acked.append(msgid)
            else:
                refused.append(f"{msgid}: {reply}")
        if client is not None:
            await client.command("QUIT")
            await client.close()

    t0 = time.monotonic()
    results = await asyncio.gather(*(sender(c) for c in range(clients)), return_exceptions=True)
    took = time.monotonic() - t0
    broken = [r for r in results if isinstance(r, BaseException)]
    counts = collections.Counter(ctx.sink.delivered_ids())
    not_once = [m for m in acked if counts.get(f"<{m}>", 0) != 1]
    ours = {f"<{m}>" for m in acked}
    unacked = [m for m in counts if m.startswith("<flood-") and m not in ours]
    ok = not broken and not refused and not not_once and not unacked and len(acked) == per * clients
    return Outcome(
        ok,
        f"{len(acked)} of {per * clients} messages acknowledged in {took:.1f} s "
        f"({len(acked) / took:.0f} msg/s, {clients} clients, half pipelining); "
        f"acknowledged but not delivered exactly once: {len(not_once)}; delivered but not "
        f"acknowledged: {len(unacked)}"
        + (f"; refused: {refused[:2]}" if refused else "")
        + (f"; failed: {broken[0]!r}"[:200] if broken else ""),
    )


async def attack_hooks(ctx: Context) -> Outcome:
    prof = ctx.profile
    n = prof["hooks"]
    ht = prof["hook_timeout"]

    async def hang(i: int) -> tuple[str, float, str]:
        client = await Client.connect(ctx.port)
        await client.expect("EHLO hooks.attack.test", 250)
        await client.expect("MAIL FROM:<h@client.attack.test>", 250)
        t0 = time.monotonic()
        reply = await client.command("RCPT TO:<hang@attack.test>", ht + 20)
        took = time.monotonic() - t0
        noop = await client.command("NOOP")
        await client.close()
        return "hang", took, f"{reply.code} {reply.enhanced}/{noop.code}"

    async def data(i: int, who: str, size: int) -> tuple[str, float, str]:
        client = await Client.connect(ctx.port)
        await client.envelope(f"{who}@attack.test")
        await client.expect("DATA", 354)
        msgid = f"hook-{who}-{i}@attack.test"
        t0 = time.monotonic()
        client.send(stuffed(message(msgid, size)))
        reply = await client.reply(ht + 20)
        took = time.monotonic() - t0
        noop = await client.command("NOOP")
        await client.close()
        return who, took, f"{reply.code} {reply.enhanced}/{noop.code}"

    jobs = []
    for i in range(n):
        jobs += [hang(i), data(i, "stall", 900 * KiB), data(i, "late", 2 * KiB)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    problems = []
    spans: dict[str, list[float]] = collections.defaultdict(list)
    for r in results:
        if isinstance(r, BaseException):
            continue
        who, took, codes = r
        spans[who].append(took)
        if codes != "451 4.3.0/250":
            problems.append(f"{who}: {codes}")
        elif not ht - 0.5 <= took <= ht + 5:
            problems.append(f"{who}: answered after {took:.1f} s (hook_timeout {ht:g} s)")
    delivered = [x for x in ctx.sink.delivered_ids() if x.startswith("<hook-")]
    if delivered:
        problems.append(f"delivered: {delivered[:3]}")
    if broken:
        problems.append(f"{len(broken)} failed: {broken[0]!r}"[:200])
    detail = ", ".join(f"{len(v)} {k}: 451 4.3.0 after {min(v):.1f}-{max(v):.1f} s"
                       for k, v in sorted(spans.items()))
    return Outcome(not problems, f"{detail} (hook_timeout {ht:g} s), then NOOP 250"
                   + ("; " + "; ".join(problems[:3]) if problems else ""))


async def attack_tls(ctx: Context) -> Outcome:
    """
    STARTTLS, then a handshake that trickles in one byte at a time, never
    starts, stops half-way (the client vanishes), or is garbage; and, as a
    control, one that completes.
    """
    prof = ctx.profile
    n, interval, idle = prof["tls"], prof["slow_interval"], prof["socket_timeout"]
    hello = client_hello()
    kinds = ["slow", "silent", "vanish", "garbage", "complete"]
    bound = idle + 3 * interval + 10

    async def one(i: int) -> tuple[str, bool, float, str]:
        kind = kinds[i % len(kinds)]
        await asyncio.sleep(i * 0.01)
        client = await Client.connect(ctx.port)
        await client.expect("EHLO tls.attack.test", 250)
        await client.expect("STARTTLS", 220)
        t0 = time.monotonic()
        if kind == "complete":
            if not hasattr(client.writer, "start_tls"):  # Python < 3.11
                await client.close()
                return kind, True, 0.0, "skipped"
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            await asyncio.wait_for(
                client.writer.start_tls(context, server_hostname="attack.test"), PATIENCE
            )
            ehlo = await client.command("EHLO tls.attack.test")
            bye = await client.command("QUIT")
            await client.close()
            return kind, True, time.monotonic() - t0, f"{ehlo.code}/{bye.code}"
        if kind == "vanish":
            client.send(hello[: len(hello) // 2])
            await client.drain()
            await asyncio.sleep(0.05)
            client.abort()
            return kind, True, 0.0, "vanished"
        trickle = None
        if kind == "garbage":
            client.send(bytes(ctx.rng.randbytes(600)))
        elif kind == "slow":

            async def drip() -> None:
                for k in range(len(hello)):
                    client.send(hello[k:k + 1])
                    await asyncio.sleep(interval)

            trickle = asyncio.ensure_future(drip())
        closed = await client.wait_closed(bound)
        took = time.monotonic() - t0
        if trickle is not None:
            trickle.cancel()
        client.abort()
        return kind, closed, took, ""

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    problems = []
    spans: dict[str, list[float]] = collections.defaultdict(list)
    for r in results:
        if isinstance(r, BaseException):
            continue
        kind, closed, took, note = r
        spans[kind].append(took)
        if kind == "complete" and note not in ("250/221", "skipped"):
            problems.append(f"a complete handshake, then EHLO/QUIT: {note}")
        elif kind in ("slow", "silent") and (not closed or took > idle + interval + 3):
            problems.append(f"{kind} handshake held the connection {took:.1f} s")
        elif kind == "garbage" and (not closed or took > 5):
            problems.append(f"a garbage handshake held the connection {took:.1f} s")
    if broken:
        problems.append(f"{len(broken)} failed: {broken[0]!r}"[:200])
    detail = ", ".join(
        f"{len(v)} {k}" + (f" cut after {min(v):.1f}-{max(v):.1f} s" if k in
                           ("slow", "silent", "garbage") else "")
        for k, v in sorted(spans.items())
    )
    return Outcome(not problems, f"{detail} (socket_timeout {idle:g} s)"
                   + ("; " + "; ".join(problems[:3]) if problems else ""))


async def attack_shutdown(ctx: Context) -> Outcome:
    """
    A graceful shutdown (SIGTERM: server.close()) in the middle of a flood:
    every message answered 250 is delivered exactly once, a message whose
    transaction is under way may finish (close_timeout), and the server
    process ends in time.  It runs against a server of its own.
    """
    prof = ctx.profile
    sink = Sink("shutdown", ctx.workdir)
    await sink.start(size=MiB, max_clients=5000, close_timeout=prof["close_timeout"],
                     **ctx.timeouts)
    n, slow = prof["shutdown_clients"], prof["shutdown_slow_clients"]
    acked: list[str] = []
    ended: collections.Counter[str] = collections.Counter()
    in_flight: list[str] = []
    term = asyncio.Event()

    async def sender(c: int) -> None:
        rng = random.Random(1000 + c)
        i = 0
        client: Client | None = None
        try:
            client = await Client.connect(sink.port)
            await client.expect("EHLO shutdown.attack.test", 250)
            while True:
                msgid = f"shutdown-{c}-{i}@attack.test"
                i += 1
                for line, code in (("MAIL FROM:<s@client.attack.test>", 250),
                                   ("RCPT TO:<rcpt@attack.test>", 250), ("DATA", 354)):
                    reply = await client.command(line)
                    if reply.code != code:
                        ended[f"{line.split()[0]} {reply.code}"] += 1
                        return
                body = stuffed(message(msgid, rng.randint(200, 16 * KiB), rng))
                if c < slow:
                    # A slow message: half, a pause, the rest.
                    client.send(body[: len(body) // 2])
                    before = term.is_set()
                    await asyncio.sleep(prof["shutdown_pause"])
                    client.send(body[len(body) // 2:])
                    reply = await client.reply()
                    if term.is_set() and not before:
                        in_flight.append(f"{reply.code}")
                else:
                    client.send(body)
                    reply = await client.reply()
                if reply.code != 250:
                    ended[f"message {reply.code}"] += 1
                    return
                acked.append(msgid)
        except (Closed, ConnectionError, OSError, asyncio.TimeoutError) as e:
            ended[type(e).__name__] += 1
        finally:
            if client is not None:
                client.abort()

    tasks = [asyncio.ensure_future(sender(c)) for c in range(n)]
    try:
        await asyncio.sleep(prof["shutdown_after"])
        term.set()
        t0 = time.monotonic()
        assert sink.proc is not None
        sink.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(sink.proc.wait(), prof["close_timeout"] + 20)
        except asyncio.TimeoutError:
            pass
        exited = sink.proc.returncode
        took = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), PATIENCE)
    finally:
        for task in tasks:
            task.cancel()
        await sink.stop()
    counts = collections.Counter(sink.delivered_ids())
    mine = {f"<{m}>" for m in acked}
    not_once = [m for m in acked if counts.get(f"<{m}>", 0) != 1]
    unacked = [m for m in counts if m.startswith("<shutdown-") and m not in mine]
    ok = (
        exited == 0
        and took <= prof["close_timeout"] + 5
        and bool(acked)
        and not not_once
        and not unacked
        and all(code == "250" for code in in_flight)
    )
    return Outcome(
        ok,
        f"SIGTERM after {prof['shutdown_after']:g} s of {n} clients sending: {len(acked)} "
        f"answered 250, each delivered exactly once: {not not_once}; delivered without a 250: "
        f"{len(unacked)}; {len(in_flight)} slow messages under way at SIGTERM got "
        f"{dict(collections.Counter(in_flight))}; clients then saw {dict(ended)}; the process "
        f"exited ({exited}) {took:.1f} s after SIGTERM (close_timeout {prof['close_timeout']:g} s)",
    )


async def attack_limits(ctx: Context) -> Outcome:
    sink = ctx.sinks["limits"]
    held: list[Client] = []
    outcome: dict[str, list[str]] = {}
    try:
        for source, count in (("127.0.0.1", 20), ("127.0.0.2", 15), ("127.0.0.3", 15)):
            got = []
            for _ in range(count):
                c = await Client.connect(sink.port, source=source)
                assert c.greeting is not None
                got.append(str(c.greeting.code))
                if c.greeting.code == 220:
                    held.append(c)
                else:
                    await c.wait_closed(5)
                    c.abort()
            outcome[source] = got
    finally:
        for c in held:
            c.abort()
    await quiesce(sink, 10)
    again = await Client.connect(sink.port)
    after = again.greeting.code if again.greeting else 0
    await again.close()
    expected = {
        "127.0.0.1": ["220"] * 15 + ["421"] * 5,
        "127.0.0.2": ["220"] * 15,
        "127.0.0.3": ["220"] * 10 + ["421"] * 5,
    }
    ok = outcome == expected and after == 220
    summary = ", ".join(
        f"{src}: {v.count('220')} in, {v.count('421')} refused"
        for src, v in outcome.items()
    )
    return Outcome(ok, f"max_clients 40, max_clients_per_ip 15: {summary}; "
                       f"afterwards a new client gets {after}",
                   refused=10)


ATTACKS = [
    Attack("endless-line", "command line without LF", "memory", attack_endless_line),
    Attack("endless-data-line", "DATA line without CRLF, 1 MiB limit", "memory",
           attack_endless_data_line),
    Attack("endless-data-line-nolimit", "DATA line without CRLF, no size limit", "memory",
           attack_endless_data_line_nolimit, sink="nolimit"),
    Attack("oversize-data", "DATA body over the 1 MiB limit", "memory", attack_oversize_data),
    Attack("oversize-bdat", "BDAT chunk over the 1 MiB limit", "memory", attack_oversize_bdat),
    Attack("idle", "idle connections", "connections", attack_idle,
           bound=lambda p: p["socket_timeout"] + 60),
    Attack("slowloris", "1 byte every few seconds", "connections", attack_slowloris,
           bound=lambda p: p["data_timeout"] + 3 * p["slow_interval"] + 40),
    Attack("mid-data-disconnect", "disconnect during DATA", "memory", attack_middata),
    Attack("garbage", "random bytes, TLS, HTTP, smuggling", "memory", attack_garbage),
    Attack("storm", "pipelining storm, reads late", "memory", attack_storm),
    Attack("big-storm", "bigger storm, reads late", "memory", attack_big_storm, quick=False),
    Attack("storm-never-reads", "storm, never reads", "memory", attack_storm_never_reads,
           bound=lambda p: 2 * p["socket_timeout"] + 30),
    Attack("slow-reader", "pipelines 64 KiB, reads slowly but steadily", "memory",
           attack_slow_reader, bound=lambda p: 3 * p["socket_timeout"] + 40,
           quick=False),
    Attack("slow-consumer", "on_data reads slowly: a message takes > data_timeout", "memory",
           attack_slow_consumer, sink="nolimit", bound=lambda p: 4 * p["data_timeout"] + 40,
           quick=False),
    Attack("flood", "parallel clients, exactly-once", "memory", attack_flood,
           bound=lambda p: 300.0),
    Attack("hooks", "hooks that never answer", "memory", attack_hooks,
           bound=lambda p: p["hook_timeout"] + 60),
    Attack("tls-handshake", "slow, silent, vanishing, garbage TLS handshakes", "connections",
           attack_tls, bound=lambda p: p["socket_timeout"] + 3 * p["slow_interval"] + 40),
    Attack("limits", "max_clients, max_clients_per_ip", "connections", attack_limits,
           sink="limits", probe=False),
    Attack("shutdown", "graceful shutdown under load", "connections", attack_shutdown,
           probe=False, bound=lambda p: p["close_timeout"] + 60),
]


# -- report ------------------------------------------------------------------


def mib(n: int) -> str:
    return f"{n / MiB:.1f}"


def latency_text(lat: list[float | None]) -> str:
    good = [x for x in lat if x is not None]
    if not lat:
        return "-"
    bad = len(lat) - len(good)
    if not good:
        return f"{bad} failed"
    text = f"{max(good):.2f} / {statistics.median(good):.2f} (n={len(lat)})"
    return text + (f", {bad} failed" if bad else "")


def table(rows: list[Row]) -> str:
    out = [
        (
            "| attack | outcome | RSS before | peak | after | peak growth | retained | "
            "legit latency max / median s | verdict |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.name} | {r.detail} | {mib(r.rss_before)} | {mib(r.rss_peak)} | "
            f"{mib(r.rss_after)} | {r.peak_growth / MiB:+.1f} | {r.growth / MiB:+.1f} | "
            f"{latency_text(r.latencies)} | {r.verdict} |"
        )
    out.append("")
    out.append("RSS in MiB (VmRSS of the server process; peak = VmHWM after a reset through "
               "/proc/PID/clear_refs, and a 20 ms sampler). Target: growth < 16 MiB; "
               "memory attacks are judged on the peak, connection attacks on what is retained.")
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    prof = dict(PROFILES["quick" if a.quick else "full"])
    if a.only:
        selected = [x for x in ATTACKS if x.name in a.only.split(",")]
    else:
        selected = [x for x in ATTACKS if x.quick or not a.quick]
    if a.only and len(selected) != len(a.only.split(",")):
        raise SystemExit(f"unknown attack in --only; known: {', '.join(x.name for x in ATTACKS)}")
    workdir = tempfile.mkdtemp(prefix="smtphooks-attack-")
    timeouts = {k: prof[k] for k in ("socket_timeout", "command_timeout", "data_timeout",
                                     "hook_timeout")}
    sinks = {
        "main": Sink("main", workdir),
        "nolimit": Sink("nolimit", workdir),
        "limits": Sink("limits", workdir),
    }
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"attack: {'quick' if a.quick else 'full'} profile, seed {a.seed}, started {started}; "
          f"workdir {workdir}", flush=True)
    prober = Prober(prof["probe_interval"])
    rows: list[Row] = []
    try:
        await sinks["main"].start(size=MiB, max_clients=5000, tls_dir=workdir, **timeouts)
        await sinks["nolimit"].start(size=0, max_clients=5000, **timeouts)
        await sinks["limits"].start(size=MiB, max_clients=40, max_clients_per_ip=15,
                                    **timeouts)
        print(f"servers: main pid {sinks['main'].pid} port {sinks['main'].port} "
              f"(size=1 MiB, max_clients=5000, {timeouts}); nolimit pid {sinks['nolimit'].pid}; "
              f"limits pid {sinks['limits'].pid}", flush=True)
        ctx = Context(prof, sinks, random.Random(a.seed), a.quick, workdir, timeouts)
        prober.start()
        for attack in selected:
            print(f"-- {attack.name}: {attack.title} ...", flush=True)
            row = await run_attack(attack, ctx, prober)
            rows.append(row)
            print(f"   {row.status} in {row.seconds:.1f} s: {row.detail}; "
                  f"RSS {mib(row.rss_before)} -> peak {mib(row.rss_peak)} -> "
                  f"{mib(row.rss_after)} MiB; legit {latency_text(row.latencies)}"
                  + ("; " + "; ".join(row.checks) if row.checks else ""), flush=True)
        await prober.pause()
        await prober.stop()
        # Exactly once, over the whole run: every message answered 250 to the
        # prober was delivered once (the flood checks its own messages).
        problems = []
        for name, sink in sinks.items():
            counts = collections.Counter(sink.delivered_ids())
            for msgid in prober.acked.get(name, []):
                if counts.get(f"<{msgid}>", 0) != 1:
                    problems.append(f"{name}: {msgid} delivered {counts.get(f'<{msgid}>', 0)}x")
            acked = {f"<{m}>" for m in prober.acked.get(name, [])}
            stray = [m for m in counts if m.startswith("<probe-") and m not in acked]
            if stray:
                problems.append(f"{name}: delivered without a 250: {stray[:3]}")
        total_probes = sum(len(v) for v in prober.acked.values())
        final = Row("exactly-once", "", "", not problems,
                    f"{total_probes} legitimate messages answered 250 during the attacks: "
                    + ("each delivered exactly once" if not problems else "; ".join(problems[:3])),
                    0.0, 0, 0, 0, [], [], {})
        rows.append(final)
        if any(sink.proc is None or sink.proc.returncode is not None for sink in sinks.values()):
            final.ok = False
            final.checks.append("a server process died")
    finally:
        await prober.stop()
        for sink in sinks.values():
            await sink.stop()
    print()
    print(f"## Attack results ({'quick' if a.quick else 'full'} profile, {started})")
    print()
    print(table(rows))
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
          f"Python {platform.python_version()}, load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ok = all(r.passed for r in rows)
    if not ok:
        for sink in sinks.values():
            tail = sink.stderr_tail()
            if tail.strip():
                print(f"\n{sink.name} server stderr (tail):\n{tail}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {
                    "profile": "quick" if a.quick else "full",
                    "started": started,
                    "settings": prof,
                    "rows": [
                        {
                            "name": r.name, "ok": r.ok, "detail": r.detail, "seconds": r.seconds,
                            "rss_before": r.rss_before, "rss_peak": r.rss_peak,
                            "rss_after": r.rss_after, "latencies": r.latencies,
                            "checks": r.checks, "extra": r.extra,
                        }
                        for r in rows
                    ],
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                f,
                indent=1,
            )
    if a.keep:
        print(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print("attack", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--quick", action="store_true", help="tiny counts and timeouts (CI smoke)")
    p.add_argument("--only", help="comma-separated attack names")
    p.add_argument("--list", action="store_true", help="list the attacks and exit")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    a = p.parse_args()
    if a.list:
        for x in ATTACKS:
            print(f"{x.name:28} {x.title}")
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("the attack script reads /proc: Linux only")
    return asyncio.run(amain(a))


if __name__ == "__main__":
    sys.exit(main())
