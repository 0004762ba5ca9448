"""Runs a bench script with the draft's decode attention in the target's blocks of 128 keys whatever the cache's
length (attention.draft_block_kv off), beside the same script with it, in docs/perf/2026-12-07-final-device-run.sh:

    python docs/perf/2026-12-07-draft-blocks-off.py bench/benchmark.py ARGS...
"""
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from selfspec.accel import attention  # noqa: E402

attention.draft_block_kv = lambda end, window=None: attention.BLOCK_KV
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
