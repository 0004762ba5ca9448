"""The draft's MLP block (residual add + RMS norm, gate/up + SiLU-multiply, down) at one token: three
kernels (pointwise_triton, int4_triton) against one persistent kernel (below), over 32 layers'
copies of the weights (read from DRAM, as in a draft step), CUDA graph, PDL.

    python bench/draft_mlp_lab.py [--shape 7b] [--json OUT.json]

The persistent kernel (not used by the engine: slower than the three kernels, docs/performance.md and
docs/perf/h200-2026-12-04-draft-mlp-lab.json; an ncu profile of an earlier version beside it): the
residual add, RMS norm, gate/up with SiLU-multiply, and down in one launch instead of three.

A draft step is a chain of GEMVs too small to hide a kernel's ramp-up and tail: every launch boundary
drains the GPU. Here a grid that never exceeds what is resident at once (so that the programs can wait
for each other) works through the phases and meets the others at a barrier in
global memory between gate/up and down, whose input is the whole gate/up output:
  1. each program adds the attention output to the residual stream and normalises it itself (a 8-10 KB
     row read from L2; program 0 stores the new residual stream), into its own scratch row;
  2. gate/up row blocks, round robin over the programs, SiLU-multiply in the epilogue (int4_triton.half2_rows);
  3. barrier; 4. down row blocks, reading the gate/up output past L1 (other programs wrote it).
"""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHAPES, capture_graph, cuda_ms, parser, require_cuda, write_json  # noqa: E402
from selfspec.accel import int4 as int4_triton, launch, pointwise as pointwise_triton  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.accel.int4 import half2_rows, int4_matmul_half2, store_rows  # noqa: E402
from selfspec.accel.launch import let_next_kernel_launch, wait_for_inputs  # noqa: E402
from selfspec.quantize import pack_half2_words, quantize_int4  # noqa: E402

# Thread 0 of the program arrives and waits; the others wait at the CTA barrier after it (one poller per
# program: a poll by every thread of every program floods the counter's L2 line). The counter only
# grows (64 bits: it never wraps), by `programs` per barrier: this one ends at the next multiple of
# `programs` above what it held before this program arrived. Release orders the program's stores (all
# done at the CTA barrier before) before the arrival; acquire orders the loads after the wait.
_GRID_BARRIER = """
{
.reg .pred other, waiting;
.reg .u32 t;
.reg .u64 seen, target;
mov.u32 t, %tid.x;
setp.ne.u32 other, t, 0;
@other bra DONE;
ld.acquire.gpu.global.u64 seen, [$1];
div.u64 target, seen, $2;
add.u64 target, target, 1;
mul.lo.u64 target, target, $2;
red.release.gpu.global.add.u64 [$1], 1;
WAIT:
ld.acquire.gpu.global.u64 seen, [$1];
setp.lt.u64 waiting, seen, target;
@waiting bra WAIT;
DONE:
mov.u32 $0, 0;
}
"""


@triton.jit
def _grid_barrier(counter_ptr, programs, ASM: tl.constexpr):
    one = tl.zeros([1], tl.int32)  # inline assembly takes tensors
    tl.debug_barrier()
    tl.inline_asm_elementwise(ASM, "=r,l,l", [counter_ptr + one, (one + programs).to(tl.int64)],
                              dtype=tl.int32, is_pure=False, pack=1)
    tl.debug_barrier()

@triton.jit
def _draft_mlp_kernel(
    x_ptr, delta_ptr, norm_ptr, h_ptr, normed_ptr, act_ptr, out_ptr, gu_w_ptr, gu_s_ptr, down_w_ptr, down_s_ptr,
    counter_ptr, eps, HIDDEN: tl.constexpr, INTER: tl.constexpr, BLOCK_H: tl.constexpr, ASM: tl.constexpr,
    GROUP: tl.constexpr, BN1: tl.constexpr, BG1: tl.constexpr, EVEN1: tl.constexpr, BN2: tl.constexpr,
    BG2: tl.constexpr, EVEN2: tl.constexpr, BARRIER: tl.constexpr, PDL: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    wait_for_inputs(PDL)
    # 1. h = x + delta (the residual stream), normed as pointwise_triton rounds it, into this program's row.
    # The whole row at once: in chunks, its dependent L2 round trips add up to microseconds per program.
    i = tl.arange(0, BLOCK_H)
    ok = i < HIDDEN
    h = tl.load(x_ptr + i, mask=ok, other=0.0)
    h = (h + tl.load(delta_ptr + i, mask=ok, other=0.0)).to(h.dtype)
    if pid == 0:
        tl.store(h_ptr + i, h, mask=ok)
    h32 = h.to(tl.float32)
    normed = (h32 * tl.rsqrt(tl.sum(h32 * h32, axis=0) / HIDDEN + eps)).to(h.dtype)
    w = tl.load(norm_ptr + i, mask=ok, other=0.0)
    my_row = normed_ptr + pid * HIDDEN
    tl.store(my_row + i, (w.to(tl.float32) * normed.to(tl.float32)).to(h.dtype), mask=ok)
    tl.debug_barrier()
    # 2. gate/up, SiLU-multiply: act [INTER]
    n1: tl.constexpr = 2 * INTER
    for block in range(pid, tl.cdiv(n1, BN1), programs):
        y = half2_rows(my_row.to(tl.pointer_type(tl.int32)), gu_w_ptr, gu_s_ptr, block * BN1, n1, HIDDEN, ASM,
                       GROUP, BN1, BG1, EVEN1, True, "")
        store_rows(y, act_ptr, block * BN1, n1, BN1, True)
    # 3. every program's part of act is stored
    _grid_barrier(counter_ptr, programs, BARRIER)
    # 4. down: out [HIDDEN]
    for block in range(pid, tl.cdiv(HIDDEN, BN2), programs):
        y = half2_rows(act_ptr.to(tl.pointer_type(tl.int32)), down_w_ptr, down_s_ptr, block * BN2, HIDDEN, INTER,
                       ASM, GROUP, BN2, BG2, EVEN2, False, ".cg")
        store_rows(y, out_ptr, block * BN2, HIDDEN, BN2, False)
    let_next_kernel_launch(PDL)


class DraftMLPKernel:
    """Launches the fused MLP of one draft layer. Scratch buffers and the barrier's counter are allocated
    once per (device, sizes) and shared by the layers: launches on one stream never overlap in them
    (with PDL each waits for the kernel before it before touching memory).

    The grid is sized from the compiled kernel's registers and shared memory, so that every program is
    resident at once: a program waiting at the barrier for one that cannot be scheduled would wait forever."""

    def __init__(self, hidden: int, inter: int, group: int, device, programs_per_sm: int = 1,
                 blocks=(8, 16, 16, 4), num_warps: int = 8, num_stages: int = 3):
        self.hidden, self.inter, self.group = hidden, inter, group
        self.device = torch.device(device)
        self.programs_per_sm = programs_per_sm
        self.blocks, self.num_warps, self.num_stages = blocks, num_warps, num_stages
        self.programs = None
        self.act = torch.empty(inter, dtype=torch.float16, device=device)
        self.counter = torch.zeros(1, dtype=torch.int64, device=device)

    def _meta(self):
        bn1, bg1, bn2, bg2 = self.blocks
        return dict(HIDDEN=self.hidden, INTER=self.inter, BLOCK_H=triton.next_power_of_2(self.hidden),
                    ASM=int4_triton._HALF2_DOT, GROUP=self.group, BN1=bn1, BG1=bg1,
                    EVEN1=2 * self.inter % bn1 == 0 and self.hidden // self.group % bg1 == 0, BN2=bn2, BG2=bg2,
                    EVEN2=self.hidden % bn2 == 0 and self.inter // self.group % bg2 == 0, BARRIER=_GRID_BARRIER,
                    PDL=launch.enabled,
                    launch_pdl=launch.enabled, num_warps=self.num_warps, num_stages=self.num_stages)

    def _size_grid(self, args):
        compiled = _draft_mlp_kernel.warmup(*args, grid=(1,), **self._meta())
        compiled._init_handles()  # loads the binary: its register count is known from then on
        props = torch.cuda.get_device_properties(self.device)
        threads = 32 * self.num_warps
        self.registers = compiled.n_regs
        by_regs = props.regs_per_multiprocessor // max(1, compiled.n_regs * threads)
        by_threads = props.max_threads_per_multi_processor // threads
        shared = compiled.metadata.shared
        by_shared = props.shared_memory_per_multiprocessor // shared if shared else by_threads
        resident = min(by_regs, by_threads, by_shared)
        if resident < 1:
            raise RuntimeError("the fused draft MLP kernel does not fit on one multiprocessor")
        self.programs = props.multi_processor_count * min(self.programs_per_sm, resident)
        self.normed = torch.empty(self.programs, self.hidden, dtype=torch.float16, device=self.device)

    def __call__(self, x, delta, norm_weight, eps, gate_up_words, gate_up_scales, down_words, down_scales):
        """(x + delta, down(silu(gate) * up) of its norm), for one token: x, delta [1, 1, hidden] float16."""
        h, out = torch.empty_like(x), torch.empty_like(x)
        args = [x, delta, norm_weight, h, None, self.act, out, gate_up_words, gate_up_scales, down_words,
                down_scales, self.counter, eps]
        if self.programs is None:
            args[4] = x  # any tensor: only the compiled kernel's resources are asked for
            self._size_grid(args)
        args[4] = self.normed
        _draft_mlp_kernel[(self.programs,)](*args, **self._meta())
        return h, out


@torch.inference_mode()
def main():
    p = parser(__doc__)
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--configs", type=int, nargs="+", help="indices of the fused configurations to run (default: all)")
    p.add_argument("--json")
    args = p.parse_args()
    require_cuda("the draft MLP lab")
    launch.set_pdl(launch.available(torch.device("cuda")))
    h, inter, group = SHAPES[args.shape]["hidden_size"], SHAPES[args.shape]["intermediate_size"], 64
    torch.manual_seed(0)
    layers = []
    for _ in range(args.layers):
        gate_up = torch.randn(2 * inter, h, device="cuda", dtype=torch.float16) * h**-0.5
        down = torch.randn(h, inter, device="cuda", dtype=torch.float16) * inter**-0.5
        (qg, sg), (qd, sd) = quantize_int4(gate_up, group), quantize_int4(down, group)
        layers.append((pack_half2_words(qg), sg.half(), pack_half2_words(qd), sd.half(),
                       (torch.rand(h, device="cuda") + 0.5).half()))
        del gate_up, down, qg, qd
    x0 = torch.randn(1, 1, h, device="cuda", dtype=torch.float16)
    d0 = torch.randn(1, 1, h, device="cuda", dtype=torch.float16)

    def separate():
        x, d = x0, d0
        for gw, gs, dw, ds, nw in layers:
            x, normed = pointwise_triton.add_rms_norm(x, d, nw, 1e-6)
            d = int4_matmul_half2(int4_matmul_half2(normed, gw, gs, group, glu=True), dw, ds, group)
        return x, d

    results = []
    gw, gs, dw, ds, nw = layers[0]
    one_x, one_normed = pointwise_triton.add_rms_norm(x0, d0, nw, 1e-6)
    one_d = int4_matmul_half2(int4_matmul_half2(one_normed, gw, gs, group, glu=True), dw, ds, group)
    ref_x, ref_d = separate()
    ms = cuda_ms(capture_graph(separate).replay, iters=30)
    mb = sum(t.numel() * t.element_size() for lay in layers for t in lay[:4]) / 1e6
    print(f"{args.shape} separate kernels: {ms * 1e3 / args.layers:.1f} us per layer ({mb / ms:.0f} GB/s)", flush=True)
    results.append({"variant": "separate", "us_per_layer": ms * 1e3 / args.layers, "GB/s": mb / ms})
    configs = [((8, 8, 8, 4), 8, 3, 8), ((8, 16, 8, 8), 8, 3, 8), ((16, 8, 8, 8), 8, 3, 8), ((8, 8, 4, 16), 8, 2, 8),
               ((8, 16, 8, 4), 8, 4, 8), ((16, 16, 16, 8), 8, 3, 8)]
    for blocks, warps, stages, per_sm in [configs[i] for i in args.configs or range(len(configs))]:
        kernel = DraftMLPKernel(h, inter, group, "cuda", programs_per_sm=per_sm, blocks=blocks, num_warps=warps,
                                num_stages=stages)

        def fused():
            x, d = x0, d0
            for gw, gs, dw, ds, nw in layers:
                x, d = kernel(x, d, nw, 1e-6, gw, gs, dw, ds)
            return x, d

        try:
            lx, ld = kernel(x0, d0, nw, 1e-6, gw, gs, dw, ds)
            one_layer_err = float((ld.float() - one_d.float()).norm() / one_d.float().norm())
            assert torch.equal(lx, one_x)
            fx, fd = fused()
            torch.cuda.synchronize()
            err = float((fd.float() - ref_d.float()).norm() / ref_d.float().norm())
            same_x = bool(torch.equal(fx, ref_x))
            ms = cuda_ms(capture_graph(fused).replay, iters=30)
        except Exception as e:  # noqa: BLE001
            print(blocks, warps, stages, per_sm, "failed:", str(e)[-300:], flush=True)
            continue
        row = {"variant": "fused", "blocks": blocks, "warps": warps, "stages": stages, "programs": kernel.programs, "registers": kernel.registers,
               "us_per_layer": ms * 1e3 / args.layers, "GB/s": mb / ms, "rel_error_vs_separate": err, "one_layer_rel_error": one_layer_err,
               "residual_identical": same_x}
        print(row, flush=True)
        results.append(row)
    write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
