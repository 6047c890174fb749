"""
The attack script (benchmarks/attack.py) and the soak script
(benchmarks/soak.py) still run: tiny smoke versions of them, so that CI
notices when a script, its sink, or a defence of the server breaks.  They
measure next to nothing; docs/security.md has the figures of real runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SkipTest, TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACK = os.path.join(ROOT, "benchmarks", "attack.py")
SOAK = os.path.join(ROOT, "benchmarks", "soak.py")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def _linux_tree(script: str) -> None:
    if not os.path.exists(script):
        raise SkipTest("benchmarks/ is not in this tree")
    if not sys.platform.startswith("linux"):
        raise SkipTest("the scripts read /proc")


class AttackSmokeTests(TestCase):
    """
    C{benchmarks/attack.py --quick}: every attack with tiny counts and
    sub-second timeouts.
    """

    def test_quick(self) -> None:
        """
        Every attack of the quick profile runs against a live server and
        passes (or fails only as its C{todo} says), the table is printed,
        and the JSON results name every attack.
        """
        _linux_tree(ATTACK)
        out = tempfile.mkdtemp(prefix="smtphooks-attack-smoke-")
        self.addCleanup(shutil.rmtree, out, True)
        results = os.path.join(out, "attack.json")
        run = subprocess.run(
            [sys.executable, ATTACK, "--quick", "--json", results],
            check=False,
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
            env=_environment(),
        )
        self.assertEqual(run.returncode, 0, run.stdout[-6000:] + run.stderr[-3000:])
        self.assertIn("## Attack results", run.stdout)
        self.assertIn("attack PASSED", run.stdout)
        with open(results) as f:
            rows = {row["name"]: row for row in json.load(f)["rows"]}
        for name in (
            "endless-line",
            "endless-data-line",
            "oversize-data",
            "oversize-bdat",
            "slowloris",
            "idle",
            "mid-data-disconnect",
            "garbage",
            "storm",
            "storm-never-reads",
            "flood",
            "hooks",
            "limits",
            "exactly-once",
        ):
            self.assertIn(name, rows)
            self.assertTrue(rows[name]["ok"], rows[name])

    def test_list(self) -> None:
        """
        C{--list} names the attacks without starting anything.
        """
        _linux_tree(ATTACK)
        run = subprocess.run(
            [sys.executable, ATTACK, "--list"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=_environment(),
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("slowloris", run.stdout)
        self.assertIn("storm-never-reads", run.stdout)


class SoakSmokeTests(TestCase):
    """
    C{benchmarks/soak.py} for a few seconds against the counting sink.
    """

    def test_short_soak(self) -> None:
        """
        smtp-source sends for about six seconds; everything it counts as
        sent is delivered, and the figures are written.
        """
        _linux_tree(SOAK)
        if not (shutil.which("smtp-source") or os.path.exists("/usr/sbin/smtp-source")):
            raise SkipTest("Postfix's smtp-source is not installed")
        out = tempfile.mkdtemp(prefix="smtphooks-soak-smoke-")
        self.addCleanup(shutil.rmtree, out, True)
        figures = os.path.join(out, "soak.json")
        run = subprocess.run(
            [sys.executable, SOAK, "--minutes", "0.1", "--server", "sink", "--sessions", "4",
             "--sample", "1", "--json", figures],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            env=_environment(),
        )
        self.assertEqual(run.returncode, 0, run.stdout[-3000:] + run.stderr[-3000:])
        with open(figures) as f:
            result = json.load(f)
        self.assertTrue(result["ok"], result)
        self.assertGreater(result["sent"], 0)
        self.assertEqual(result["sent"], result["delivered"])
