"""
The benchmark in benchmarks/ still runs: a tiny smoke version of it (a few
messages per scenario, one repeat), so that CI notices when the benchmark or
a sink breaks. It measures nothing; see docs/performance.md for real runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


class BenchmarkSmokeTests(TestCase):
    def smoke(self, *args: str) -> list[dict[str, Any]]:
        """
        Run C{benchmarks/run.py --smoke ARGS}; check that it succeeded and
        printed its summary; return its records.
        """
        if not os.path.exists(RUN):
            raise SkipTest("benchmarks/ is not in this tree")
        if not sys.platform.startswith("linux"):
            raise SkipTest("the benchmark reads /proc")
        out = tempfile.mkdtemp(prefix="smtphooks-bench-smoke-")
        result = subprocess.run(
            [sys.executable, RUN, "--smoke", "--out", out, *args],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("## Summary", result.stdout)
        with open(os.path.join(out, "results.json")) as f:
            meta = json.load(f)
        runs: list[dict[str, Any]] = meta["results"]
        return runs

    def test_smoke(self) -> None:
        """
        C{benchmarks/run.py --smoke} runs every scenario against the
        smtphooks sink and the small scenario against each peer that is
        installed (others are skipped), every server counts the messages it
        was sent, and the summary table is printed.
        """
        runs = self.smoke()
        self.assertTrue(runs)
        self.assertTrue(all(r["ok"] for r in runs), [r for r in runs if not r["ok"]])
        smtphooks = {r["scenario"] for r in runs if r["server"] == "smtphooks"}
        self.assertEqual(smtphooks, {"small", "persistent", "large", "pipelined", "idle"})
        # Every throughput run was checked against the sink's own count.
        for r in runs:
            if r["scenario"] != "idle":
                self.assertEqual(r["server_messages"], r["n"] + 1, r)

    def test_workers_and_go(self) -> None:
        """
        The forked sink (C{smtphooks-workers2}) serves one port from two
        processes and reports one count, their sum; C{go-smtp} runs when Go
        and its packages are installed (else it is skipped).
        """
        runs = self.smoke("--servers", "smtphooks-workers2,go-smtp",
                          "--scenarios", "small,persistent,idle")
        self.assertTrue(all(r["ok"] for r in runs), [r for r in runs if not r["ok"]])
        workers = [r for r in runs if r["server"] == "smtphooks-workers2"]
        self.assertEqual({r["scenario"] for r in workers}, {"small", "persistent", "idle"})
        for r in runs:
            if r["scenario"] != "idle":
                self.assertEqual(r["server_messages"], r["n"] + 1, r)
        for r in workers:
            self.assertIn(" workers=2 ", r["adapter"])
