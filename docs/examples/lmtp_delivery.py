"""
An LMTP delivery agent: the last hop of a Postfix (or Exim, or any MTA) host, which
hands each message to this program over a unix socket, and which learns the fate of
each recipient separately.

Every known user has a Maildir under C{--root} and a quota in bytes.  For each message:

    - C{RCPT TO} for an unknown user is refused at once: C{550 5.1.1};
    - after the data, each accepted recipient gets its own reply: C{250} once the
      message is safely in the user's C{Maildir/new/} (written to C{tmp/}, fsynced,
      renamed, the directory fsynced), C{452 4.2.2} when it would go over the user's
      quota (the MTA keeps the message and tries that recipient again later), or
      C{451 4.3.0} when the disk fails.

Run it::

    python lmtp_delivery.py --socket /var/spool/postfix/private/smtphooks \\
        --root /var/mail/boxes --user alice:50000000 --user bob:1000000

and point Postfix at it (C{main.cf})::

    mailbox_transport = lmtp:unix:private/smtphooks

This file is part of the smtphooks test suite: C{tests/test_lmtp.py} imports it and
runs it, so what you read here works.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from itertools import count
from typing import IO, Any

from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from smtphooks import Address, DataStream, Session, SMTPError, SMTPServer

log = Logger()

#: Bodies up to this size are spooled in memory, bigger ones in a temporary file.
SPOOL_IN_MEMORY = 1024 * 1024


class QuotaExceeded(Exception):
    """
    The message would take a mailbox over its quota.
    """


class DeliveryAgent:
    """
    The hooks of the delivery agent: pass an instance as C{hooks=} to L{SMTPServer}
    (L{make_server} does).

    @ivar root: the directory that holds one Maildir per user (C{root/alice/new} ...).
    @ivar quotas: user name -> the most bytes that user's Maildir may hold.
    @ivar domains: the domains delivered here, or L{None} for any domain.
    """

    def __init__(
        self, root: str, quotas: dict[str, int], domains: set[str] | None = None
    ) -> None:
        self.root = root
        self.quotas = {user.lower(): quota for user, quota in quotas.items()}
        self.domains = {d.lower() for d in domains} if domains is not None else None
        self._hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
        self._sequence = count()

    def user_for(self, address: str) -> str | None:
        """
        The local user an address delivers to, or L{None} when there is none here.
        """
        local, _, domain = address.rpartition("@")
        if not local:
            return None
        if self.domains is not None and domain.lower() not in self.domains:
            return None
        user = local.lower()
        return user if user in self.quotas else None

    # -- hooks -----------------------------------------------------------------

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        """
        Refuse recipients who have no mailbox here, before any data is sent.
        """
        if self.user_for(address.address) is None:
            raise SMTPError("No such user here", code=550, enhanced="5.1.1")

    async def on_data(self, stream: DataStream, session: Session) -> list[Any] | None:
        """
        Spool the message, then deliver it to each recipient in turn.

        @return: one entry per accepted recipient, in RCPT order: a string (C{250} with
            that text) or an L{SMTPError}.
        """
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        try:
            async for chunk in stream:
                spool.write(chunk)
            if stream.size_exceeded:
                # The server answers 552 5.3.4 for every recipient anyway.
                return None
            envelope = session.envelope
            assert envelope.mail_from is not None
            sender = envelope.mail_from.address
            results: list[Any] = []
            for rcpt in envelope.rcpt_to:
                user = self.user_for(rcpt.address)
                assert user is not None  # on_rcpt_to let only known users in
                try:
                    name = await deferToThread(
                        self._deliver, user, sender, rcpt.address, spool, stream.byte_length
                    )
                except QuotaExceeded:
                    log.info("{rcpt}: over quota", rcpt=rcpt.address)
                    results.append(
                        SMTPError(f"<{rcpt.address}> Mailbox full", code=452, enhanced="4.2.2")
                    )
                except OSError as error:
                    log.error(
                        "{rcpt}: delivery failed: {error}", rcpt=rcpt.address, error=error
                    )
                    results.append(
                        SMTPError("Mailbox temporarily unavailable", code=451, enhanced="4.3.0")
                    )
                else:
                    log.info("{rcpt}: delivered as {name}", rcpt=rcpt.address, name=name)
                    results.append(f"<{rcpt.address}> Delivered")
            return results
        finally:
            spool.close()

    # -- the Maildir (runs in a thread: every call here blocks) ---------------

    def _usage(self, maildir: str) -> int:
        used = 0
        for sub in ("new", "cur"):
            directory = os.path.join(maildir, sub)
            for entry in os.scandir(directory):
                if entry.is_file():
                    used += entry.stat().st_size
        return used

    def _deliver(self, user: str, sender: str, rcpt: str, spool: IO[bytes], size: int) -> str:
        maildir = os.path.join(self.root, user)
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(maildir, sub), mode=0o700, exist_ok=True)
        header = f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n".encode()
        if self._usage(maildir) + len(header) + size > self.quotas[user]:
            # Two deliveries to one user at the same moment may both pass; a real
            # agent would lock the mailbox.
            raise QuotaExceeded(user)
        now = time.time()
        name = (
            f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._sequence)}"
            f".{self._hostname}"
        )
        tmp_path = os.path.join(maildir, "tmp", name)
        new_path = os.path.join(maildir, "new", name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(header)
                spool.seek(0)
                while block := spool.read(65536):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp_path, new_path)
        except BaseException:
            try:
                os.unlink(tmp_path)
            except OSError:
                pass
            raise
        directory = os.open(os.path.join(maildir, "new"), os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return name


def make_server(agent: DeliveryAgent, **options: Any) -> SMTPServer:
    """
    The LMTP server for C{agent}: C{lmtp=True}, 50 MB messages at most; C{options} are
    more L{SMTPServer} options.
    """
    options.setdefault("size", 50 * 1000 * 1000)
    return SMTPServer(agent, lmtp=True, **options)


def parse_user(text: str) -> tuple[str, int]:
    name, sep, quota = text.partition(":")
    if not name or not sep or not quota.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:QUOTA_BYTES")
    return name, int(quota)


@inlineCallbacks
def main(reactor: Any, *argv: str) -> Any:
    parser = argparse.ArgumentParser(description="An LMTP delivery agent on a unix socket.")
    parser.add_argument("--socket", required=True, help="path of the unix socket to listen on")
    parser.add_argument("--root", required=True, help="directory of the users' Maildirs")
    parser.add_argument(
        "--user", action="append", type=parse_user, default=[], metavar="NAME:QUOTA",
        help="a user and the quota of their Maildir in bytes (repeatable)",
    )
    parser.add_argument(
        "--domain", action="append", default=None,
        help="a domain delivered here (repeatable; default: any)",
    )
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    agent = DeliveryAgent(args.root, dict(args.user), set(args.domain) if args.domain else None)
    server = make_server(agent)
    # wantPID: a lock file lets a restart replace the socket a crashed run left behind.
    endpoint = UNIXServerEndpoint(  # type: ignore[no-untyped-call]
        reactor, args.socket, mode=0o660, wantPID=True
    )
    yield server.listen(endpoint)
    reactor.addSystemEventTrigger("before", "shutdown", server.close)
    print(f"LMTP delivery agent listening on unix:{args.socket}", flush=True)
    yield Deferred()  # until SIGTERM or SIGINT stops the reactor


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
