"""Instructions per main-loop iteration of the f16x2 INT4 GEMV, compiled for sm_90 without a GPU.

    python bench/int4_sass_count.py

Compiles the kernel of selfspec/accel/int4.py (both ways of summing, with and without masks) with
`triton.compile` for a `GPUTarget("cuda", 90, 32)`, disassembles them with the cuobjdump that Triton's package carries, finds the
loop (the backward branch) and counts its instructions per thread, by opcode. Each thread handles
BLOCK_N * BLOCK_G * 8 / (32 * num_warps) words of 8 weights per iteration. Static counts, not timings: the
Triton installed here may compile somewhat differently from the device's.
"""
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import parser  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.accel.int4 import _HALF2_DOT, _int4_half2_gemv_kernel  # noqa: E402

SIGNATURE = {"x_ptr": "*i32", "w_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp16", "N": "i32", "K": "i32",
             "stride_xm": "i32", "stride_ym": "i32"}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def loop_opcodes(fn, constants: dict, num_warps: int, num_stages: int) -> Counter:
    source = ASTSource(fn, {**SIGNATURE, **{name: "constexpr" for name in constants}},
                       constexprs={(fn.arg_names.index(name),): value for name, value in constants.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=num_warps, num_stages=num_stages))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        sass = subprocess.run([CUOBJDUMP, "-sass", f.name], capture_output=True, text=True, check=True).stdout
    code = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+([^;]*);", sass)]
    for address, text in code:
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:  # the loop's backward branch
            start = int(target.group(1), 16)
            body = [t.split()[1] if t.startswith("@") else t.split()[0] for a, t in code if start <= a <= address]
            return Counter(op.split(".")[0] for op in body)
    raise RuntimeError("no loop found")


def main():
    parser(__doc__).parse_args()
    base = dict(ASM=_HALF2_DOT, GROUP=64, GLU=False, PDL=False)
    for block_n, block_g, warps, stages in [(16, 8, 4, 2), (32, 8, 2, 3), (8, 16, 8, 2)]:
        words = block_n * block_g * 8 // (32 * warps)
        variants = {
            "reduce per iteration, masks": (_int4_half2_gemv_kernel, dict(EVEN=False, SUM_PER_WORD=False)),
            "reduce per iteration, no masks": (_int4_half2_gemv_kernel, dict(EVEN=True, SUM_PER_WORD=False)),
            "sum per word, masks": (_int4_half2_gemv_kernel, dict(EVEN=False, SUM_PER_WORD=True)),
            "sum per word, no masks": (_int4_half2_gemv_kernel, dict(EVEN=True, SUM_PER_WORD=True)),
        }
        print(f"\n{block_n} rows x {block_g} groups, {warps} warps, {stages} stages: {words} words per thread")
        for name, (fn, extra) in variants.items():
            ops = loop_opcodes(fn, dict(base, BLOCK_N=block_n, BLOCK_G=block_g, **extra), warps, stages)
            total = sum(ops.values())
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(8))
            print(f"  {name:32s} {total:5d} per iteration, {total / words:5.1f} per word  ({top})")


if __name__ == "__main__":
    sys.exit(run_main(main))
