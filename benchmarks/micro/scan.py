#!/usr/bin/env python3
"""
How fast can the DATA scanner look for lines that start with "." (the
terminator <CRLF>.<CRLF> and dot-stuffed lines), on 64 KiB reads?

    python benchmarks/micro/scan.py

DataScanner.feed spends ~3/4 of the Python time of the large scenario in
bytes.find(b"\\r\\n.") (py-spy, _parse.py). CPython's find for a 3-byte needle
is a Horspool-style loop (about one step per 3 bytes when the needle's last
byte is absent), not memchr. This compares ways to find the same positions,
on two bodies: the benchmark's ("X" * 78 lines: no dots at all) and English-like
text (a "." every ~60 bytes, none at line starts), GB/s, best of 5:

  find3     buf.find(b"\\r\\n.")                (what DataScanner does)
  find5     buf.find(b"\\r\\n.\\r\\n")            (terminator only: not enough alone)
  memchr    buf.find(b".") and a check of the 2 bytes before (memchr per dot)
  nldot     buf.find(b"\\n.") then check "\\r"
  regex     re.compile(rb"\\r\\n\\.").search
  count     buf.count(b"\\r\\n.") == 0 as the fast path, then find3
"""

import re
import time

READ = 65536


def bodies():
    x = (b"X" * 78 + b"\r\n") * (READ // 80 + 1)
    words = b"The quick brown fox jumps over the lazy dog. Mail is text, mostly. "
    line = (words * 2)[:76] + b"\r\n"
    text = line * (READ // len(line) + 1)
    return {"X-lines": x[:READ], "text": text[:READ]}


def find3(buf):
    return buf.find(b"\r\n.")


def find5(buf):
    return buf.find(b"\r\n.\r\n")


def memchr(buf):
    i = buf.find(b".")
    while i >= 0:
        if i >= 2 and buf[i - 2] == 13 and buf[i - 1] == 10:
            return i - 2
        i = buf.find(b".", i + 1)
    return -1


def nldot(buf):
    i = buf.find(b"\n.")
    while i >= 0:
        if i >= 1 and buf[i - 1] == 13:
            return i - 1
        i = buf.find(b"\n.", i + 1)
    return -1


_RE = re.compile(rb"\r\n\.")


def regex(buf):
    m = _RE.search(buf)
    return m.start() if m else -1


def count(buf):
    return -1 if not buf.count(b"\r\n.") else buf.find(b"\r\n.")


def main():
    fns = [find3, find5, memchr, nldot, regex, count]
    print(f"{'':8s}" + "".join(f"{f.__name__:>10s}" for f in fns) + "   (GB/s)")
    for name, buf in bodies().items():
        row = []
        for f in fns:
            n = 2000
            best = 1e9
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(n):
                    f(buf)
                best = min(best, time.perf_counter() - t0)
            row.append(len(buf) * n / best / 1e9)
        print(f"{name:8s}" + "".join(f"{v:10.2f}" for v in row))


if __name__ == "__main__":
    main()
