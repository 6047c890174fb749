"""
Tests for L{smtphooks.maildir.MaildirDelivery}: the default C{on_data} hook
of the twistd plugin.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtphooks._data import DataStream
from smtphooks._errors import SMTPError
from smtphooks._session import Address, Envelope, Session, TLSInfo
from smtphooks.maildir import MaildirDelivery

#: The Maildir file name format: <seconds>.M<usec>P<pid>Q<counter>.<host>
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.(.+)$")


class _SynchronousThreadPool:
    """
    A thread pool that runs each function at once, in the calling thread,
    so that tests are deterministic.
    """

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], func: Callable[..., Any], *args: Any
    ) -> None:
        try:
            result = func(*args)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class FakeReactor(Clock):
    """
    A clock with a synchronous thread pool: what L{MaildirDelivery} needs of
    a reactor.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = _SynchronousThreadPool()
        self.advance(1_700_000_000.25)

    def getThreadPool(self) -> Any:
        return self.pool

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


def make_session(**overrides: Any) -> Session:
    """
    A session in the middle of a transaction, as the server hands it to
    C{on_data}.
    """
    values: dict[str, Any] = dict(
        remote_address="192.0.2.7",
        remote_port=40000,
        client_hostname="client.example.net",
        opening_command="EHLO",
        host_name_appears_as="client.example.net",
        envelope=Envelope(
            mail_from=Address("sender@example.org"),
            rcpt_to=[Address("rcpt@example.com")],
        ),
    )
    values.update(overrides)
    return Session(**values)


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """
    Split a stored message into its two trace header fields (unfolded) and
    the rest.
    """
    lines = data.split(b"\r\n")
    fields: list[bytes] = []
    index = 0
    while len(fields) < 2 or (index < len(lines) and lines[index][:1] in (b" ", b"\t")):
        line = lines[index]
        if line[:1] in (b" ", b"\t"):
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line)
        index += 1
    return fields, b"\r\n".join(lines[index:])


class MaildirDeliveryTests(SynchronousTestCase):
    """
    L{MaildirDelivery} stores messages durably in a Maildir, with trace
    headers, and never leaves a partial file in C{new/}.
    """

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.reactor = FakeReactor()
        self.delivery = MaildirDelivery(self.path, hostname="mx.example.com", reactor=self.reactor)

    def listing(self, sub: str) -> list[str]:
        return sorted(os.listdir(os.path.join(self.path, sub)))

    def deliver(self, body: bytes, session: Session | None = None) -> str | None:
        d = self.delivery(DataStream.from_bytes(body), session or make_session())
        result: str | None = self.successResultOf(d)
        return result

    def stored(self) -> bytes:
        (name,) = self.listing("new")
        with open(os.path.join(self.path, "new", name), "rb") as f:
            return f.read()

    def test_creates_directories(self) -> None:
        """
        The constructor creates the Maildir and its C{tmp}, C{new} and
        C{cur} directories, readable by the owner only.
        """
        for sub in ("", "tmp", "new", "cur"):
            mode = os.stat(os.path.join(self.path, sub)).st_mode
            self.assertTrue(stat.S_ISDIR(mode))
            self.assertEqual(stat.S_IMODE(mode) & 0o077, 0, sub)

    def test_existing_maildir(self) -> None:
        """
        An existing Maildir is used as it is; its messages stay.
        """
        self.deliver(b"Subject: one\r\n\r\nbody\r\n")
        again = MaildirDelivery(self.path, reactor=self.reactor)
        self.assertEqual(again.path, os.path.abspath(self.path))
        self.assertEqual(len(self.listing("new")), 1)

    def test_not_a_directory(self) -> None:
        """
        A Maildir whose C{new} is a file is refused with L{ValueError}.
        """
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "new"), "w"):
            pass
        self.assertRaises(ValueError, MaildirDelivery, path)

    def test_delivers_body_exactly(self) -> None:
        """
        The message lands in C{new/} (and nowhere else) with the body
        byte-exact after the trace headers; the hook answers with the queue
        id that the C{Received:} header names.
        """
        body = b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n\x00\xff binary\r\n"
        result = self.deliver(body)
        assert result is not None
        match = re.match(r"^OK: queued as ([0-9A-F]+)$", result)
        assert match is not None
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("cur"), [])
        fields, rest = split_message(self.stored())
        self.assertEqual(rest, body)
        self.assertIn(f" id {match.group(1)} ".encode(), fields[1])

    def test_streamed_chunks(self) -> None:
        """
        Chunks are written as they arrive; the hook answers only after the
        end of the stream, and the file is in C{tmp/} until then.
        """
        stream = DataStream()
        d = self.delivery(stream, make_session())
        stream.write(b"Subject: a\r\n\r\n")
        self.assertNoResult(d)
        self.assertEqual(len(self.listing("tmp")), 1)
        self.assertEqual(self.listing("new"), [])
        stream.write(b"second chunk\r\n")
        stream.end()
        self.successResultOf(d)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(split_message(self.stored())[1], b"Subject: a\r\n\r\nsecond chunk\r\n")

    def test_trace_headers(self) -> None:
        """
        C{Return-Path:} gives the sender; C{Received:} follows RFC 5321
        section 4.4: from (HELO name, client name and address) by (server)
        with (transmission type) id (queue id) for (the single recipient);
        date.
        """
        result = self.deliver(b"x\r\n")
        assert result is not None
        queue_id = result.rsplit(" ", 1)[1]
        fields, _ = split_message(self.stored())
        self.assertEqual(fields[0], b"Return-Path: <sender@example.org>")
        received = fields[1].decode()
        self.assertRegex(
            received,
            r"^Received: from client\.example\.net \(client\.example\.net \[192\.0\.2\.7\]\)"
            r" by mx\.example\.com \(smtphooks\) with ESMTP id " + queue_id +
            r" for <rcpt@example\.com>; \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$",
        )

    def test_lines_are_folded(self) -> None:
        """
        Header lines stay short: a long C{Received:} is folded with CRLF
        and a tab.
        """
        self.deliver(b"x\r\n")
        head = self.stored().split(b"\r\n\t", 1)
        self.assertEqual(len(head), 2)
        for line in self.stored().split(b"\r\n")[:4]:
            self.assertLessEqual(len(line), 78)

    def test_no_client_name(self) -> None:
        """
        Without a reverse name (C{client_hostname} is C{[address]}), the
        address is given once.
        """
        self.deliver(b"x\r\n", make_session(client_hostname="[192.0.2.7]"))
        fields, _ = split_message(self.stored())
        self.assertIn(b"from client.example.net ([192.0.2.7]) by", fields[1])

    def test_tls_and_transmission_type(self) -> None:
        """
        On a TLS session, C{with} names the RFC 3848 type and the TLS
        version and cipher follow as a comment.
        """
        session = make_session(
            secure=True,
            user="alice",
            tls=TLSInfo(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384"),
        )
        self.deliver(b"x\r\n", session)
        fields, _ = split_message(self.stored())
        self.assertIn(b" with ESMTPSA (TLSv1.3 TLS_AES_256_GCM_SHA384) id ", fields[1])

    def test_several_recipients(self) -> None:
        """
        With several recipients, C{Received:} names none of them (so that
        Bcc recipients are not disclosed).
        """
        session = make_session(
            envelope=Envelope(
                mail_from=Address("s@example.org"),
                rcpt_to=[Address("a@example.com"), Address("b@example.com")],
            )
        )
        self.deliver(b"x\r\n", session)
        fields, _ = split_message(self.stored())
        self.assertNotIn(b" for ", fields[1])
        self.assertNotIn(b"a@example.com", fields[1])

    def test_null_sender(self) -> None:
        """
        The null sender gives C{Return-Path: <>}.
        """
        session = make_session(
            envelope=Envelope(mail_from=Address(""), rcpt_to=[Address("r@example.com")])
        )
        self.deliver(b"x\r\n", session)
        self.assertTrue(self.stored().startswith(b"Return-Path: <>\r\nReceived: "))

    def test_no_header_injection(self) -> None:
        """
        CR, LF and other control characters in what the client chose (the
        HELO name, addresses) or what came from DNS never reach the file:
        no header can be injected, and no comment or address can be closed
        early.
        """
        session = make_session(
            host_name_appears_as="evil\r\nX-Injected: yes (x)\x00",
            client_hostname="ptr\r\nX-Ptr: 1) (",
            envelope=Envelope(
                mail_from=Address("a>\r\nX-Sender: 1@example.org"),
                rcpt_to=[Address("b\n>X-Rcpt: 2@example.com")],
            ),
            tls=TLSInfo(version="TLSv1.3\r\nX-TLS: 3", cipher="C)"),
        )
        body = b"Subject: body\r\n\r\ntext\r\n"
        self.deliver(body, session)
        data = self.stored()
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = (head + b"\r\n").split(b"\r\n")
        starts = [line.split(b":", 1)[0] for line in lines if line and line[:1] not in b" \t"]
        self.assertEqual(starts, [b"Return-Path", b"Received", b"Subject"])
        trace = data[: data.index(b"Subject:")]
        for byte in range(32):
            if byte not in (9, 10, 13):
                self.assertNotIn(bytes([byte]), trace)
        self.assertEqual(trace.count(b"\r"), trace.count(b"\r\n"))
        self.assertEqual(trace.count(b"\n"), trace.count(b"\r\n"))
        fields, _ = split_message(data)
        self.assertEqual(fields[0], b"Return-Path: <aX-Sender: 1@example.org>")
        received = fields[1]
        self.assertEqual(received.count(b"("), received.count(b")"))
        self.assertEqual(received.count(b"<"), 1)
        self.assertEqual(received.count(b">"), 1)

    def test_unique_names(self) -> None:
        """
        Many messages delivered at the same instant get distinct names of
        the form C{<seconds>.M<microseconds>P<pid>Q<counter>.<host>}.
        """
        for i in range(200):
            self.deliver(b"message %d\r\n" % (i,))
        names = self.listing("new")
        self.assertEqual(len(names), 200)
        for name in names:
            match = NAME.match(name)
            assert match is not None, name
            self.assertEqual(match.group(1), "1700000000")
            self.assertEqual(match.group(2), "250000")
            self.assertEqual(int(match.group(3)), os.getpid())
        counters = {NAME.match(n).group(4) for n in names}  # type: ignore[union-attr]
        self.assertEqual(len(counters), 200)

    def test_host_escaped_in_names(self) -> None:
        """
        C{/} and C{:} in the host name are written as C{\\057} and C{\\072}.
        """
        self.patch(socket, "gethostname", lambda: "a/b:c")
        delivery = MaildirDelivery(self.path, hostname="mx", reactor=self.reactor)
        name = delivery.unique_name(12.5)
        self.assertTrue(name.endswith(".a\\057b\\072c"), name)
        self.assertTrue(name.startswith("12.M500000P"), name)

    def test_default_hostname(self) -> None:
        """
        Without C{hostname}, C{Received:} names this host's FQDN.
        """
        self.patch(socket, "getfqdn", lambda: "fqdn.example")
        delivery = MaildirDelivery(self.path, reactor=self.reactor)
        self.assertEqual(delivery.hostname, "fqdn.example")

    def assertWriteFailed(self, d: Deferred[Any]) -> None:
        """
        C{d} failed with C{451 4.3.0}, nothing is in C{new/} and nothing is
        left in C{tmp/}.
        """
        error = self.failureResultOf(d, SMTPError).value
        self.assertEqual((error.code, error.enhanced), (451, "4.3.0"))
        self.assertEqual(error.message, "Error writing message to disk, try again later")
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.listing("tmp"), [])

    def test_fsync_fails(self) -> None:
        """
        When the file's fsync fails (a full disk), the client gets C{451},
        the file is removed, and the failure is logged with the queue id.
        """

        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "fsync", fsync)
        with capturedLogs() as events:
            d = self.delivery(DataStream.from_bytes(b"x\r\n"), make_session())
        self.assertWriteFailed(d)
        errors = [e for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("ENOSPC", errors[0]["error"])
        self.assertTrue(errors[0]["queue_id"])

    def test_directory_fsync_fails(self) -> None:
        """
        When the message is renamed but C{new/} cannot be fsynced, it is
        taken back out of C{new/}: the client is told to try again, and
        gets no duplicate.
        """
        real_fsync = os.fsync
        calls = []

        def fsync(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        self.patch(os, "fsync", fsync)
        d = self.delivery(DataStream.from_bytes(b"x\r\n"), make_session())
        self.assertWriteFailed(d)
        self.assertEqual(len(calls), 2)

    def test_write_fails(self) -> None:
        """
        When a write fails half-way (here: the file is C{/dev/full}), the
        client gets C{451} and the partial file is removed.
        """
        if not os.path.exists("/dev/full"):
            raise self.skipTest("no /dev/full")
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            os.close(fd)
            return real_fdopen(os.open("/dev/full", os.O_WRONLY), "wb", buffering=0)

        self.patch(os, "fdopen", fdopen)
        with capturedLogs():
            d = self.delivery(DataStream.from_bytes(b"x\r\n"), make_session())
        self.assertWriteFailed(d)

    def test_tmp_not_writable(self) -> None:
        """
        When C{tmp/} is not a directory any more (a path trick that works
        even as root), the client gets C{451}; nothing reaches C{new/}.
        """
        tmp = os.path.join(self.path, "tmp")
        os.rmdir(tmp)
        with open(tmp, "w"):
            pass
        with capturedLogs():
            d = self.delivery(DataStream.from_bytes(b"x\r\n"), make_session())
        error = self.failureResultOf(d, SMTPError).value
        self.assertEqual((error.code, error.enhanced), (451, "4.3.0"))
        self.assertEqual(self.listing("new"), [])

    def test_size_exceeded(self) -> None:
        """
        A message over the size limit is not stored (the server answers
        C{552} itself).
        """
        stream = DataStream()
        d = self.delivery(stream, make_session())
        stream.write(b"Subject: big\r\n\r\n" + b"x" * 1000)
        stream.end(size_exceeded=True)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.listing("new"), [])
        self.assertEqual(self.listing("tmp"), [])

    def test_cancelled(self) -> None:
        """
        When the hook is cancelled (a hook timeout, a lost connection) the
        partial file is removed.
        """
        stream = DataStream()
        d = self.delivery(stream, make_session())
        stream.write(b"partial")
        self.assertEqual(len(self.listing("tmp")), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.listing("tmp"), [])
        self.assertEqual(self.listing("new"), [])

    def test_logs_accepted_message(self) -> None:
        """
        One line per accepted message: queue id, client address, sender,
        recipient count, size and transmission type.
        """
        with capturedLogs() as events:
            result = self.deliver(b"12345\r\n")
        assert result is not None
        (event,) = [e for e in events if e.get("log_namespace") == "smtphooks.maildir"]
        self.assertEqual(event["log_level"].name, "info")
        self.assertEqual(event["queue_id"], result.rsplit(" ", 1)[1])
        self.assertEqual(event["client"], "192.0.2.7")
        self.assertEqual(event["sender"], "sender@example.org")
        self.assertEqual(event["recipients"], 1)
        self.assertEqual(event["size"], 7)
        self.assertEqual(event["transmission"], "ESMTP")


class MaildirThreadTests(TestCase):
    """
    With the real reactor, the commit runs in the reactor's thread pool.
    """

    def test_real_reactor(self) -> Deferred[None]:
        """
        The global reactor (the default) delivers a message.
        """
        path = self.mktemp()
        delivery = MaildirDelivery(path, hostname="mx.example.com")

        async def go() -> None:
            result = await delivery(DataStream.from_bytes(b"hello\r\n"), make_session())
            self.assertTrue(result and result.startswith("OK: queued as "))
            (name,) = os.listdir(os.path.join(path, "new"))
            with open(os.path.join(path, "new", name), "rb") as f:
                data = f.read()
            self.assertTrue(data.startswith(b"Return-Path: <sender@example.org>\r\n"))
            self.assertTrue(data.endswith(b"\r\nhello\r\n"))

        return ensureDeferred(go())
