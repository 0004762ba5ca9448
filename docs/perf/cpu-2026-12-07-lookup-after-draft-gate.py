"""The lookup after the INT4 draft only on suffix n-grams of at least GATE tokens (the lookup at a round's start
unchanged): bench/measure_acceptance.py run with NgramLookup.propose gated so.

    python docs/perf/cpu-2026-12-07-lookup-after-draft-gate.py GATE [measure_acceptance.py's arguments]
"""
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from selfspec import lookup  # noqa: E402

GATE = int(sys.argv[1])
ungated = lookup.NgramLookup.propose


def gated(self, max_tokens, after=()):
    if not after:
        return ungated(self, max_tokens)
    min_n = self.min_n
    self.min_n = max(min_n, GATE)
    try:
        return ungated(self, max_tokens, after)
    finally:
        self.min_n = min_n


lookup.NgramLookup.propose = gated
sys.argv = ["measure_acceptance.py"] + sys.argv[2:]
runpy.run_path(str(ROOT / "bench" / "measure_acceptance.py"), run_name="__main__")
