"""
Tests for C{twistd smtphooks --workers N} (L{smtphooks._workers}): the
master's bookkeeping with a fake reactor (spawning, restarts with backoff,
graceful stop, log relay), socket adoption in this process, and end to end
with twistd subprocesses and real clients.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import smtplib
import socket
import sys
import urllib.request
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtphooks import SMTPServer
from smtphooks._workers import (
    HEALTHY_UPTIME,
    KILL_MARGIN,
    RESTART_MAX_DELAY,
    RESTART_MIN_DELAY,
    WorkersService,
    _BindingReactor,
    _LogRelay,
    _SharedSocket,
    _WorkerProcess,
    adopted_endpoint,
)
from smtphooks.tap import Options, makeService

from .certs import test_pki
from .support import require_tool, run_process
from .test_twistd import (
    ROOT,
    STARTUP,
    ServerProcess,
    TwistdTestCase,
    _environment,
    free_port,
    twistd_argv,
)
from .wire import PATIENCE, SERVER_NAME, connect, up_to_data, with_smtp


async def poll_until(
    condition: Callable[[], object], timeout: float = PATIENCE, interval: float = 0.02
) -> None:
    """
    Wait until C{condition()} is true, checking every C{interval} seconds of
    the global reactor, for at most C{timeout} seconds (a bound, not a
    sleep).

    @raise AssertionError: when the time is up.
    """
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await task.deferLater(reactor, interval)


# -- the master, with a fake reactor ------------------------------------------


class FakeProcessTransport:
    """
    What a L{_WorkerProcess} uses of its transport.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written: list[tuple[int, bytes]] = []
        self.signals: list[str] = []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written.append((fd, data))

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class PoolReactor(Clock):
    """
    A clock that records spawned processes instead of running them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[dict[str, Any]] = []
        self._pid = 1000

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> Any:
        self._pid += 1
        transport = FakeProcessTransport(self._pid)
        protocol.makeConnection(transport)
        self.spawned.append(dict(protocol=protocol, executable=executable, args=args, **kw))
        return transport

    def callWhenRunning(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


class MasterTests(SynchronousTestCase):
    """
    L{WorkersService} starts N workers with the sockets and the command
    line, restarts the ones that die with a bounded backoff, and stops them
    gracefully, then by force.
    """

    def setUp(self) -> None:
        self.reactor = PoolReactor()
        self.options = Options(self.reactor)
        self.options.parseOptions(
            [
                "--maildir", self.mktemp(), "--workers", "3", "--close-timeout", "20",
                "--listen", "tcp:2525:interface=127.0.0.1",
            ]
        )
        self.service = WorkersService(self.options)
        # As if the sockets were bound: file descriptor 17.
        self.service.ports = []
        self.service._listeners = [([17], "AF_INET", "tcp:2525:interface=127.0.0.1")]

    def start(self) -> None:
        with capturedLogs():
            self.service.startService()

    def end(self, worker: _WorkerProcess, reason: BaseException) -> None:
        worker.processEnded(Failure(reason))

    def test_make_service(self) -> None:
        """
        C{--workers 3} makes a L{WorkersService} named C{smtp}.
        """
        service = makeService(self.options)
        smtp = service.getServiceNamed("smtp")  # type: ignore[attr-defined]
        self.assertIsInstance(smtp, WorkersService)
        self.assertEqual(smtp.count, 3)

    def test_spawn(self) -> None:
        """
        Each worker runs C{python -m smtphooks._workers} in the directory
        the command line was parsed in, with the socket as its file
        descriptor 3 and its configuration (the same command line) on
        standard input, without systemd's variables.
        """
        self.patch(os, "environ", dict(os.environ, LISTEN_FDS="1", LISTEN_PID="1"))
        self.start()
        self.assertEqual(len(self.reactor.spawned), 3)
        for number, spawned in enumerate(self.reactor.spawned, 1):
            self.assertEqual(
                spawned["args"], [sys.executable, "-m", "smtphooks._workers", f"--worker={number}"]
            )
            self.assertEqual(spawned["childFDs"], {0: "w", 1: "r", 2: "r", 3: 17})
            self.assertEqual(spawned["path"], self.options.cwd)
            self.assertNotIn("LISTEN_FDS", spawned["env"])
            self.assertNotIn("LISTEN_PID", spawned["env"])
            transport = spawned["protocol"].transport
            ((fd, data),) = transport.written
            self.assertEqual(fd, 0)
            self.assertTrue(data.endswith(b"\n"))
            config = json.loads(data)
            self.assertEqual(config["worker"], number)
            self.assertEqual(config["options"], self.options.argv)
            self.assertEqual(
                config["listeners"],
                [{"fd": 3, "family": "AF_INET", "description": "tcp:2525:interface=127.0.0.1"}],
            )
        self.assertEqual(sorted(self.service.workers), [1, 2, 3])

    def test_restart_backoff(self) -> None:
        """
        A worker that dies soon after its start is restarted after a delay
        that doubles up to L{RESTART_MAX_DELAY}; one that had run for
        L{HEALTHY_UPTIME} is restarted at once.  Each death is logged.
        """
        self.start()
        delays = []
        with capturedLogs() as events:
            for _ in range(10):
                worker = self.service.workers[2]
                self.reactor.advance(0.1)
                self.end(worker, ProcessTerminated(signal=9))
                self.assertNotIn(2, self.service.workers)
                (call,) = self.reactor.getDelayedCalls()
                delays.append(round(call.getTime() - self.reactor.seconds(), 6))
                self.reactor.advance(delays[-1])
                self.assertIn(2, self.service.workers)
            worker = self.service.workers[2]
            self.reactor.advance(HEALTHY_UPTIME)
            self.end(worker, ProcessTerminated(exitCode=3))
            self.reactor.advance(0)
            self.assertIn(2, self.service.workers)
        self.assertEqual(delays[:4], [RESTART_MIN_DELAY, 1.0, 2.0, 4.0])
        self.assertEqual(delays[-1], RESTART_MAX_DELAY)
        self.assertEqual(len(self.reactor.spawned), 3 + 11)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 11)
        self.assertEqual(warnings[0]["how"], "was killed by signal 9")
        self.assertEqual(warnings[-1]["how"], "exited with status 3")
        self.assertEqual(warnings[-1]["delay"], 0)

    def test_stop(self) -> None:
        """
        Stopping sends SIGTERM to every worker and waits for them; after
        C{--close-timeout} plus L{KILL_MARGIN} seconds, the ones still
        running get SIGKILL.  No worker is restarted meanwhile.
        """
        self.start()
        workers = [self.service.workers[n] for n in (1, 2, 3)]
        with capturedLogs() as events:
            d = self.service.stopService()
            for worker in workers:
                self.assertEqual(worker.transport.signals, ["TERM"])  # type: ignore[union-attr]
            self.end(workers[0], ProcessDone(0))
            self.end(workers[1], ProcessTerminated(exitCode=0))
            self.assertNoResult(d)
            self.reactor.advance(20 + KILL_MARGIN - 0.1)
            self.assertEqual(workers[2].transport.signals, ["TERM"])  # type: ignore[union-attr]
            self.reactor.advance(0.1)
            self.assertEqual(
                workers[2].transport.signals, ["TERM", "KILL"]  # type: ignore[union-attr]
            )
            self.end(workers[2], ProcessTerminated(signal=9))
            self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 3)
        texts = [e.get("log_format", "") for e in events]
        self.assertIn("stopped: every worker has exited", texts)

    def test_stop_cancels_restart(self) -> None:
        """
        A restart that is waiting when the service stops does not happen.
        """
        self.start()
        self.end(self.service.workers[1], ProcessTerminated(signal=9))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        d = self.service.stopService()
        for worker in list(self.service.workers.values()):
            self.end(worker, ProcessDone(0))
        self.successResultOf(d)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(self.reactor.spawned), 3)

    def test_relay(self) -> None:
        """
        A worker's JSON log lines are logged by the master with their time,
        level and namespace, and its number and pid in the system field;
        other output is logged as text, standard error as warnings.
        """
        self.start()
        worker = self.service.workers[1]
        out = io.StringIO()
        Logger(namespace="smtphooks.maildir", observer=_LogRelay(out)).info(
            "queued {id} {{not a field}}", id="ABC"
        )
        with capturedLogs() as events:
            worker.childDataReceived(1, out.getvalue().encode()[:10])
            worker.childDataReceived(1, out.getvalue().encode()[10:] + b"plain text\n")
            worker.childDataReceived(2, b"Traceback (most recent call last):\n\n")
            worker.childDataReceived(1, b"no newline")
            worker.childConnectionLost(1)
        from twisted.logger import formatEvent

        self.assertEqual(
            [(formatEvent(e), e["log_level"].name, e["log_system"]) for e in events],
            [
                ("queued ABC {not a field}", "info", "smtphooks.maildir#info worker 1 pid 1001"),
                ("plain text", "info", "smtphooks.workers#info worker 1 pid 1001"),
                (
                    "Traceback (most recent call last):",
                    "warn",
                    "smtphooks.workers#warn worker 1 pid 1001",
                ),
                ("no newline", "info", "smtphooks.workers#info worker 1 pid 1001"),
            ],
        )
        self.assertEqual(events[0]["worker_pid"], 1001)


# -- adopting the master's sockets, in this process ---------------------------


class AdoptionTests(TestCase):
    """
    A socket bound as the master binds it accepts nothing until a server
    adopts it as a worker does; C{ssl:} endpoints get their TLS in the
    adopting process.
    """

    async def share(self, description: str, **server_options: Any) -> tuple[int, SMTPServer]:
        from twisted.internet import reactor

        master = await serverFromString(_BindingReactor(reactor), description).listen(
            _SharedSocket()
        )
        self.addCleanup(master.stopListening)
        self.assertNotIn(master, reactor.getReaders())
        fd = os.dup(master.fileno())
        family = socket.socket(fileno=os.dup(fd)).family
        server = SMTPServer(disable_reverse_lookup=True, name=SERVER_NAME, **server_options)
        received: list[bytes] = []

        async def on_data(stream: Any, session: Any) -> None:
            received.append(await stream.read())

        server.on_data = on_data
        server.received = received  # type: ignore[attr-defined]
        await server.listen(adopted_endpoint(reactor, fd, family, description))
        os.close(fd)
        self.addCleanup(server.close, 5)
        return master.getHost().port, server

    async def test_tcp(self) -> None:
        """
        A plain C{tcp:} socket.
        """
        port, server = await self.share("tcp:0:interface=127.0.0.1")

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: a\r\n\r\nb\r\n")

        self.assertEqual(await with_smtp(port, send), {})
        received = server.received  # type: ignore[attr-defined]
        self.assertEqual(received, [b"Subject: a\r\n\r\nb\r\n"])

    async def test_reuse_port_group(self) -> None:
        """
        With C{reuse_port} = 3, the master makes three C{SO_REUSEPORT}
        sockets on the port the first one got, none of them read.
        """
        from twisted.internet import reactor

        binding = _BindingReactor(reactor, 3)
        port = await serverFromString(binding, "tcp:0:interface=127.0.0.1").listen(_SharedSocket())
        group = [port, *port.siblings]
        for member in group:
            self.addCleanup(member.stopListening)
        self.assertEqual(len(group), 3)
        self.assertEqual(len({member.getHost().port for member in group}), 1)
        for member in group:
            self.assertNotIn(member, reactor.getReaders())
            skt = socket.socket(fileno=os.dup(member.fileno()))
            try:
                self.assertEqual(skt.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            finally:
                skt.close()

    async def test_ssl(self) -> None:
        """
        An C{ssl:} socket: the adopting server speaks TLS from the first
        byte, with the certificate named in the description.
        """
        pki = test_pki()
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={pki.server.key_path}"
            f":certKey={pki.server.cert_path}"
        )
        port, server = await self.share(description)

        def send() -> Any:
            with smtplib.SMTP_SSL(
                "127.0.0.1", port, context=pki.client_context(), timeout=PATIENCE
            ) as smtp:
                return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: s\r\n\r\nt\r\n")

        self.assertEqual(await deferToThread(send), {})
        received = server.received  # type: ignore[attr-defined]
        self.assertEqual(received, [b"Subject: s\r\n\r\nt\r\n"])


# -- end to end ---------------------------------------------------------------

_STARTED = re.compile(rb"started worker (\d+) \(pid (\d+)\)")


class WorkersTwistdTests(TwistdTestCase):
    """
    C{twistd -n smtphooks --workers N} as a subprocess.
    """

    async def start_workers(self, count: int, *args: str) -> tuple[ServerProcess, int]:
        """
        Start the server with C{--workers count} and wait until every
        worker serves.
        """
        process, port = await self.start("--workers", str(count), *args)
        for number in range(1, count + 1):
            await process.wait_for(f"] worker {number} ready".encode())
        return process, port

    def worker_pids(self, process: ServerProcess) -> dict[int, list[int]]:
        """
        The pids of each worker, in the order they were started.
        """
        pids: dict[int, list[int]] = {}
        for number, pid in _STARTED.findall(process.output):
            pids.setdefault(int(number), []).append(int(pid))
        return pids

    async def stop_all(self, process: ServerProcess) -> None:
        """
        SIGTERM the master: it stops every worker, and dies by the signal as
        twistd does; no process is left.
        """
        pids = [pid for started in self.worker_pids(process).values() for pid in started]
        await self.stop(process)
        self.assertIn(b"stopped: every worker has exited", process.output)
        for pid in pids:
            self.assertFalse(alive(pid), pid)

    async def test_smtp_source(self) -> None:
        """
        Two workers, Postfix's smtp-source with 10 sessions and 200
        messages: 200 files in C{new/}; more than one worker stored them (the
        pid is in each Maildir file name and in each log line).
        """
        smtp_source = require_tool("smtp-source")
        process, port = await self.start_workers(2)
        code, out, err = await run_process(
            [
                smtp_source, "-s", "10", "-m", "200", "-f", "a@example.org",
                "-t", "b@example.com", f"127.0.0.1:{port}",
            ],
            timeout=90,
        )
        self.assertEqual(code, 0, out + err)
        names = os.listdir(os.path.join(self.maildir, "new"))
        self.assertEqual(len(names), 200)
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])
        stored = {int(m.group(1)) for m in (re.search(r"P(\d+)Q", n) for n in names) if m}
        workers = {pid for started in self.worker_pids(process).values() for pid in started}
        self.assertLessEqual(stored, workers)
        self.assertGreater(len(stored), 1, "one worker took every connection")
        logged = {int(p) for p in re.findall(r"worker \d pid (\d+)\] queued ", process.log())}
        self.assertEqual(logged, stored)
        await self.stop_all(process)

    async def test_reuse_port(self) -> None:
        """
        With C{--reuse-port}, each worker has its own socket and the kernel
        spreads connections by their addresses: 20 persistent sessions
        (which one worker would otherwise take all of, when they arrive at
        once) go to both workers.
        """
        smtp_source = require_tool("smtp-source")
        process, port = await self.start_workers(2, "--reuse-port")
        self.assertEqual(process.output.count(b"(shared socket) starting on"), 2)
        code, out, err = await run_process(
            [
                smtp_source, "-d", "-s", "20", "-m", "200", "-f", "a@example.org",
                "-t", "b@example.com", f"127.0.0.1:{port}",
            ],
            timeout=90,
        )
        self.assertEqual(code, 0, out + err)
        names = os.listdir(os.path.join(self.maildir, "new"))
        self.assertEqual(len(names), 200)
        stored = {int(m.group(1)) for m in (re.search(r"P(\d+)Q", n) for n in names) if m}
        self.assertEqual(len(stored), 2)
        await self.stop_all(process)

    async def test_worker_restarted(self) -> None:
        """
        A worker killed with SIGKILL is logged and restarted; the server
        keeps serving.
        """
        process, port = await self.start_workers(2)
        (first,) = self.worker_pids(process)[1]
        (other,) = self.worker_pids(process)[2]
        os.kill(first, signal.SIGKILL)
        await process.wait_for(f"worker 1 (pid {first}) was killed by signal 9".encode())
        await poll_until(lambda: process.output.count(b"] worker 1 ready") == 2, STARTUP)
        self.assertEqual(len(self.worker_pids(process)[1]), 2)
        self.assertEqual(self.worker_pids(process)[2], [other])
        self.assertFalse(alive(first))

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: r\r\n\r\nr\r\n")

        for _ in range(4):
            self.assertEqual(await with_smtp(port, send), {})
        self.assertEqual(len(self.delivered()), 4)
        await self.stop_all(process)

    async def test_master_killed(self) -> None:
        """
        Workers whose master dies (SIGKILL: it cannot stop them) notice
        that their standard input closed, and stop on their own.
        """
        process, port = await self.start_workers(2)
        pids = [pid for started in self.worker_pids(process).values() for pid in started]
        process.signal("KILL")
        await process.ended
        await poll_until(lambda: not any(alive(pid) for pid in pids), STARTUP)

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) != 0

        self.assertTrue(refused())

    async def test_sigterm_drains(self) -> None:
        """
        On SIGTERM to the master, a session in the middle of DATA finishes
        its message (answered 250, stored), an idle session gets 421, new
        connections are refused, and every process ends.
        """
        process, port = await self.start_workers(2, "--close-timeout", "20")
        busy = await connect(self, port)
        idle = await connect(self, port)
        await up_to_data(self, busy)
        busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
        pids = [pid for started in self.worker_pids(process).values() for pid in started]
        process.signal("TERM")
        reply = await idle.reply()
        self.assertEqual(reply.code, 421, str(reply))

        def refused() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) != 0

        await poll_until(refused)
        reply = await busy.command(b"second half\r\n.")
        self.assertEqual(reply.code, 250, str(reply))
        await busy.lost
        code = await process.ended.addTimeout(STARTUP, _reactor())
        self.assertEqual(code, -signal.SIGTERM, process.log())
        (data,) = self.delivered()
        self.assertEqual(
            self.split_trace(data)[2], b"Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n"
        )
        self.assertNotIn(b"Traceback", process.output)
        self.assertIn(b"stopped: every worker has exited", process.output)
        for pid in pids:
            self.assertFalse(alive(pid), pid)

    async def test_tls(self) -> None:
        """
        Workers build their TLS from the same files: STARTTLS with
        C{--tls-cert/--tls-key} on a C{tcp:} listener, and implicit TLS on
        an C{ssl:} listener.
        """
        pki = test_pki()
        tls_port = free_port()
        process, port = await self.start_workers(
            2,
            "--tls-cert", pki.server.cert_path, "--tls-key", pki.server.key_path,
            "--listen",
            f"ssl:{tls_port}:interface=127.0.0.1:privateKey={pki.server.key_path}"
            f":certKey={pki.server.cert_path}",
        )

        def starttls(smtp: smtplib.SMTP) -> Any:
            smtp.starttls(context=pki.client_context())
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: 1\r\n\r\n1\r\n")

        def implicit() -> Any:
            with smtplib.SMTP_SSL(
                "127.0.0.1", tls_port, context=pki.client_context(), timeout=PATIENCE
            ) as smtp:
                return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: 2\r\n\r\n2\r\n")

        self.assertEqual(await with_smtp(port, starttls), {})
        self.assertEqual(await deferToThread(implicit), {})
        messages = self.delivered()
        self.assertEqual(len(messages), 2)
        for data in messages:
            self.assertRegex(self.split_trace(data)[1].decode(), r" with ESMTPS \(TLSv1\.[23] ")
        await self.stop_all(process)

    async def test_unix_lmtp(self) -> None:
        """
        A C{unix:} socket is shared too (here with C{--lmtp}); the master
        removes it when it stops.
        """
        path = os.path.join(self.workdir, "lmtp.sock")
        process, port = await self.start_workers(2, "--lmtp", "--listen", f"unix:{path}")

        def send() -> Any:
            lmtp = smtplib.LMTP(path, local_hostname="client.example.net")
            try:
                return lmtp.sendmail("a@example.org", ["b@example.com"], b"Subject: u\r\n\r\nu\r\n")
            finally:
                lmtp.quit()

        self.assertEqual(await deferToThread(send), {})
        (data,) = self.delivered()
        self.assertRegex(self.split_trace(data)[1].decode(), r" with LMTP ")
        await self.stop_all(process)
        self.assertFalse(os.path.exists(path))

    async def test_haproxy(self) -> None:
        """
        A C{haproxy:tcp:} listener is shared too: each worker reads the
        PROXY header, and the message's trace header names the client that
        the header gave.
        """
        proxied = free_port()
        process, port = await self.start_workers(
            2, "--listen", f"haproxy:tcp:{proxied}:interface=127.0.0.1"
        )
        client = await connect(self, proxied, greeting=False)
        client.send(b"PROXY TCP4 192.0.2.7 192.0.2.25 40000 25\r\n")
        greeting = await client.reply()
        self.assertEqual(greeting.code, 220, str(greeting))
        for line, code in [
            ("EHLO client.example.net", 250),
            ("MAIL FROM:<a@example.org>", 250),
            ("RCPT TO:<b@example.com>", 250),
            ("DATA", 354),
            ("Subject: p\r\n\r\np\r\n.", 250),
        ]:
            reply = await client.command(line)
            self.assertEqual(reply.code, code, f"{line}: {reply}")
        (data,) = self.delivered()
        self.assertIn("([192.0.2.7])", self.split_trace(data)[1].decode())
        await self.stop_all(process)

    async def test_refused_like_one_process(self) -> None:
        """
        What one process cannot listen on, the master refuses too, before
        any worker runs: one line, exit status 1.
        """
        pki = test_pki()
        description = (
            f"haproxy:ssl:{free_port()}:interface=127.0.0.1:privateKey={pki.server.key_path}"
            f":certKey={pki.server.cert_path}"
        )
        code, out, err = await run_process(
            twistd_argv("-n", "--pidfile=", "smtphooks", "--workers", "2", "--listen", description),
            env=_environment(self.workdir),
            path=self.workdir,
        )
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"the PROXY header comes before TLS", err.strip().splitlines()[-1])
        self.assertNotIn(b"Traceback", out + err)
        self.assertNotIn(b"started worker", out)

    async def test_metrics(self) -> None:
        """
        With C{--metrics}, the master serves the sum of the workers'
        metrics, and what a killed worker had counted stays counted.
        """
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            self.skipTest("prometheus_client is not installed")
        smtp_source = require_tool("smtp-source")
        metrics_port = free_port()
        process, port = await self.start_workers(
            2, "--metrics", f"tcp:{metrics_port}:interface=127.0.0.1"
        )
        await process.wait_for(b"serving Prometheus metrics on")
        code, out, err = await run_process(
            [
                smtp_source, "-s", "4", "-m", "40", "-f", "a@example.org",
                "-t", "b@example.com", f"127.0.0.1:{port}",
            ],
            timeout=60,
        )
        self.assertEqual(code, 0, out + err)
        text = await deferToThread(scrape, metrics_port)
        self.assertEqual(metric(text, 'smtphooks_messages_total{result="accepted"}'), 40)
        self.assertEqual(metric(text, "smtphooks_connections_total"), 40)
        self.assertEqual(metric(text, 'smtphooks_replies_total{code="354"}'), 40)
        self.assertEqual(
            metric(text, 'smtphooks_hook_duration_seconds_count{hook="on_data"}'), 40
        )
        (first,) = self.worker_pids(process)[1]
        os.kill(first, signal.SIGKILL)
        await poll_until(lambda: process.output.count(b"] worker 1 ready") == 2, STARTUP)
        text = await deferToThread(scrape, metrics_port)
        self.assertEqual(metric(text, 'smtphooks_messages_total{result="accepted"}'), 40)
        self.assertEqual(metric(text, "smtphooks_connections_open"), 0)
        await self.stop_all(process)

    async def test_systemd(self) -> None:
        """
        A socket passed by systemd to the master is shared with the workers.
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        argv = twistd_argv(
            "-n", "--pidfile=", "smtphooks", "--listen", "systemd:domain=INET:index=0",
            "--disable-reverse-lookup", "--workers", "2",
        )
        script = 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp exec "$0" "$@"'
        shell = ["/bin/sh", "-c", script, *argv]
        process = ServerProcess()
        _reactor().spawnProcess(
            process,
            shell[0],
            shell,
            env=_environment(self.workdir),
            path=self.workdir,
            childFDs={0: "w", 1: "r", 2: "r", 3: listener.fileno()},
        )
        self.addCleanup(self._stop, process)
        for number in (1, 2):
            await process.wait_for(f"] worker {number} ready".encode())
        listener.close()

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: sd\r\n\r\nsd\r\n")

        self.assertEqual(await with_smtp(port, send), {})
        self.assertEqual(len(self.delivered()), 1)
        await self.stop_all(process)


class PreforkRecipeTests(TestCase):
    """
    The recipe of the operations guide for programs (listen, fork, each child
    adopts the socket) runs as written, with two workers, as the leader of its
    own process group (as under systemd).
    """

    timeout = 120

    def recipe(self) -> str:
        """
        The recipe's text, with two workers whatever the number of CPUs.
        """
        with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
            guide = f.read()
        match = re.search(r"```python\n(# prefork\.py.*?)```", guide, re.S)
        assert match is not None, "no prefork.py example in docs/operations.md"
        workers = "WORKERS = os.cpu_count() or 1"
        assert workers in match.group(1), f"the recipe no longer says {workers!r}"
        return match.group(1).replace(workers, "WORKERS = 2")

    async def start(self) -> tuple[ServerProcess, int, int, list[int]]:
        """
        Run the recipe in a new session (so in a process group of its own) in
        C{self.workdir}, and wait until it accepts and has forked both
        workers.

        @return: the process, its pid (also its process group), its port and
            the workers' pids.
        """
        self.workdir = workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        script = os.path.join(workdir, "prefork.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(self.recipe())
        port = free_port()
        process = ServerProcess()
        pid = _reactor().spawnProcess(
            process, sys.executable, [sys.executable, "-c", SETSID, script, str(port)],
            env=_environment(workdir), path=workdir,
        ).pid
        self.addCleanup(self.kill_group, process, pid)
        await poll_until(lambda: accepting(port) and len(children_of(pid)) == 2, STARTUP)
        return process, pid, port, sorted(children_of(pid))

    def kill_group(self, process: ServerProcess, pid: int) -> Any:
        """
        Kill whatever is left of the recipe's process group, and wait for it.
        """
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return process.ended

    async def stopped(self, process: ServerProcess, port: int, workers: list[int]) -> int:
        """
        Wait until the recipe and every worker have ended (the workers share
        its output pipes), then check that nothing listens any more and that
        nothing was logged as an error.

        @return: the recipe's exit status.
        """
        try:
            await poll_until(lambda: process.code is not None, STARTUP)
        except AssertionError:
            running = [pid for pid in workers if alive(pid)]
            self.fail(f"still running (workers {running}):\n{process.log()}")
        self.assertFalse(accepting(port))
        self.assertEqual([pid for pid in workers if alive(pid)], [])
        self.assertNotIn(b"Unhandled Error", process.stderr, process.log())
        self.assertNotIn(b"Traceback", process.stderr, process.log())
        assert process.code is not None
        return process.code

    async def test_serves_and_stops_on_sigterm_to_the_group(self) -> None:
        """
        Both workers serve one port and deliver to the Maildir. SIGTERM to the
        whole process group (systemd's KillMode=control-group) stops them:
        listening ends, a session in the middle of DATA finishes its message,
        and a second SIGTERM to the group while it drains (each worker is
        told twice anyway: by the signal and by its parent) is harmless. All
        ends with exit status 0 and no "Unhandled Error".
        """
        process, pid, port, workers = await self.start()
        for _ in range(3):
            self.assertEqual(await with_smtp(port, send_one), {})
        busy = await connect(self, port)
        await up_to_data(self, busy)
        busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
        os.killpg(pid, signal.SIGTERM)
        # Once nothing listens, every worker has acted on the first SIGTERM, so the
        # second one cannot merge with it.
        await poll_until(lambda: not accepting(port), STARTUP)
        os.killpg(pid, signal.SIGTERM)
        reply = await busy.command(b"second half\r\n.")
        self.assertEqual(reply.code, 250, str(reply))
        self.assertEqual(await self.stopped(process, port, workers), 0, process.log())
        names = os.listdir(os.path.join(self.workdir, "Maildir", "new"))
        self.assertEqual(len(names), 4)
        self.assertLessEqual({int(re.findall(r"P(\d+)Q", name)[0]) for name in names}, set(workers))

    async def test_sigterm_after_a_worker_died(self) -> None:
        """
        Once a worker has been killed (SIGKILL) and reaped by the parent, the
        other worker still serves, and SIGTERM to the parent alone stops it:
        exit status 0, no traceback, nothing left listening.
        """
        process, pid, port, (dead, other) = await self.start()
        os.kill(dead, signal.SIGKILL)
        await poll_until(lambda: not os.path.exists(f"/proc/{dead}"), STARTUP)  # reaped
        self.assertEqual(await with_smtp(port, send_one), {})
        process.signal("TERM")
        self.assertEqual(await self.stopped(process, port, [other]), 0, process.log())

    async def test_sigterm_to_one_worker(self) -> None:
        """
        SIGTERM to one worker stops that worker alone: the other keeps
        serving until SIGTERM to the parent stops it.
        """
        process, pid, port, (stopped, other) = await self.start()
        self.assertEqual(await with_smtp(port, send_one), {})
        os.kill(stopped, signal.SIGTERM)
        await poll_until(lambda: not os.path.exists(f"/proc/{stopped}"), STARTUP)
        self.assertTrue(alive(other))
        self.assertEqual(await with_smtp(port, send_one), {})
        process.signal("TERM")
        self.assertEqual(await self.stopped(process, port, [other]), 0, process.log())

    async def test_workers_stop_when_the_parent_is_killed(self) -> None:
        """
        When the parent is killed (SIGKILL: it cannot tell anyone), the
        workers notice and exit; nothing is left listening.
        """
        process, pid, port, workers = await self.start()
        self.assertEqual(await with_smtp(port, send_one), {})
        os.kill(pid, signal.SIGKILL)
        await poll_until(
            lambda: not any(alive(worker) for worker in workers) and not accepting(port), STARTUP
        )


#: Runs the rest of its command line in a new session: a process group of its own.
SETSID = "import os, sys; os.setsid(); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"


def send_one(smtp: smtplib.SMTP) -> Any:
    """
    Send one message (to run with L{with_smtp}).
    """
    return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: f\r\n\r\nf\r\n")


def accepting(port: int) -> bool:
    """
    Whether something accepts connections on 127.0.0.1:C{port}.
    """
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def children_of(pid: int) -> set[int]:
    """
    The pids of the processes whose parent is C{pid} (read from C{/proc}).
    """
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.add(int(entry))
    return found


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def alive(pid: int) -> bool:
    """
    Whether a process exists and is not a zombie (an orphan's zombie waits
    for an init process that may be slow to reap it).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def scrape(port: int) -> str:
    """
    C{GET /metrics} (blocking: run it in a thread).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=PATIENCE) as r:
        body: bytes = r.read()
    return body.decode()


def metric(text: str, name: str) -> float | None:
    """
    The value of one sample in a text exposition.
    """
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None

