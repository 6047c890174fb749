"""
Pipelined-transaction load client (stdlib only; started by ../run.py).

One connection to 127.0.0.1:PORT, EHLO, then --messages transactions of a
~1 KiB body, one round trip each as RFC 2920 allows: every write carries the
previous message's body and its "." line, then the next MAIL FROM, RCPT TO and
DATA; the client then reads the four replies (250 for the message, 250, 250,
354). It pipelines whether or not PIPELINING is advertised (every server under
test reads commands in order) and says whether it was.

Prints one JSON line: messages, elapsed (s, transfer only), pipelining.
Exits 1 on an unexpected reply; every socket wait is bounded by --timeout.
"""

import argparse
import json
import socket
import sys
import time


class Replies:
    """Reads SMTP replies from a socket with one recv() per several replies."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def line(self):
        while True:
            end = self.buf.find(b"\n", self.pos)
            if end >= 0:
                line = self.buf[self.pos:end + 1]
                self.pos = end + 1
                return line
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf = self.buf[self.pos:] + data
            self.pos = 0

    def reply(self):
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line[3:4] != b"-":
                return line[:3], lines


def expect(replies, code, what):
    got, lines = replies.reply()
    if got != code:
        sys.exit(f"pipelined: {what}: expected {code.decode()}, got {b''.join(lines)!r}")
    return lines


def make_body(size):
    head = (b"From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\n"
            b"Subject: pipelined benchmark\r\n\r\n")
    line = b"Y" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()

    sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Replies(sock)
    expect(r, b"220", "greeting")
    sock.sendall(b"EHLO pipelined.bench.test\r\n")
    ehlo = expect(r, b"250", "EHLO")
    pipelining = any(l[4:].strip().upper().startswith(b"PIPELINING") for l in ehlo)
    envelope = b"MAIL FROM:<sender@bench.test>\r\nRCPT TO:<rcpt@bench.test>\r\nDATA\r\n"
    payload = make_body(a.size) + b".\r\n"
    t0 = time.monotonic()
    sock.sendall(envelope)
    for i in range(a.messages):
        expect(r, b"250", "MAIL")
        expect(r, b"250", "RCPT")
        expect(r, b"354", "DATA")
        sock.sendall(payload + (b"QUIT\r\n" if i == a.messages - 1 else envelope))
        expect(r, b"250", "end of data")
    elapsed = time.monotonic() - t0
    expect(r, b"221", "QUIT")
    sock.close()
    print(json.dumps({"messages": a.messages, "elapsed": round(elapsed, 4),
                      "pipelining": pipelining}), flush=True)


if __name__ == "__main__":
    main()
