"""
Idle-connection client (stdlib asyncio; started by ../run.py).

Opens --conns connections to 127.0.0.1:PORT in --steps equal batches, with at
most --concurrency handshakes in flight (so the figure is memory per idle
session, not accept-queue overflow). Each connection reads the greeting,
sends EHLO, reads the whole reply, then sits idle.

Talks to the driver over stdout/stdin:
  after every batch it prints  "LEVEL k served=N failed=M elapsed=S"
  and waits for a line on stdin before the next batch (the driver reads the
  server's RSS meanwhile); after the last batch it waits for one more line,
  then closes every connection and prints a JSON summary (alive = sessions the
  server had not closed). Every wait is bounded: --timeout per step of a
  connection, --deadline for the whole run; EOF on stdin also moves on.
"""

import argparse
import asyncio
import json
import resource
import sys
import time


async def reply_code(reader):
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line[:3]


async def open_one(port, timeout, gate, held, errors):
    async with gate:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout)
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return False
        try:
            if await asyncio.wait_for(reply_code(reader), timeout) != b"220":
                raise ValueError("greeting")
            writer.write(b"EHLO idle.bench.test\r\n")
            if await asyncio.wait_for(reply_code(reader), timeout) != b"250":
                raise ValueError("EHLO")
        except Exception as e:  # noqa: BLE001
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            writer.transport.abort()
            return False
        held.append(writer)
        return True


async def wait_line(seconds):
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable():
        sys.stdin.buffer.raw.readline()
        if not done.done():
            done.set_result(None)

    loop.add_reader(sys.stdin.fileno(), readable)
    try:
        await asyncio.wait_for(done, max(0.1, seconds))
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(sys.stdin.fileno())


async def run(a):
    gate = asyncio.Semaphore(a.concurrency)
    held, errors = [], {}
    t0 = time.monotonic()
    deadline = t0 + a.deadline
    steps = max(1, min(a.steps, a.conns))
    served = 0
    for k in range(1, steps + 1):
        size = a.conns * k // steps - a.conns * (k - 1) // steps
        tasks = [asyncio.ensure_future(open_one(a.port, a.timeout, gate, held, errors))
                 for _ in range(size)]
        done, late = await asyncio.wait(tasks, timeout=max(0.1, deadline - time.monotonic()))
        for t in late:
            t.cancel()
        if late:
            errors["deadline"] = errors.get("deadline", 0) + len(late)
        served += sum(1 for t in done if not t.cancelled() and t.result())
        opened = a.conns * k // steps
        print(f"LEVEL {k} served={served} failed={opened - served} "
              f"elapsed={time.monotonic() - t0:.3f}", flush=True)
        await wait_line(deadline - time.monotonic() + a.hold)
    alive = sum(1 for w in held if not w.transport.is_closing())
    for w in held:
        w.transport.abort()
    await asyncio.sleep(0)
    print(json.dumps({"served": served, "failed": a.conns - served, "alive": alive,
                      "errors": errors}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--hold", type=float, default=30.0, help="max wait for the driver, s")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want if hard == resource.RLIM_INFINITY else min(hard, want), hard))
    asyncio.run(run(a))


if __name__ == "__main__":
    main()
