"""
aiosmtpd sink for the benchmark (started by ../run.py).

Usage: aiosmtpd_sink.py PORT

aiosmtpd's SMTP protocol served by a plain asyncio server in the main thread
(no Controller thread). Every sender, recipient and message is accepted;
handle_DATA counts the body aiosmtpd has read (it buffers the whole message,
which is how aiosmtpd works). No size limit, a fixed host name (so no
getfqdn() per connection), logging at warning. The stock asyncio loop is used
unless BENCH_UVLOOP=1 and uvloop is importable.

Prints "bench-adapter aiosmtpd ..." once listening and
"BENCH messages=N bytes=B" on SIGTERM/SIGINT.
"""

import asyncio
import logging
import os
import signal
import sys

import aiosmtpd
from aiosmtpd.smtp import SMTP

logging.getLogger("mail.log").setLevel(logging.WARNING)
counts = {"messages": 0, "bytes": 0}


class Counter:
    async def handle_DATA(self, server, session, envelope):
        counts["messages"] += 1
        counts["bytes"] += len(envelope.original_content or b"")
        return "250 OK"


def main():
    port = int(sys.argv[1])
    loop_name = "asyncio"
    if os.environ.get("BENCH_UVLOOP") == "1":
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            loop_name = "uvloop"
        except ImportError:
            pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = Counter()
    server = loop.run_until_complete(loop.create_server(
        lambda: SMTP(handler, hostname="localhost", data_size_limit=None,
                     enable_SMTPUTF8=True, loop=loop),
        "127.0.0.1", port, backlog=511))
    stopped = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopped.done() or stopped.set_result(None))
    print(f"bench-adapter aiosmtpd {aiosmtpd.__version__} python {sys.version.split()[0]} "
          f"loop={loop_name} port={port}", flush=True)
    loop.run_until_complete(stopped)
    print(f"BENCH messages={counts['messages']} bytes={counts['bytes']}", flush=True)
    server.close()
    os._exit(0)


if __name__ == "__main__":
    main()
