"""Runs a bench script with the draft's norms taking their sums of squares from the GEMV before
(`fused_draft.squares_from_producer`), beside the same script without, in
docs/perf/2026-12-07-squares-device-run.sh:

    python docs/perf/2026-12-07-with-squares.py bench/benchmark.py ARGS...
"""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from selfspec.accel import fused_draft  # noqa: E402

fused_draft.squares_from_producer = True
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
