"""Runs a bench script with the draft's one-token attention in three kernels over every cache
(attention.DRAFT_ONE_KERNEL_KEYS 0), beside the same script without, in docs/perf/2026-12-07-final-device-run.sh:

    python docs/perf/2026-12-07-draft-three-kernels.py bench/benchmark.py ARGS...
"""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from selfspec.accel import attention  # noqa: E402

attention.DRAFT_ONE_KERNEL_KEYS = 0
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
