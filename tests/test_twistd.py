"""
End-to-end tests of C{twistd -n smtphooks}: the plugin is started as a
subprocess on a free loopback port with a temporary Maildir, real clients
(swaks, smtplib, Postfix's smtp-source) send mail, and the tests read the
files in C{Maildir/new}.

By default the server runs from this source tree (C{PYTHONPATH} is set to
it).  To test an installed copy instead, set C{SMTPHOOKS_TEST_PYTHON} to the
interpreter of a virtualenv where smtphooks is installed
(C{pip install .}): the tree is then kept off its path, except for the
C{tests} package (for C{--hooks tests.tap_hooks:...}).
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import sys
import urllib.request
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from smtphooks.tap import hash_password

from .certs import ALPHA_NAME, test_pki
from .support import require_tool, run_process
from .wire import PATIENCE, connect, up_to_data, with_smtp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_NAME = "mx.example.test"
#: A log line the plugin writes once it listens.
LISTENING = b"listening on"
#: How long a test waits for the server to do something (a bound, not a sleep).
STARTUP = 30.0


def _python() -> str:
    return os.environ.get("SMTPHOOKS_TEST_PYTHON") or sys.executable


def _environment(workdir: str) -> dict[str, str]:
    """
    The subprocess's environment: this tree on C{PYTHONPATH}, or (testing an
    installed copy) only a directory that links to the C{tests} package.
    """
    env = dict(os.environ)
    if os.environ.get("SMTPHOOKS_TEST_PYTHON"):
        shim = os.path.join(workdir, "_path")
        if not os.path.isdir(shim):
            os.makedirs(shim)
            os.symlink(os.path.join(ROOT, "tests"), os.path.join(shim, "tests"))
        env["PYTHONPATH"] = shim
    else:
        env["PYTHONPATH"] = ROOT
    env.pop("PYTHONSTARTUP", None)
    return env


def twistd_argv(*args: str) -> list[str]:
    """
    The command line of C{twistd} (from the interpreter under test).
    """
    code = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"
    return [_python(), "-c", code, *args]


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class ServerProcess(ProcessProtocol):
    """
    A running C{twistd}: its output as it comes, and its end.

    @ivar output: standard output and error so far (C{twistd -n} logs to
        standard output).
    @ivar ended: fires with the exit code (C{-N} for signal C{N}).
    """

    def __init__(self) -> None:
        self.output = b""
        self.stderr = b""
        self.ended: Deferred[int] = Deferred()
        self.code: int | None = None
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    def errReceived(self, data: bytes) -> None:
        self.output += data
        self.stderr += data
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            if entry[0] in self.output:
                self._waiting.remove(entry)
                entry[1].callback(None)

    def wait_for(self, text: bytes, timeout: float = STARTUP) -> Deferred[None]:
        """
        @return: a L{Deferred} that fires once C{text} has appeared in the
            output; it fails if the process ends first or C{timeout} passes.
        """
        from twisted.internet import reactor

        if text in self.output:
            return succeed(None)
        if self.code is not None:
            raise AssertionError(f"twistd ended ({self.code}) without {text!r}:\n{self.log()}")
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        return d.addTimeout(timeout, reactor)

    def log(self) -> str:
        return self.output.decode("utf-8", "replace")

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            code = 0
        elif isinstance(value, ProcessTerminated):
            code = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        else:
            code = -999
        self.code = code
        for text, d in self._waiting:
            d.errback(AssertionError(f"twistd ended ({code}) without {text!r}:\n{self.log()}"))
        self._waiting = []
        self.ended.callback(code)

    def signal(self, name: str) -> None:
        assert self.transport is not None
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


class TwistdTestCase(TestCase):
    """
    Starts C{twistd -n smtphooks} in a fresh directory.
    """

    timeout = 120

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.maildir = os.path.join(self.workdir, "Maildir")

    async def start(self, *args: str) -> tuple[ServerProcess, int]:
        """
        Start the server with C{args} on a free port and wait until it
        listens; it is stopped (SIGKILL if need be) when the test ends.

        @return: the process and its port.
        """
        from twisted.internet import reactor

        port = free_port()
        argv = twistd_argv(
            "-n",
            "--pidfile=",
            "smtphooks",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--name",
            SERVER_NAME,
            "--disable-reverse-lookup",
            *args,
        )
        process = ServerProcess()
        reactor.spawnProcess(
            process, argv[0], argv, env=_environment(self.workdir), path=self.workdir
        )
        self.addCleanup(self._stop, process)
        await process.wait_for(LISTENING)
        return process, port

    def _stop(self, process: ServerProcess) -> Deferred[Any]:
        if process.code is not None:
            return succeed(None)
        process.signal("KILL")
        return process.ended

    async def stop(self, process: ServerProcess) -> None:
        """
        SIGTERM the server; it must drain, stop, and die by that signal (as
        twistd does after a clean shutdown on a signal).
        """
        process.signal("TERM")
        code = await process.ended.addTimeout(STARTUP, _reactor())
        self.assertEqual(code, -signal.SIGTERM, process.log())
        self.assertIn(b"stopped: every session is closed", process.output)
        self.assertNotIn(b"Traceback", process.output)

    def delivered(self) -> list[bytes]:
        """
        The files in C{Maildir/new}, oldest first; C{tmp/} must be empty.
        """
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])
        new = os.path.join(self.maildir, "new")
        contents = []
        names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
        for name in names:
            with open(os.path.join(new, name), "rb") as f:
                contents.append(f.read())
        return contents

    def split_trace(self, data: bytes) -> tuple[bytes, bytes, bytes]:
        """
        @return: the C{Return-Path:} field, the unfolded C{Received:} field,
            and the message as the client sent it.
        """
        match = re.match(
            rb"(Return-Path: [^\r\n]*)\r\n(Received: [^\r\n]*(?:\r\n\t[^\r\n]*)*)\r\n", data
        )
        assert match is not None, data[:300]
        received = re.sub(rb"\r\n\t", b" ", match.group(2))
        return match.group(1), received, data[match.end():]


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class PluginTests(TwistdTestCase):
    """
    C{twistd smtphooks} as an operator uses it.
    """

    async def test_help_lists_plugin(self) -> None:
        """
        C{twistd --help} lists the plugin, from any directory.
        """
        code, out, err = await run_process(
            twistd_argv("--help"), env=_environment(self.workdir), path=self.workdir
        )
        self.assertEqual(code, 0, err)
        self.assertRegex(out.decode(), r"\n\s+smtphooks\s+A mail-receiving SMTP server")

    async def test_swaks(self) -> None:
        """
        Without delivery options, a message sent with swaks lands in
        C{./Maildir/new} with trace headers, and one log line says so.
        """
        swaks = require_tool("swaks")
        process, port = await self.start()
        code, out, err = await run_process(
            [
                swaks,
                "--server",
                f"127.0.0.1:{port}",
                "--helo",
                "client.example.net",
                "--from",
                "sender@example.org",
                "--to",
                "rcpt@example.com",
                "--header",
                "Subject: swaks test",
                "--body",
                "Hello from swaks.",
            ]
        )
        self.assertEqual(code, 0, out + err)
        self.assertRegex(out.decode(), r"<-  250 2\.0\.0 OK: queued as [0-9A-F]+")
        (data,) = self.delivered()
        return_path, received, message = self.split_trace(data)
        self.assertEqual(return_path, b"Return-Path: <sender@example.org>")
        self.assertRegex(
            received.decode(),
            r"^Received: from client\.example\.net \(\[127\.0\.0\.1\]\) by mx\.example\.test"
            r" \(smtphooks\) with ESMTP id [0-9A-F]+ for <rcpt@example\.com>; .+ [+-]\d{4}$",
        )
        self.assertIn(b"Subject: swaks test\r\n", message)
        self.assertIn(b"\r\n\r\nHello from swaks.\r\n", message)
        self.assertRegex(
            process.log(),
            r"queued [0-9A-F]+ from 127\.0\.0\.1 sender=<sender@example\.org> recipients=1"
            r" size=\d+ with ESMTP",
        )
        await self.stop(process)

    async def test_smtplib_byte_exact(self) -> None:
        """
        What smtplib sends (dot-stuffed lines, 8-bit text, long lines) is
        stored byte for byte after the trace headers.
        """
        process, port = await self.start("--maildir", "mail")
        self.maildir = os.path.join(self.workdir, "mail")
        message = (
            b"From: a@example.org\r\nTo: b@example.com\r\nSubject: exact\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\n"
            + "caf\u00e9 \u2713\r\n".encode()
            + b"x" * 900
            + b"\r\nlast line\r\n"
        )

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], message)

        refused = await with_smtp(port, send)
        self.assertEqual(refused, {})
        (data,) = self.delivered()
        self.assertEqual(self.split_trace(data)[2], message)
        await self.stop(process)

    async def test_hooks_reject_some(self) -> None:
        """
        C{--hooks} with a class from the test suite: its C{on_rcpt_to}
        rejects some recipients; it has no C{on_data}, so the others' mail
        goes to the Maildir.
        """
        process, port = await self.start("--hooks", "tests.tap_hooks:RejectSome")

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail(
                "a@example.org",
                ["ok@example.com", "reject-me@example.com"],
                b"Subject: some\r\n\r\nbody\r\n",
            )

        refused = await with_smtp(port, send)
        self.assertEqual(
            refused, {"reject-me@example.com": (550, b"5.1.1 No such user here")}
        )
        (data,) = self.delivered()
        self.assertIn(b" for <ok@example.com>;", self.split_trace(data)[1])
        self.assertIn(
            "rejected from 127.0.0.1: RCPT TO:<reject-me@example.com> sender=<a@example.org>:"
            " 550 5.1.1 No such user here",
            process.log(),
        )
        await self.stop(process)

    async def test_starttls_and_auth(self) -> None:
        """
        With C{--tls-cert/--tls-key} and C{--auth-users}, a client that
        uses STARTTLS (verifying the certificate) and logs in delivers; the
        C{Received:} header says ESMTPSA and names the cipher.  A wrong
        password gets 535, and without AUTH, MAIL gets 530.  No password
        reaches the log.
        """
        pki = test_pki()
        users = os.path.join(self.workdir, "users")
        with open(users, "w") as f:
            f.write(f"alice:{hash_password('wonderland', n=2**10)}\n")
        process, port = await self.start(
            "--tls-cert", pki.server.cert_path, "--tls-key", pki.server.key_path,
            "--auth-users", users,
        )

        def send(smtp: smtplib.SMTP) -> Any:
            smtp.starttls(context=pki.client_context())
            try:
                smtp.login("alice", "nope")
            except smtplib.SMTPAuthenticationError as e:
                wrong = e.smtp_code
            else:
                wrong = 0
            code, _ = smtp.mail("a@example.org")
            refused_mail = code
            smtp.rset()
            smtp.login("alice", "wonderland")
            smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: tls\r\n\r\nsecret\r\n")
            return wrong, refused_mail

        wrong, refused_mail = await with_smtp(port, send)
        self.assertEqual(wrong, 535)
        self.assertEqual(refused_mail, 530)
        (data,) = self.delivered()
        received = self.split_trace(data)[1]
        self.assertRegex(received.decode(), r" with ESMTPSA \(TLSv1\.[23] \S+\) id ")
        self.assertNotIn(b"wonderland", process.output)
        self.assertNotIn(b"nope", process.output)
        await self.stop(process)

    async def test_sni(self) -> None:
        """
        C{--sni NAME=CERT:KEY} serves that certificate to clients asking for
        NAME, and the default one to the others.
        """
        pki = test_pki()
        process, port = await self.start(
            "--tls-cert", pki.server.cert_path, "--tls-key", pki.server.key_path,
            "--sni", f"{ALPHA_NAME}={pki.alpha.cert_path}:{pki.alpha.key_path}",
        )

        def served(name: str) -> str:
            with socket.create_connection(("127.0.0.1", port), timeout=PATIENCE) as raw:
                stream = raw.makefile("rb")
                def reply() -> bytes:
                    while True:
                        line = stream.readline()
                        if line[3:4] != b"-":
                            return line
                reply()
                raw.sendall(b"EHLO client.example.net\r\n")
                reply()
                raw.sendall(b"STARTTLS\r\n")
                assert reply().startswith(b"220"), "STARTTLS refused"
                context = pki.client_context()
                with context.wrap_socket(raw, server_hostname=name) as tls:
                    cert = tls.getpeercert()
                    assert cert is not None
                    subject: Any = cert["subject"]
                    return str(dict(item[0] for item in subject)["commonName"])

        self.assertEqual(await deferToThread(served, ALPHA_NAME), ALPHA_NAME)
        self.assertEqual(await deferToThread(served, SERVER_NAME), SERVER_NAME)
        await self.stop(process)

    async def test_sigterm_drains(self) -> None:
        """
        On SIGTERM, a session in the middle of DATA finishes its message
        (answered 250, stored), an idle session gets 421, and the process
        ends.
        """
        process, port = await self.start("--close-timeout", "20")
        busy = await connect(self, port)
        idle = await connect(self, port)
        await up_to_data(self, busy)
        busy.send(b"Subject: drain\r\n\r\nfirst half\r\n")
        process.signal("TERM")
        await process.wait_for(b"stopping:")
        reply = await idle.reply()
        self.assertEqual(reply.code, 421, str(reply))
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

    async def test_write_failure(self) -> None:
        """
        When the Maildir cannot be written (its C{tmp} replaced by a file:
        a path trick that works as root), the client gets 451 4.3.0, the
        failure is logged, and nothing is in C{new/}.
        """
        process, port = await self.start()
        tmp = os.path.join(self.maildir, "tmp")
        os.rmdir(tmp)
        with open(tmp, "w"):
            pass

        def send(smtp: smtplib.SMTP) -> Any:
            try:
                smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: x\r\n\r\ny\r\n")
            except smtplib.SMTPDataError as e:
                return e.smtp_code, e.smtp_error
            return None

        result = await with_smtp(port, send)
        self.assertEqual(
            result, (451, b"4.3.0 Error writing message to disk, try again later")
        )
        self.assertEqual(os.listdir(os.path.join(self.maildir, "new")), [])
        await process.wait_for(b"not stored")
        await self.stop(process)

    async def test_smtp_source(self) -> None:
        """
        Postfix's smtp-source, 10 sessions and 2,000 messages: exactly
        2,000 files in C{new/}, none left in C{tmp/}.
        """
        smtp_source = require_tool("smtp-source")
        process, port = await self.start()
        code, out, err = await run_process(
            [
                smtp_source,
                "-s",
                "10",
                "-m",
                "2000",
                "-f",
                "a@example.org",
                "-t",
                "b@example.com",
                f"127.0.0.1:{port}",
            ],
            timeout=90,
        )
        self.assertEqual(code, 0, out + err)
        self.assertEqual(len(os.listdir(os.path.join(self.maildir, "new"))), 2000)
        self.assertEqual(os.listdir(os.path.join(self.maildir, "tmp")), [])
        await self.stop(process)

    async def test_systemd_socket_activation(self) -> None:
        """
        C{--listen systemd:domain=INET:index=0} serves on a socket passed
        the way systemd passes it (file descriptor 3, C{LISTEN_FDS},
        C{LISTEN_PID}).
        """
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        self.addCleanup(listener.close)
        port = listener.getsockname()[1]
        argv = twistd_argv(
            "-n", "--pidfile=", "smtphooks", "--listen", "systemd:domain=INET:index=0",
            "--disable-reverse-lookup",
        )
        # The shell sets LISTEN_PID to its own pid, which exec keeps.
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
        await process.wait_for(LISTENING)
        listener.close()

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: sd\r\n\r\nsd\r\n")

        self.assertEqual(await with_smtp(port, send), {})
        self.assertEqual(len(self.delivered()), 1)
        await self.stop(process)

    async def test_metrics(self) -> None:
        """
        C{--metrics} serves Prometheus metrics over HTTP: after a message
        sent with swaks, the counters, the replies by code and the hook
        histogram say so, next to the process metrics.
        """
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            self.skipTest("prometheus_client is not installed")
        swaks = require_tool("swaks")
        metrics_port = free_port()
        process, port = await self.start("--metrics", f"tcp:{metrics_port}:interface=127.0.0.1")
        await process.wait_for(b"serving Prometheus metrics on")
        code, out, err = await run_process(
            [
                swaks, "--server", f"127.0.0.1:{port}", "--helo", "client.example.net",
                "--from", "sender@example.org", "--to", "rcpt@example.com",
            ]
        )
        self.assertEqual(code, 0, out + err)

        def scrape() -> str:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=PATIENCE) as response:
                self.assertEqual(response.status, 200)
                return str(response.read().decode())

        text = await deferToThread(scrape)
        for line in [
            'smtphooks_messages_total{result="accepted"} 1.0',
            'smtphooks_messages_total{result="rejected"} 0.0',
            "smtphooks_transactions_total 1.0",
            "smtphooks_connections_total 1.0",
            'smtphooks_replies_total{code="354"} 1.0',
            'smtphooks_replies_total{code="221"} 1.0',
            'smtphooks_hook_duration_seconds_count{hook="on_data"} 1.0',
        ]:
            self.assertIn(line + "\n", text)
        self.assertRegex(text, r'smtphooks_message_bytes_total\{result="accepted"\} [1-9]')
        self.assertIn("process_resident_memory_bytes", text)
        self.assertNotIn("GET /metrics", process.log())
        await self.stop(process)

    async def test_twist(self) -> None:
        """
        C{twist smtphooks} runs the same server.
        """
        port = free_port()
        argv = [
            _python(),
            "-m",
            "twisted",
            "smtphooks",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--disable-reverse-lookup",
        ]
        process = ServerProcess()
        _reactor().spawnProcess(
            process, argv[0], argv, env=_environment(self.workdir), path=self.workdir
        )
        self.addCleanup(self._stop, process)
        await process.wait_for(LISTENING)

        def send(smtp: smtplib.SMTP) -> Any:
            return smtp.sendmail("a@example.org", ["b@example.com"], b"Subject: t\r\n\r\nt\r\n")

        self.assertEqual(await with_smtp(port, send), {})
        self.assertEqual(len(self.delivered()), 1)
        process.signal("TERM")
        code = await process.ended.addTimeout(STARTUP, _reactor())
        self.assertIn(code, (0, -signal.SIGTERM), process.log())


class StartupErrorTests(TwistdTestCase):
    """
    Mistakes stop twistd before anything listens: one line naming the
    problem, exit status 1, no traceback.
    """

    async def run_twistd(self, *args: str) -> tuple[int, str]:
        code, out, err = await run_process(
            twistd_argv("-n", "--pidfile=", "smtphooks", *args),
            env=_environment(self.workdir),
            path=self.workdir,
        )
        text = (out + err).decode("utf-8", "replace")
        self.assertNotIn("Traceback", text)
        return code, text

    async def test_port_in_use(self) -> None:
        """
        A port already in use: exit status 1 and one line on standard
        error; the pid file is not left behind.
        """
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        code, out, err = await run_process(
            twistd_argv(
                "-n",
                "--pidfile=twistd.pid",
                "smtphooks",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
            ),
            env=_environment(self.workdir),
            path=self.workdir,
        )
        self.assertEqual(code, 1, out + err)
        self.assertEqual(
            err.decode(),
            f"smtphooks: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use\n",
        )
        self.assertNotIn(b"Traceback", out + err)
        self.assertFalse(os.path.exists(os.path.join(self.workdir, "twistd.pid")))

    async def test_metrics_without_prometheus_client(self) -> None:
        """
        C{--metrics} without C{prometheus_client} installed: one line that
        says what to install, exit status 1.
        """
        code = (
            "import sys; sys.modules['prometheus_client'] = None; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()"
        )
        status, out, err = await run_process(
            [_python(), "-c", code, "-n", "--pidfile=", "smtphooks", "--metrics", "tcp:9100"],
            env=_environment(self.workdir),
            path=self.workdir,
        )
        text = (out + err).decode("utf-8", "replace")
        self.assertEqual(status, 1, text)
        self.assertNotIn("Traceback", text)
        self.assertIn(
            "--metrics needs prometheus_client: pip install 'smtphooks[metrics]'",
            text.strip().splitlines()[-1],
        )

    async def test_bad_options(self) -> None:
        """
        Each bad option, unreadable file or unknown hooks object gives exit
        status 1 and a last line that names it.
        """
        cases = [
            (["--size", "ten"], "--size must be a whole number"),
            (["--socket-timeout", "-3"], "--socket-timeout must be a positive number"),
            (["--listen", "bogus:25"], "--listen bogus:25"),
            (["--hooks", "tests.no_such_module:Hooks"], "--hooks tests.no_such_module:Hooks"),
            (["--hooks", "tests.tap_hooks:nothing"], "has none of the hooks"),
            (["--auth-users", "/nonexistent/users"], "--auth-users: cannot read"),
            (["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"], "--tls-cert"),
            (["--metrics", "bogus:9100"], "--metrics bogus:9100"),
            (["--workers", "0"], "--workers must be a whole number (1 or more)"),
            (["--reuse-port"], "--reuse-port needs --workers 2 or more"),
            (["--no-such-option"], "no-such-option"),
        ]
        results = await DeferredList(
            [Deferred.fromCoroutine(self.run_twistd(*argv)) for argv, _ in cases],
            consumeErrors=True,
        )
        for (argv, expected), (ok, result) in zip(cases, results):
            self.assertTrue(ok, f"{argv}: {result}")
            code, text = result
            self.assertEqual(code, 1, f"{argv}: {text}")
            last = text.strip().splitlines()[-1]
            self.assertIn(expected, last, f"{argv}: {text}")
        self.assertFalse(os.path.exists(self.maildir))
