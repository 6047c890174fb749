"""
Bundled load client (stdlib asyncio; used by ../run.py when Postfix's
smtp-source is not installed, or with --client python).

It talks like `smtp-source -s SESSIONS -m MESSAGES -l SIZE [-d]`: SESSIONS
parallel sessions share MESSAGES transactions; each opens with HELO (as
smtp-source does), then MAIL FROM, RCPT TO, DATA, a message of SIZE bytes of
80-byte lines after a few headers, ".", and either QUIT (one message per
connection) or, with --persistent, the next transaction on the same
connection. One command per round trip, no pipelining (like smtp-source).

Prints one JSON line: messages, elapsed. Exits 1 on an unexpected reply.
Every wait is bounded by --timeout; the whole run by --deadline.
"""

import argparse
import asyncio
import json
import sys
import time


def make_body(size):
    head = (b"From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\n"
            b"Subject: load\r\n\r\n")
    line = b"X" * 78 + b"\r\n"
    n, rest = divmod(max(0, size - len(head)), len(line))
    return head + line * n + (b"X" * max(0, rest - 2) + b"\r\n" if rest > 2 else b"")


class Failed(Exception):
    pass


async def expect(reader, code, timeout, what):
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise Failed(f"{what}: connection closed")
        if line[3:4] != b"-":
            if line[:3] != code:
                raise Failed(f"{what}: expected {code.decode()}, got {line!r}")
            return


async def session(a, payload, left, timeout):
    reader = writer = None
    try:
        while left[0] > 0:
            left[0] -= 1
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", a.port), timeout)
                await expect(reader, b"220", timeout, "greeting")
                writer.write(b"HELO bench.test\r\n")
                await expect(reader, b"250", timeout, "HELO")
            writer.write(b"MAIL FROM:<sender@bench.test>\r\n")
            await expect(reader, b"250", timeout, "MAIL")
            writer.write(b"RCPT TO:<rcpt@bench.test>\r\n")
            await expect(reader, b"250", timeout, "RCPT")
            writer.write(b"DATA\r\n")
            await expect(reader, b"354", timeout, "DATA")
            writer.write(payload)
            await writer.drain()
            await expect(reader, b"250", timeout, "end of data")
            if not a.persistent or left[0] <= 0:
                writer.write(b"QUIT\r\n")
                await expect(reader, b"221", timeout, "QUIT")
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()


async def run(a):
    payload = make_body(a.size) + b".\r\n"
    left = [a.messages]
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(session(a, payload, left, a.timeout))
             for _ in range(min(a.sessions, a.messages))]
    done, late = await asyncio.wait(tasks, timeout=a.deadline)
    for t in late:
        t.cancel()
    if late:
        raise Failed(f"deadline of {a.deadline}s passed")
    for t in done:
        t.result()
    return time.monotonic() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--messages", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--persistent", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--deadline", type=float, default=300.0)
    a = p.parse_args()
    try:
        elapsed = asyncio.run(run(a))
    except (Failed, OSError, asyncio.TimeoutError) as e:
        sys.exit(f"load: {type(e).__name__}: {e}")
    print(json.dumps({"messages": a.messages, "elapsed": round(elapsed, 4)}), flush=True)


if __name__ == "__main__":
    main()
