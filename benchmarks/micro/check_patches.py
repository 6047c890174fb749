#!/usr/bin/env python3
"""
Run (part of) the test suite with candidate changes of patches.py applied,
to see that they keep the engine's behaviour before anyone ports them.

    python benchmarks/micro/check_patches.py hooks,stream,parse,scan [tests ...]

From the repository root (the tests import the checkout's smtphooks). The
default tests are tests.test_parse tests.test_protocol tests.test_wire_data
tests.test_wire_pipelining. Compare with the same command and the patch "base"
(no change): the engine is being edited, so failures may be the engine's own.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else ["base"]
    tests = sys.argv[2:] or ["tests.test_parse", "tests.test_protocol",
                             "tests.test_wire_data", "tests.test_wire_pipelining"]
    sys.path.insert(0, os.getcwd())
    import patches

    for name in names:
        for apply in patches.VARIANTS[name]:
            apply([])
    print(f"patches applied: {','.join(names)}", flush=True)
    from twisted.scripts.trial import run

    temp = os.path.join(tempfile.mkdtemp(prefix="check-patches-"), "_trial_temp")
    sys.argv = ["trial", "--temp-directory", temp, *tests]
    run()


if __name__ == "__main__":
    main()
