"""
The server that benchmarks/attack.py (and benchmarks/soak.py --server sink)
attacks: an smtphooks server built with the public API only, that counts and
records what it delivers.

Usage: sink.py [--port 0] [--size BYTES] [--max-clients N] [--record FILE]
               [--socket-timeout S] [--command-timeout S] [--data-timeout S]
               [--hook-timeout S] [--close-timeout S] [--max-clients-per-ip N]
               [--tls-dir DIR]

It prints C{PORT <n>} once listening.  On SIGUSR1 it prints one line
C{STATS <json>} (after a C{gc.collect()}, so that the figures do not depend on
when the cyclic collector last ran): live connections, connections opened and
closed, messages delivered and refused, body bytes, and the number of
unexpected errors the engine logged (which must stay 0).  SIGTERM closes the
server gracefully (C{server.close()}: sessions may finish the transaction in
progress for up to --close-timeout seconds), then stops.

--tls-dir DIR makes a self-signed certificate and key there and offers
STARTTLS with them.

Hooks (cheap, and chosen by the recipient's local part so that an attack can
ask for a fault):

  - C{reject@...}: on_rcpt_to rejects with 550;
  - C{hang@...}: on_rcpt_to never answers (the server's hook_timeout must);
  - C{stall@...}: on_data stops reading the message and never returns (the
    server's hook_timeout on a stream that is not read must answer);
  - C{late@...}: on_data reads the whole message, then never returns;
  - C{slowread@...}: on_data waits 0.25 s after each chunk it reads (a slow
    consumer: the server must hold the client back, not blame it);
  - anything else: on_data reads the body with C{async for}, keeps only its
    first 8 KiB (to find the C{Message-ID:} header), and records the id in
    the C{--record} file (one line per message, written and flushed before
    the hook returns, that is before the client gets its 250).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import signal
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from smtphooks import SMTPError, SMTPServer

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_HEAD = 8192

stats = {
    "opened": 0,
    "closed": 0,
    "delivered": 0,
    "bytes": 0,
    "size_exceeded": 0,
    "no_id": 0,
    "errors": 0,
    "warnings": 0,
}


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Sink:
    def __init__(self, record: str | None) -> None:
        self._fd = (
            os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if record else None
        )

    def on_connect(self, session):
        stats["opened"] += 1

    def on_close(self, session):
        stats["closed"] += 1

    def on_rcpt_to(self, address, session):
        local = address.address.partition("@")[0].lower()
        if local == "reject":
            raise SMTPError("No such user", code=550)
        if local == "hang":
            return Deferred()  # never fires
        return None

    async def on_data(self, stream, session):
        locals_ = {a.address.partition("@")[0].lower() for a in session.envelope.rcpt_to}
        if "stall" in locals_:
            await Deferred()  # never reads, never returns
        head = b""
        n = 0
        slow = "slowread" in locals_
        async for chunk in stream:
            if len(head) < _HEAD:
                head += chunk[: _HEAD - len(head)]
            n += len(chunk)
            if slow:
                await deferLater(reactor, 0.25)
        if "late" in locals_:
            await Deferred()
        if stream.size_exceeded:
            stats["size_exceeded"] += 1
            return  # the server answers 552 whatever we return
        match = _MESSAGE_ID.search(head)
        if match is None:
            stats["no_id"] += 1
            msgid = b"-"
        else:
            msgid = match.group(1)
        if self._fd is not None:
            os.write(self._fd, msgid + b"\n")
        stats["delivered"] += 1
        stats["bytes"] += n


def self_signed(directory: str) -> tuple[str, str]:
    """A fresh self-signed certificate for attack.test: (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attack.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("attack.test")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "attack.test.crt")
    key_path = os.path.join(directory, "attack.test.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def _count_log_event(event):
    level = event.get("log_level")
    if event.get("log_failure") is not None or level in (LogLevel.error, LogLevel.critical):
        stats["errors"] += 1
    elif level == LogLevel.warn:
        stats["warnings"] += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--size", type=int, default=1024 * 1024)
    p.add_argument("--max-clients", type=int, default=5000)
    p.add_argument("--max-clients-per-ip", type=int, default=0)
    p.add_argument("--socket-timeout", type=float, default=60.0)
    p.add_argument("--command-timeout", type=float, default=60.0)
    p.add_argument("--data-timeout", type=float, default=600.0)
    p.add_argument("--hook-timeout", type=float, default=60.0)
    p.add_argument("--close-timeout", type=float, default=30.0)
    p.add_argument("--tls-dir", help="offer STARTTLS with a self-signed certificate made here")
    p.add_argument("--record", help="append the Message-ID of each delivered message here")
    a = p.parse_args()

    # Warnings and errors go to stderr (the attack script keeps it in a file);
    # every event is also counted.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            ),
            _count_log_event,
        ],
        redirectStandardIO=False,
    )
    sink = Sink(a.record)
    tls = {}
    if a.tls_dir:
        tls = dict(zip(("tls_cert", "tls_key"), self_signed(a.tls_dir)))
    server = SMTPServer(
        sink,
        name="attack.test",
        size=a.size,
        max_clients=a.max_clients,
        max_clients_per_ip=a.max_clients_per_ip,
        socket_timeout=a.socket_timeout,
        command_timeout=a.command_timeout,
        data_timeout=a.data_timeout,
        hook_timeout=a.hook_timeout,
        close_timeout=a.close_timeout,
        disable_reverse_lookup=True,
        **tls,
    )
    # SIGTERM (and SIGINT) stop the reactor; before it stops, close
    # gracefully: the reactor waits for the Deferred.
    reactor.addSystemEventTrigger("before", "shutdown", server.close)

    def report(signum, frame):
        # Runs between reactor iterations (Python signal handlers run in the
        # main thread at a safe point), so reading the server is consistent.
        gc.collect()
        line = dict(stats, live=len(server.connections), rss=_rss())
        sys.stdout.write("STATS " + json.dumps(line) + "\n")
        sys.stdout.flush()

    signal.signal(signal.SIGUSR1, report)

    def listening(port):
        print("PORT", port.getHost().port, flush=True)

    def failed(f):
        print(f"listen failed: {f.getErrorMessage()}", file=sys.stderr, flush=True)
        reactor.stop()

    reactor.callWhenRunning(
        lambda: server.listen(f"tcp:{a.port}:interface=127.0.0.1:backlog=1024").addCallbacks(
            listening, failed
        )
    )
    reactor.run()  # SIGTERM / SIGINT stop the reactor
    os._exit(0)


if __name__ == "__main__":
    main()
