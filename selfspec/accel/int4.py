"""Triton matrix-vector kernels for the INT4 draft: y = x @ (q * scale)^T.

The draft only ever runs one token at a time, so these are GEMVs: each program streams BLOCK_N rows of
packed weights once. Rows of x (M > 1) are separate programs. Two kernels:
- `int4_matmul_half2` (NVIDIA, fp16 activations): eight nibbles per int32 word become four half2 pairs by
  `lop3` bit tricks and are multiplied in f16x2 arithmetic (inline PTX), as FasterTransformer's and
  Marlin's kernels do. Unpacking dominated the portable kernel's instruction count; this one is 27-59% faster
  on an H100 (docs/performance.md).
- `int4_matmul` (any Triton target, fp16/bf16/fp32 activations): uint8 pairs unpacked with integer
  arithmetic and float conversions. Triton also targets Intel GPUs, so it can serve `xpu`; it also runs
  under Triton's CPU interpreter, which cannot run inline PTX.
GROUP/2 (and GROUP/8) must be powers of two. `Int4Half2Linear`, `Int4TritonLinear` and `Int4CpuLinear` are
quantize.Int4Linear with a kernel swapped in (accel.use_kernels). Importing this module without Triton is
fine.

`quantize_groups` builds the draft: the clipping search of quantize.quantize_int4 in one pass over the
weights (torch's version makes about 60 passes over float32 copies: 1.4 s for a 7B draft on an H100).
"""
import torch

from .. import model, quantize
from . import launch, pointwise

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None


if triton is not None:

    @triton.jit
    def _int4_gemv_kernel(
        x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
        GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    ):
        # Tiles are [BLOCK_N rows, BLOCK_G groups, GROUP/2 bytes]: weight bytes load as contiguous
        # vectors, each group's scale loads once and broadcasts. Low nibbles pair with the first half of
        # each group's activations, high nibbles with the second half (quantize.pack_nibbles).
        HALF: tl.constexpr = GROUP // 2
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        n_groups = K // GROUP
        g = tl.arange(0, BLOCK_G)
        j = tl.arange(0, HALF)
        acc = tl.zeros((BLOCK_N, BLOCK_G, HALF), dtype=tl.float32)
        for g0 in range(0, n_groups, BLOCK_G):
            groups = g0 + g
            g_ok = groups < n_groups
            ok = row_ok[:, None] & g_ok[None, :]
            w = tl.load(
                w_ptr + rows[:, None, None] * (K // 2) + groups[None, :, None] * HALF + j[None, None, :],
                mask=ok[:, :, None], other=0x88,
            )
            scale = tl.load(s_ptr + rows[:, None] * n_groups + groups[None, :], mask=ok, other=0.0).to(tl.float32)
            x_ptrs = x_ptr + m * stride_xm + groups[:, None] * GROUP + j[None, :]
            x_low = tl.load(x_ptrs, mask=g_ok[:, None], other=0.0).to(tl.float32)
            x_high = tl.load(x_ptrs + HALF, mask=g_ok[:, None], other=0.0).to(tl.float32)
            low = (w & 0xF).to(tl.float32) - 8.0
            high = (w >> 4).to(tl.float32) - 8.0
            acc += (low * x_low[None, :, :] + high * x_high[None, :, :]) * scale[:, :, None]
        y = tl.sum(tl.sum(acc, axis=2), axis=1)
        tl.store(y_ptr + m * stride_ym + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)

    # Tuned per weight shape on first use (outside graph capture: the capture's warm-up runs it first).
    _int4_gemv_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_N": bn, "BLOCK_G": bg}, num_warps=w, num_stages=s)
            for bn, bg, w, s in [  # the best of a sweep on an H100 (bench/int4_kernel_lab.py), plus wider tiles
                (1, 16, 2, 2), (1, 16, 2, 3), (4, 16, 4, 3), (8, 16, 4, 3), (16, 8, 4, 3), (8, 8, 4, 3),
                (2, 32, 4, 3), (8, 32, 8, 3),
            ]
        ],
        key=["N", "K"],
    )(_int4_gemv_kernel)


_HALF2_DOT = """
{
.reg .b32 h0, h1, h2, h3, t, a16, b16, a256, b256, acc;
.reg .f16 lo, hi;
.reg .f32 flo, fhi;
mov.b32 a16, 0x2C002C00;
mov.b32 b16, 0xD408D408;
mov.b32 a256, 0x1C001C00;
mov.b32 b256, 0xC480C480;
lop3.b32 h0, $1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 h1, $1, 0x00F000F0, 0x64006400, 0xEA;
shr.u32 t, $1, 8;
lop3.b32 h2, t, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 h3, t, 0x00F000F0, 0x64006400, 0xEA;
fma.rn.f16x2 h0, h0, a16, b16;
fma.rn.f16x2 h1, h1, a256, b256;
fma.rn.f16x2 h2, h2, a16, b16;
fma.rn.f16x2 h3, h3, a256, b256;
mul.rn.f16x2 acc, h0, $2;
fma.rn.f16x2 acc, h1, $3, acc;
fma.rn.f16x2 acc, h2, $4, acc;
fma.rn.f16x2 acc, h3, $5, acc;
mov.b32 {lo, hi}, acc;
cvt.f32.f16 flo, lo;
cvt.f32.f16 fhi, hi;
add.f32 $0, flo, fhi;
}
"""
# One word ($1) times four int32 pairs of fp16 activations ($2..$5) -> a float32 partial dot product.
# `(word & 0x000F000F) | 0x64006400` is the half2 (1024 + n, 1024 + n') for the nibbles at bits 0 and 16
# (0x00F0 masks give 1024 + 16 n); one fma per pair maps them to (n - 8) / 16, exactly. The 1/16 keeps
# the four-term f16x2 sums far from overflow (|x| up to ~30,000); the caller multiplies by 16 again.

if triton is not None:

    @triton.jit
    def half2_rows(x_ptr, w_ptr, s_ptr, row0, N, K, ASM: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_G: tl.constexpr, EVEN: tl.constexpr, SUM_PER_WORD: tl.constexpr, X_CACHE: tl.constexpr):
        """Rows row0..row0+BLOCK_N of the INT4 weight (int32 words [N, K/8], quantize.pack_half2_words; scales
        [N, K/GROUP]) times one row of fp16 activations read as int32 pairs at x_ptr: float32 [BLOCK_N].

        [BLOCK_N rows, BLOCK_G groups, GROUP/8 words] per iteration. SUM_PER_WORD: each word's scaled partial
        product is summed in place and the words are reduced once, after the loop, instead of in every
        iteration (shuffles between the threads of a group): fewer instructions per word, which pays on the
        large matrices, where the kernel is bound by instruction issue. EVEN: whole tiles only, no masks.
        X_CACHE: the activations' cache modifier ("" or ".cg" for data other programs wrote in this launch)."""
        WORDS: tl.constexpr = GROUP // 8
        rows = row0 + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        n_groups = K // GROUP
        g = tl.arange(0, BLOCK_G)
        i = tl.arange(0, WORDS)
        tile: tl.constexpr = (BLOCK_N, BLOCK_G, WORDS)
        if SUM_PER_WORD:
            acc = tl.zeros(tile, dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_G), dtype=tl.float32)
        for g0 in range(0, n_groups, BLOCK_G):
            groups = g0 + g
            w_ptrs = w_ptr + rows[:, None, None] * (K // 8) + groups[None, :, None] * WORDS + i[None, None, :]
            pairs = x_ptr + (groups[:, None] * WORDS + i[None, :]) * 4  # 4 pairs per word
            s_ptrs = s_ptr + rows[:, None] * n_groups + groups[None, :]
            if EVEN:
                words = tl.load(w_ptrs)
                x0 = tl.load(pairs, cache_modifier=X_CACHE)
                x1 = tl.load(pairs + 1, cache_modifier=X_CACHE)
                x2 = tl.load(pairs + 2, cache_modifier=X_CACHE)
                x3 = tl.load(pairs + 3, cache_modifier=X_CACHE)
                scale = tl.load(s_ptrs)
            else:
                g_ok = groups < n_groups
                ok = row_ok[:, None] & g_ok[None, :]
                words = tl.load(w_ptrs, mask=ok[:, :, None], other=0)
                x0 = tl.load(pairs, mask=g_ok[:, None], other=0, cache_modifier=X_CACHE)
                x1 = tl.load(pairs + 1, mask=g_ok[:, None], other=0, cache_modifier=X_CACHE)
                x2 = tl.load(pairs + 2, mask=g_ok[:, None], other=0, cache_modifier=X_CACHE)
                x3 = tl.load(pairs + 3, mask=g_ok[:, None], other=0, cache_modifier=X_CACHE)
                scale = tl.load(s_ptrs, mask=ok, other=0.0)
            x0, x1, x2, x3 = (tl.broadcast_to(x0[None, :, :], tile), tl.broadcast_to(x1[None, :, :], tile),
                              tl.broadcast_to(x2[None, :, :], tile), tl.broadcast_to(x3[None, :, :], tile))
            dots = tl.inline_asm_elementwise(ASM, "=r,r,r,r,r,r", [words, x0, x1, x2, x3], dtype=tl.float32,
                                             is_pure=True, pack=1)
            if SUM_PER_WORD:
                acc += dots * scale.to(tl.float32)[:, :, None]
            else:
                acc += tl.sum(dots, axis=2) * scale.to(tl.float32)
        if SUM_PER_WORD:
            acc = tl.sum(acc, axis=2)
        return tl.sum(acc, axis=1) * 16.0

    @triton.jit
    def store_rows(y, y_ptr, row0, N, BLOCK_N: tl.constexpr, GLU: tl.constexpr):
        """Store rows row0.. of a product, y [BLOCK_N] float32; with GLU the rows interleave gate and up and
        silu(gate) * up is stored instead, at row0 / 2.."""
        if GLU:
            gate, up = tl.split(tl.reshape(y, (BLOCK_N // 2, 2)))
            out_rows = row0 // 2 + tl.arange(0, BLOCK_N // 2)
            out = gate / (1.0 + tl.exp(-gate)) * up
            tl.store(y_ptr + out_rows, out.to(y_ptr.dtype.element_ty), mask=out_rows < N // 2)
        else:
            rows = row0 + tl.arange(0, BLOCK_N)
            tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=rows < N)

    @triton.jit
    def _int4_half2_gemv_kernel(
        x_ptr, w_ptr, s_ptr, y_ptr, N, K, stride_xm, stride_ym,
        ASM: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, GLU: tl.constexpr,
        PDL: tl.constexpr, EVEN: tl.constexpr, SUM_PER_WORD: tl.constexpr,
    ):
        # x_ptr: fp16 activations read as int32 pairs [M, K/2]; one program per BLOCK_N rows and row of x.
        m = tl.program_id(1)
        row0 = tl.program_id(0) * BLOCK_N
        wait_for_inputs(PDL)
        y = half2_rows(x_ptr + m * stride_xm, w_ptr, s_ptr, row0, N, K, ASM, GROUP, BLOCK_N, BLOCK_G, EVEN,
                       SUM_PER_WORD, "")
        let_next_kernel_launch(PDL)
        store_rows(y, y_ptr + m * stride_ym, row0, N, BLOCK_N, GLU)

    # The best of sweeps on an H100 and an H200 (bench/int4_kernel_lab.py --cold: BLOCK_N 4-32, BLOCK_G 2-16,
    # 1-8 warps, 2-4 stages, both ways of summing).
    HALF2_CONFIGS = [
        triton.Config({"BLOCK_N": bn, "BLOCK_G": bg, "SUM_PER_WORD": per_word}, num_warps=w, num_stages=s)
        for bn, bg, w, s, per_word in [(8, 8, 4, 2, False), (8, 16, 8, 2, False), (16, 8, 1, 2, False),
                                       (16, 8, 4, 2, False), (16, 16, 8, 2, False), (16, 8, 2, 2, True),
                                       (32, 8, 2, 3, True)]
    ]

    def _whole_tiles(meta) -> bool:
        return meta["N"] % meta["BLOCK_N"] == 0 and meta["K"] // meta["GROUP"] % meta["BLOCK_G"] == 0

    _int4_half2_gemv_tuned = launch.autotune(configs=HALF2_CONFIGS, key=["N", "K", "GLU"])(
        triton.heuristics({"EVEN": _whole_tiles})(_int4_half2_gemv_kernel))


def int4_matmul_half2(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, group_size: int,
                      glu: bool = False, config=None) -> torch.Tensor:
    """x [..., K] (float16) times the INT4 weight as int32 words [N, K/8] (quantize.pack_half2_words), scales
    [N, K/group] float16. With `glu` the rows interleave gate and up and the result is silu(gate) * up,
    [..., N/2]. NVIDIA GPUs only (inline PTX). `config`, one of HALF2_CONFIGS, skips autotuning (tests)."""
    if x.dtype != torch.float16:
        raise TypeError(f"int4_matmul_half2 takes float16 activations, got {x.dtype}")
    n, k = words.shape[0], words.shape[1] * 8
    n_out = n // 2 if glu else n
    pairs = x.reshape(-1, k).contiguous().view(torch.int32)
    y = torch.empty(pairs.shape[0], n_out, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), pairs.shape[0])  # noqa: E731
    args = (pairs, words, scales, y, n, k, pairs.stride(0), y.stride(0))
    meta = dict(ASM=_HALF2_DOT, GROUP=group_size, GLU=glu, PDL=launch.enabled, launch_pdl=launch.enabled)
    if config is None:
        _int4_half2_gemv_tuned[grid](*args, **meta)
    else:
        blocks = config.kwargs
        even = _whole_tiles(dict(blocks, N=n, K=k, GROUP=group_size))
        _int4_half2_gemv_kernel[grid(blocks)](*args, **meta, **blocks, EVEN=even, num_warps=config.num_warps,
                                              num_stages=config.num_stages)
    return y.view(*x.shape[:-1], n_out)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int, blocks=None) -> torch.Tensor:
    """x [..., K] times the packed INT4 weight [N, K/2] (see quantize.pack_nibbles), scales [N, K/group].

    `blocks=(BLOCK_N, BLOCK_G)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    flat = x.reshape(-1, k)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    y = torch.empty(flat.shape[0], n, dtype=x.dtype, device=x.device)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), flat.shape[0])  # noqa: E731
    if blocks is None:
        _int4_gemv_tuned[grid](flat, packed, scales, y, n, k, flat.stride(0), y.stride(0), GROUP=group_size)
    else:
        _int4_gemv_kernel[grid](flat, packed, scales, y, n, k, flat.stride(0), y.stride(0), GROUP=group_size,
                                BLOCK_N=blocks[0], BLOCK_G=blocks[1])
    return y.view(*x.shape[:-1], n)


if triton is not None:

    @triton.jit
    def _round_half_even(x):
        # torch.round for |x| < 2^22: adding 1.5 * 2^23 leaves no fraction bits, so the float32 addition
        # rounds to the nearest integer, ties to even. (libdevice's rint would do, but not in the interpreter.)
        return (x + 12582912.0) - 12582912.0

    @triton.jit
    def _quantize_groups_kernel(w_ptr, q_ptr, s_ptr, ratios_ptr, num_groups,
                                GROUP: tl.constexpr, NUM_RATIOS: tl.constexpr, BLOCK: tl.constexpr):
        # The operations of quantize.quantize_int4, in its order and with IEEE rounding, per group; only
        # the squared error's summation order differs. |w / scale| <= 7 / min(ratios), far below 2^22.
        g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = g < num_groups
        offsets = g[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
        w = tl.load(w_ptr + offsets, mask=ok[:, None], other=0.0).to(tl.float32)
        absmax = tl.maximum(tl.max(tl.abs(w), axis=1), 1e-8)
        best_err = tl.full((BLOCK,), float("inf"), tl.float32)
        best_scale = absmax
        for i in tl.static_range(NUM_RATIOS):
            scale = tl.math.div_rn(absmax * tl.load(ratios_ptr + i), 7.0)
            q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(w, scale[:, None])), -8.0), 7.0)
            diff = w - q * scale[:, None]
            err = tl.sum(diff * diff, axis=1)
            better = err < best_err  # the first ratio always; later ones only when strictly better
            best_err = tl.where(better, err, best_err)
            best_scale = tl.where(better, scale, best_scale)
        q = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(w, best_scale[:, None])), -8.0), 7.0)
        tl.store(q_ptr + offsets, q.to(tl.int8), mask=ok[:, None])
        tl.store(s_ptr + g, best_scale, mask=ok)


def quantize_groups(weight: torch.Tensor, group_size: int, clip_ratios) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize.quantize_int4 for a weight on a Triton device: (q int8 [N, K], scales float32 [N, K / group])."""
    n, k = weight.shape
    weight = weight.contiguous()
    q = torch.empty(n, k, dtype=torch.int8, device=weight.device)
    scales = torch.empty(n, k // group_size, dtype=torch.float32, device=weight.device)
    ratios = torch.tensor(clip_ratios, dtype=torch.float32, device=weight.device)
    block = max(1, 4096 // group_size)  # 16 KB of float32 per program
    _quantize_groups_kernel[(triton.cdiv(scales.numel(), block),)](
        weight, q, scales, ratios, scales.numel(), GROUP=group_size, NUM_RATIOS=len(clip_ratios), BLOCK=block,
    )
    return q, scales


def quantizer(device: torch.device):
    """The function that rounds a draft's weights on `device` (quantize.quantize_int4's signature)."""
    if not launch.triton_runs_on(device):
        return quantize.quantize_int4

    def quantize_on_device(weight, group_size: int, clip_ratios=quantize.CLIP_RATIOS):
        if group_size & (group_size - 1):  # the kernel's groups are powers of two
            return quantize.quantize_int4(weight, group_size, clip_ratios)
        return quantize_groups(weight, group_size, clip_ratios)

    return quantize_on_device


prefer_cuda_kernel = True  # the CUDA C++ GEMV (int4_cuda.py) where it is available; False: Triton's everywhere


def cuda_gemv(x, words, scales, group_size, glu=False, residual=None, norm=None):
    """int4_cuda.int4_gemv, launched with PDL where launch.enabled says so; `norm` an RMSNorm module whose
    norm of x is taken in the kernel (its prologue), `residual` added to the product."""
    from . import int4_cuda  # here: it takes this module's _HALF2_DOT

    norm_weight, norm_eps = (None, 0.0) if norm is None else (norm.weight, norm.eps)
    return int4_cuda.int4_gemv(x, words, scales, group_size, glu=glu, pdl=launch.enabled, residual=residual,
                               norm_weight=norm_weight, norm_eps=norm_eps)


def half2_gemv(device: torch.device, k: int, group_size: int, dtype: torch.dtype):
    """The GEMV over half2 words for one layer on `device`: (x, words, scales, group_size, glu=False) -> y.
    The CUDA C++ kernel (`cuda_gemv`) where cuda-python and NVRTC are there and it takes the shape, else
    Triton's."""
    from . import int4_cuda

    if prefer_cuda_kernel and int4_cuda.supports(k, group_size, dtype) and int4_cuda.available(device):
        return cuda_gemv
    return int4_matmul_half2


def on_cuda_kernel(layer) -> bool:
    """Whether `layer` multiplies on the CUDA C++ GEMV (whose norm prologue and residual epilogue
    fused_draft.py uses)."""
    return isinstance(layer, Int4Half2Linear) and layer.gemv is cuda_gemv


class Int4Half2Linear(quantize.Int4Linear):
    """The weights as half2 words (quantize.pack_half2_words) multiplied by `gemv`, which also applies
    silu(gate) * up (float16 activations on NVIDIA GPUs, groups of a multiple of 8)."""

    kernel = "triton_half2"

    def prepare(self):
        self.gemv = half2_gemv(self.packed.device, self.in_features, self.group_size, self.scales.dtype)
        self.packed = quantize.pack_half2_words(quantize.unpack_nibbles(self.packed, self.group_size))

    def forward(self, x):
        return self.gemv(x, self.packed, self.scales, self.group_size, glu=self.glu)


class Int4TritonLinear(quantize.Int4Linear):
    """The nibbles multiplied by `int4_matmul`, Triton's portable kernel (CUDA and XPU, any float dtype)."""

    kernel = "triton"

    def prepare(self):
        # silu(gate) * up of the interleaved rows: pointwise.py's kernel on CUDA
        self.silu_mul = pointwise.silu_mul if self.packed.device.type == "cuda" else model.silu_mul

    def forward(self, x):
        y = int4_matmul(x, self.packed, self.scales, self.group_size)
        return self.silu_mul(y[..., 0::2], y[..., 1::2]) if self.glu else y


CPU_INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's CPU int4 kernel accepts


def cpu_kernel_serves(layer: quantize.Int4Linear) -> bool:
    rows = layer.packed.shape[0]
    return (layer.group_size in CPU_INT4_GROUP_SIZES and rows % 16 == 0
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))


class Int4CpuLinear(quantize.Int4Linear):
    """torch's CPU int4 kernel (tinygemm) in bfloat16: callers in other dtypes are cast, fine for a draft
    whose output is only a proposal."""

    kernel = "cpu_int4pack"

    def prepare(self):
        q = quantize.unpack_nibbles(self.packed, self.group_size)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32) + 8, 1)
        zeros = torch.zeros_like(self.scales)  # symmetric: tinygemm computes (q - 8) * scale + zero
        self.scales = torch.stack((self.scales, zeros), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)

    def forward(self, x):
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group_size, self.scales)
        y = y.to(x.dtype).view(*x.shape[:-1], -1)
        return model.silu_mul(y[..., 0::2], y[..., 1::2]) if self.glu else y
