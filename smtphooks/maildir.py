"""
L{MaildirDelivery}: an C{on_data} hook that stores each message in a
Maildir, durably, before the client is told C{250}.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import socket
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from ._coroutine import run_coroutine
from ._errors import SMTPError
from ._session import Session

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from ._data import DataStream

__all__ = ["MaildirDelivery"]

log = Logger()

#: Characters never copied into a header: controls (CR and LF among them)
#: and the ones that would end or nest the token or comment they sit in.
_UNSAFE_TOKEN = re.compile(r"[\x00-\x20\x7f()<>\\;\"]")
_UNSAFE_COMMENT = re.compile(r"[\x00-\x1f\x7f()\\]")
_UNSAFE_ADDRESS = re.compile(r"[\x00-\x1f\x7f<>]")

#: Lines of a header are folded before this many characters (RFC 5322
#: recommends 78).
_FOLD_AT = 78


class _Reactor(Protocol):
    """
    What L{MaildirDelivery} needs of a reactor: the time
    (L{twisted.internet.interfaces.IReactorTime}), a thread pool and a way
    back from it (L{twisted.internet.interfaces.IReactorThreads}).
    """

    def seconds(self) -> float: ...

    def getThreadPool(self) -> ThreadPool: ...

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None: ...


def _token(value: str, fallback: str = "unknown") -> str:
    """
    Make C{value} safe as one token of a trace header.
    """
    cleaned = _UNSAFE_TOKEN.sub("", value)
    return cleaned or fallback


def _comment(value: str) -> str:
    """
    Make C{value} safe inside a header comment (parentheses).
    """
    return " ".join(_UNSAFE_COMMENT.sub(" ", value).split())


def _address(value: str) -> str:
    """
    Make C{value} safe between angle brackets in a header.
    """
    return _UNSAFE_ADDRESS.sub("", value)


def _fold(name: str, words: list[str]) -> bytes:
    """
    One header field from its words, folded (CRLF and a tab) before a line
    would pass L{_FOLD_AT} characters.  A single word longer than that stays
    on a line of its own: folding never splits a word.
    """
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line.strip() and not line.endswith(":"):
            lines.append(line)
            line = "\t" + word
        else:
            line = f"{line} {word}"
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def _escape_host(host: str) -> str:
    """
    The host part of a Maildir file name: C{/} and C{:} are written as
    C{\\057} and C{\\072}, as the Maildir specification says.
    """
    return host.replace("/", "\\057").replace(":", "\\072")


class MaildirDelivery:
    """
    An C{on_data} hook that delivers each message to a Maildir.

    Use it as it is (C{SMTPServer(on_data=MaildirDelivery("/var/mail/in"))})
    or call it from your own C{on_data}.  Every message is written to
    C{tmp/} as it arrives, with a C{Return-Path:} and an RFC 5321
    C{Received:} header in front of it; the file is then fsynced, renamed
    into C{new/}, and C{new/} is fsynced.  Only then does the hook return,
    so a client told C{250} can rely on the message being on disk.

    File names follow the Maildir specification:
    C{<seconds>.M<microseconds>P<pid>Q<counter>.<host>}.

    A failed write (disk full, no permission, ...) removes what was written,
    is logged, and answers C{451 4.3.0}: nothing partial ever appears in
    C{new/}.  A message over the server's size limit is not stored (the
    server answers C{552}).

    @ivar path: the absolute path of the Maildir.
    @ivar hostname: the server's name, used in the C{Received:} header.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hostname: str | None = None,
        reactor: _Reactor | None = None,
    ) -> None:
        """
        Create C{path} and its C{tmp}, C{new} and C{cur} directories (mode
        C{0700}) when they do not exist.

        @param path: the Maildir.
        @param hostname: the server's name for the C{Received:} header;
            by default the fully qualified name of this host.
        @param reactor: a reactor providing
            L{twisted.internet.interfaces.IReactorTime} and
            L{twisted.internet.interfaces.IReactorThreads}; by default the
            global reactor, looked up when the first message arrives.
        @raise OSError: if the directories cannot be created.
        @raise ValueError: if C{path} exists and is not a Maildir that can
            be used (a C{tmp}, C{new} or C{cur} that is not a directory).
        """
        self.path = os.path.abspath(os.fspath(path))
        for sub in ("", "tmp", "new", "cur"):
            directory = os.path.join(self.path, sub)
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
            except FileExistsError:
                raise ValueError(f"{directory!r} exists and is not a directory") from None
        self.hostname = _token(hostname if hostname is not None else socket.getfqdn(), "localhost")
        self._reactor = reactor
        self._counter = itertools.count(1)
        self._host = _escape_host(socket.gethostname() or "localhost")

    def __repr__(self) -> str:
        return f"MaildirDelivery({self.path!r})"

    # -- the hook ---------------------------------------------------------

    def __call__(self, stream: DataStream, session: Session) -> Deferred[str | None]:
        """
        Store one message.

        @param stream: the message body.
        @param session: the session it arrives in; its envelope gives the
            C{Return-Path:} and the recipient named in C{Received:}.
        @return: a L{Deferred} that fires, once the message is durably in
            C{new/}, with the text of the C{250} reply
            (C{"OK: queued as <queue id>"}), or with L{None} when the
            message went over the size limit and was dropped.  It fails with
            L{SMTPError} C{451 4.3.0} when the message could not be written.
        """
        return run_coroutine(self._deliver(stream, session))

    def _get_reactor(self) -> _Reactor:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor  # type: ignore[assignment]
        assert self._reactor is not None
        return self._reactor

    def unique_name(self, now: float) -> str:
        """
        A new file name, unique in this Maildir.

        @param now: the time, in seconds since the epoch.
        @return: C{<seconds>.M<microseconds>P<pid>Q<counter>.<host>}.
        """
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        return f"{seconds}.M{micros}P{os.getpid()}Q{next(self._counter)}.{self._host}"

    def trace_headers(self, session: Session, queue_id: str, now: float) -> bytes:
        """
        The C{Return-Path:} and C{Received:} header fields put in front of
        a message, every value taken from the client made safe (no control
        characters, nothing that would end the token or comment it is in).

        @param session: the session the message arrives in.
        @param queue_id: the identifier of this message.
        @param now: the time of receipt, in seconds since the epoch.
        @return: the header lines, CRLF-terminated.
        """
        envelope = session.envelope
        sender = envelope.mail_from.address if envelope.mail_from is not None else ""
        return_path = _fold("Return-Path", [f"<{_address(sender)}>"])

        helo = _token(session.host_name_appears_as)
        client_host = _token(session.client_hostname, "")
        address = _token(session.remote_address, "")
        if client_host and client_host.strip("[]") != address:
            about = f"({client_host} [{address}])" if address else f"({client_host})"
        elif address:
            about = f"([{address}])"
        else:
            about = ""
        words = ["from", helo]
        if about:
            words.extend(about.split(" "))
        words.extend(["by", self.hostname, "(smtphooks)"])
        words.extend(["with", _token(session.transmission_type, "SMTP")])
        tls = session.tls
        if tls is not None:
            described = _comment(f"{tls.version or ''} {tls.cipher or ''}")
            if described:
                words.extend(f"({described})".split(" "))
        words.extend(["id", _token(queue_id)])
        if len(envelope.rcpt_to) == 1:
            words.extend(["for", f"<{_address(envelope.rcpt_to[0].address)}>"])
        words[-1] += ";"
        words.extend(formatdate(now, localtime=True).split(" "))
        return return_path + _fold("Received", words)

    async def _deliver(self, stream: DataStream, session: Session) -> str | None:
        reactor = self._get_reactor()
        now = reactor.seconds()
        queue_id = secrets.token_hex(6).upper()
        name = self.unique_name(now)
        tmp_path = os.path.join(self.path, "tmp", name)
        new_path = os.path.join(self.path, "new", name)

        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self._log_failure(e, queue_id, session, "creating")
            raise self._write_error() from None
        file = os.fdopen(fd, "wb", buffering=64 * 1024)
        try:
            file.write(self.trace_headers(session, queue_id, now))
            async for chunk in stream:
                file.write(chunk)
            file.flush()
        except OSError as e:
            _discard(file, tmp_path)
            self._log_failure(e, queue_id, session, "writing")
            raise self._write_error() from None
        except BaseException:
            # Cancelled (a hook timeout, the connection lost): keep nothing.
            _discard(file, tmp_path)
            raise

        if stream.size_exceeded:
            _discard(file, tmp_path)
            log.info(
                "message {queue_id} from {client} dropped: over the size limit"
                " (session {session_id})",
                queue_id=queue_id,
                client=session.remote_address,
                session_id=session.id,
            )
            return None

        try:
            await deferToThreadPool(
                reactor,  # type: ignore[arg-type]
                reactor.getThreadPool(),
                _commit,
                file,
                tmp_path,
                new_path,
            )
        except OSError as e:
            self._log_failure(e, queue_id, session, "committing")
            raise self._write_error() from None

        envelope = session.envelope
        log.info(
            "queued {queue_id} from {client} sender=<{sender}> recipients={recipients}"
            " size={size} with {transmission} file={file} (session {session_id})",
            queue_id=queue_id,
            client=session.remote_address,
            sender=envelope.mail_from.address if envelope.mail_from is not None else "",
            recipients=len(envelope.rcpt_to),
            size=stream.byte_length,
            transmission=session.transmission_type,
            file=name,
            session_id=session.id,
        )
        return f"OK: queued as {queue_id}"

    def _log_failure(self, error: OSError, queue_id: str, session: Session, doing: str) -> None:
        log.error(
            "message {queue_id} from {client} not stored: error {doing} its file in"
            " {maildir}: {error} (session {session_id})",
            queue_id=queue_id,
            client=session.remote_address,
            doing=doing,
            maildir=self.path,
            error=f"{errno.errorcode.get(error.errno or 0, error.errno)}: {error.strerror}",
            session_id=session.id,
        )

    @staticmethod
    def _write_error() -> SMTPError:
        return SMTPError(
            "Error writing message to disk, try again later", code=451, enhanced="4.3.0"
        )


def _discard(file: Any, tmp_path: str) -> None:
    """
    Close and remove a file that will not be delivered.  Errors are
    ignored: there is nothing more to do about them.
    """
    try:
        file.close()
    except OSError:
        pass
    try:
        os.unlink(tmp_path)
    except OSError:
        pass


def _commit(file: Any, tmp_path: str, new_path: str) -> None:
    """
    In a thread: make a written message durable and deliver it.  fsync the
    file, rename it from C{tmp/} into C{new/}, and fsync C{new/}.

    On an error nothing stays behind: the file is removed from C{tmp/}, or
    from C{new/} when only the directory's fsync failed (the client will be
    told to try again, and a duplicate is worse than nothing).

    @raise OSError: what went wrong.
    """
    try:
        try:
            os.fsync(file.fileno())
        finally:
            file.close()
        os.rename(tmp_path, new_path)
    except OSError:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        raise
    try:
        directory = os.open(os.path.dirname(new_path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        try:
            os.unlink(new_path)
        except OSError:
            pass
        raise
