"""The INT4 draft's MLP block as one persistent CUDA kernel: h + down(silu(gate) * up)(rms_norm(h)).

As two GEMV launches (int4_cuda.py) the block reads gate/up, writes silu(gate) * up, and only then starts
reading down, whose weights depend on nothing: the down kernel's blocks start late, each with a ramp, and
the last wave of gate/up leaves SMs idle. Here one block per SM runs the whole block:
  1. before anything else, it starts copying its share of down's rows into shared memory in the background
     (cp.async; about 180 KB an SM for Baichuan2-7B, all of them; for 13B the first rows that fit);
  2. it waits for h (programmatic dependent launch), normalises it in shared memory, and multiplies its share
     of gate/up row pairs (int4_cuda's load and dot steps), writing silu(gate) * up to a global buffer;
  3. a grid barrier in global memory (a counter and a generation: nothing to reset between calls or CUDA-graph
     replays) waits for every block's share;
  4. it copies silu(gate) * up into shared memory and multiplies its down rows, from shared memory (the rest
     from global memory, into L2 ahead of time as gate/up's last rows stream), adding h.
Every block must be resident at once for the barrier: the grid is one block per SM and the kernel is used
only where one block fits on an SM (`plan`); the next kernel may launch (PDL) only after the barrier, so it
cannot take an SM a block of this one still needs. The arithmetic per row and lane is int4_cuda's, so the
result equals norm-GEMV-then-GEMV's but for the order of the norm's sum of squares within a block (none) and
the floating-point contraction choices of the compiler.
"""
import ctypes
import math
from dataclasses import dataclass

import torch

from . import int4_cuda

WARPS = 16  # per block (plans made from now on): 512 threads, up to 128 registers each with one block per SM
enabled = True  # False: the draft keeps two GEMV launches per MLP block (for benchmarks that compare them)

_KERNEL = r"""
// Compile-time, besides HELPERS': INTER (down's K), DOWN_ROWS (down rows per block), SHARED_ROWS (of those,
// the first ones copied into shared memory); K_COLS is the hidden size, ROWS and UNROLL gate/up's tiling.
#define CHUNKS2 (INTER / 32)
#define GROUPS2 (INTER / GROUP)

__device__ __forceinline__ void copy_async(void* to, const void* from, int bytes) {
    const u32 address = (u32)__cvta_generic_to_shared(to);
    if (bytes == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(address), "l"(from) : "memory");
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" :: "r"(address), "l"(from) : "memory");
}

// Every block has reached this point (and its writes are visible to all) when any leaves it. barrier[0] counts
// arrivals; the last one to arrive resets it and bumps the generation in barrier[1], which the others wait on.
__device__ __forceinline__ void grid_barrier(unsigned* barrier) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* generation = barrier + 1;
        const unsigned before = *generation;
        __threadfence();
        if (atomicAdd(barrier, 1u) == gridDim.x - 1) {
            barrier[0] = 0;
            __threadfence();
            atomicAdd(barrier + 1, 1u);
        } else {
            while (*generation == before) __nanosleep(32);
        }
        __threadfence();
    }
    __syncthreads();
}

// The down rows that do not fit into shared memory (this warp's share of them) into L2, as the warp starts its
// last gate/up task: late enough that the rest of gate/up does not push them out again before phase 4.
__device__ __forceinline__ void prefetch_streamed_rows(const uint4* down_words, int row0, int in_shared, int rows,
                                                       int warp, int lane) {
    for (int i = in_shared + warp; i < rows; i += WARPS)
        for (int c = lane * 8; c < CHUNKS2; c += 32 * 8)  // a 128-byte line: 8 chunks
            asm volatile("prefetch.global.L2::evict_last [%0];" :: "l"(down_words + (long long)(row0 + i) * CHUNKS2 + c));
}

extern "C" __global__ void __launch_bounds__(WARPS * 32, 1)
draft_mlp(const uint4* __restrict__ gu_words, const u16* __restrict__ gu_scales, const uint4* __restrict__ down_words,
          const u16* __restrict__ down_scales, const uint4* h, const uint4* norm_weight, uint4* act, u16* h_out,
          unsigned* barrier, float eps) {
    extern __shared__ uint4 down_tile[];  // SHARED_ROWS rows of down's words, then their scales
    u16* tile_scales = (u16*)(down_tile + SHARED_ROWS * CHUNKS2);
    __shared__ uint4 xs[K_COLS / 8];
    __shared__ uint4 acts[INTER / 8];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int row0 = blockIdx.x * DOWN_ROWS;
    const int rows = max(0, min(DOWN_ROWS, K_COLS - row0));  // down has K_COLS rows
    const int in_shared = min(rows, SHARED_ROWS);

    // 1. This block's down rows into shared memory, in the background.
    for (int j = threadIdx.x; j < in_shared * CHUNKS2; j += WARPS * 32)
        copy_async(down_tile + j, down_words + (long long)row0 * CHUNKS2 + j, 16);
    for (int j = threadIdx.x; j < in_shared * GROUPS2 / 2; j += WARPS * 32)
        copy_async((u32*)tile_scales + j, (const u32*)(down_scales + (long long)row0 * GROUPS2) + j, 4);
    asm volatile("cp.async.commit_group;" ::: "memory");

    // 2. gate/up: the warps of all blocks take the ROWS / 2 row pairs of a task in turn. The first task's
    // first loads go out before h is ready.
    const int tasks = INTER / (ROWS / 2);
    int task = blockIdx.x * WARPS + warp;
    const uint4* row_words[ROWS];
    const u16* row_scales[ROWS];
    uint4 w[UNROLL][ROWS];
    u16 s[UNROLL][ROWS];
    auto point_at = [&](int t) {  // a warp past the last task loads the last one again and stores nothing
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            const long long row = (long long)min(t, tasks - 1) * ROWS + r;
            row_words[r] = gu_words + row * CHUNKS;
            row_scales[r] = gu_scales + row * (K_COLS / GROUP);
        }
    };
    point_at(task);
    load_step<ROWS, UNROLL, CHUNKS>(w, s, row_words, row_scales, 0, lane);
    wait_for_inputs();
    for (int j = threadIdx.x; j < K_COLS / 8; j += WARPS * 32) xs[swizzle(j)] = __ldcg(h + j);
    __syncthreads();
    normalize_activations(xs, norm_weight, eps);
    for (bool first = true; task < tasks; task += gridDim.x * WARPS, first = false) {
        if (!first) point_at(task);
        if (task + gridDim.x * WARPS >= tasks) prefetch_streamed_rows(down_words, row0, in_shared, rows, warp, lane);
        float acc[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;
#pragma unroll 1
        for (int base = 0; base < CHUNKS; base += STEP) {
            if (base > 0 || !first) load_step<ROWS, UNROLL, CHUNKS>(w, s, row_words, row_scales, base, lane);
            dot_step<ROWS, UNROLL, CHUNKS>(acc, w, s, xs, base, lane);
        }
        sum_over_lanes(acc);
        if (lane == 0) {
            u16* out = (u16*)act;
#pragma unroll
            for (int r = 0; r < ROWS; r += 2) out[task * (ROWS / 2) + r / 2] = silu_times(acc[r], acc[r + 1]);
        }
    }

    // 3. All of silu(gate) * up is written; only now may the next kernel take SM resources (PDL).
    grid_barrier(barrier);
    let_next_kernel_launch();

    // 4. down, h + W a: a into shared memory (from L2, written by other SMs), then the rows.
    for (int j = threadIdx.x; j < INTER / 8; j += WARPS * 32) acts[swizzle(j)] = __ldcg(act + j);
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();
    const u16* h_halves = (const u16*)h;
    // Rows in shared memory two at a time (one read of a's pieces for both), the others one at a time.
    for (int i = 2 * warp; i < in_shared; i += 2 * WARPS) {
        const int j = min(i + 1, in_shared - 1);  // an odd last row is read twice and stored once
        float acc[2] = {0.0f, 0.0f};
        for (int base = 0; base < CHUNKS2; base += 32) {
            const int c = min(base + lane, CHUNKS2 - 1);  // dot_step skips c past the row itself
            const uint4 tile_w[1][2] = {{down_tile[i * CHUNKS2 + c], down_tile[j * CHUNKS2 + c]}};
            const u16 tile_s[1][2] = {{tile_scales[i * GROUPS2 + c / CHUNKS_PER_GROUP],
                                      tile_scales[j * GROUPS2 + c / CHUNKS_PER_GROUP]}};
            dot_step<2, 1, CHUNKS2>(acc, tile_w, tile_s, acts, base, lane);
        }
        sum_over_lanes(acc);
        if (lane == 0) {
            h_out[row0 + i] = float_to_half(acc[0] + half_to_float(h_halves[row0 + i]));
            if (j > i) h_out[row0 + j] = float_to_half(acc[1] + half_to_float(h_halves[row0 + j]));
        }
    }
    for (int i = in_shared + warp; i < rows; i += WARPS) {  // rows that did not fit: from global memory
        const uint4* const row_w[1] = {down_words + (long long)(row0 + i) * CHUNKS2};
        const u16* const row_s[1] = {down_scales + (long long)(row0 + i) * GROUPS2};
        float acc[1] = {0.0f};
        for (int base = 0; base < CHUNKS2; base += 32 * UNROLL) {
            uint4 w2[UNROLL][1];
            u16 s2[UNROLL][1];
            load_step<1, UNROLL, CHUNKS2>(w2, s2, row_w, row_s, base, lane);
            dot_step<1, UNROLL, CHUNKS2>(acc, w2, s2, acts, base, lane);
        }
        sum_over_lanes(acc);
        if (lane == 0) h_out[row0 + i] = float_to_half(acc[0] + half_to_float(h_halves[row0 + i]));
    }
}
"""


@dataclass(frozen=True)
class Plan:
    """How the kernel covers one shape on one device."""
    blocks: int  # one per SM
    warps: int  # per block
    down_rows: int  # down rows per block
    shared_rows: int  # of those, the first ones copied into shared memory
    shared_bytes: int  # dynamic shared memory per block


def _sizes(hidden: int, inter: int, group: int, warps: int = WARPS):
    """(static shared bytes, bytes of one down row's words and scales in shared memory)."""
    return (hidden + inter) * 2 + 4 * warps, inter // 2 + inter // group * 2


def plan(device: torch.device, hidden: int, inter: int, group: int) -> Plan | None:
    """The grid and shared memory for this shape on `device`, or None where the kernel does not serve it."""
    properties = torch.cuda.get_device_properties(device)
    return plan_for(properties.multi_processor_count, properties.shared_memory_per_block_optin, hidden, inter, group)


def plan_for(sms: int, shared_per_block: int, hidden: int, inter: int, group: int) -> Plan | None:
    """The plan on a device with `sms` SMs and that much shared memory a block can have; None for shapes the
    kernel cannot walk, or where less than half of each block's down rows would fit into shared memory."""
    if group % 32 or hidden % group or inter % (2 * group):  # scales copied in 4-byte pieces: an even count a row
        return None
    static, row_bytes = _sizes(hidden, inter, group, WARPS)
    if static > 48 * 1024:
        return None
    down_rows = math.ceil(hidden / sms)
    shared_rows = min(down_rows, (shared_per_block - static - 1024) // row_bytes)
    if shared_rows < down_rows / 2:
        return None
    return Plan(sms, WARPS, down_rows, shared_rows, shared_rows * row_bytes)


def compile_cubin(arch: int, hidden: int, inter: int, group: int, down_rows: int, shared_rows: int,
                  warps: int = WARPS) -> bytes:
    """The kernel as a cubin for sm_{arch}. Needs NVRTC only, no GPU."""
    tiling = int4_cuda.default_tiling(2 * inter, hidden)
    defines = dict(GROUP=group, K_COLS=hidden, ROWS=2, UNROLL=tiling.unroll, WARPS=warps, MIN_BLOCKS=0,
                   L2_PREFETCH=0, LAUNCH_NEXT_EARLY=1, GLU=1, RESIDUAL=0, NORM=1, INTER=inter, DOWN_ROWS=down_rows,
                   SHARED_ROWS=shared_rows)
    return int4_cuda.nvrtc_cubin(int4_cuda.HELPERS + _KERNEL, arch, defines, "the draft MLP kernel")


_functions: dict = {}  # (device index, hidden, inter, group, plan) -> function, its shared memory size set


def _kernel(device: torch.device, hidden: int, inter: int, group: int, p: Plan):
    key = (device.index, hidden, inter, group, p)
    if key not in _functions:
        function = int4_cuda.load_kernel(device, ("mlp", *key[1:]), b"draft_mlp", lambda arch: compile_cubin(
            arch, hidden, inter, group, p.down_rows, p.shared_rows, p.warps))
        attribute = int4_cuda.driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        int4_cuda._check(int4_cuda.driver.cuFuncSetAttribute(function, attribute, p.shared_bytes))
        _functions[key] = function
    return _functions[key]


def serves(device: torch.device, hidden: int, inter: int, group: int) -> bool:
    """Whether the kernel takes this shape on `device`: int4_cuda available, a plan, one block per SM resident."""
    if device.type != "cuda" or not int4_cuda.available(device):
        return False
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    p = plan(device, hidden, inter, group)
    if p is None:
        return False
    function = _kernel(device, hidden, inter, group, p)
    blocks = int4_cuda._check(int4_cuda.driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(
        function, 32 * p.warps, p.shared_bytes))
    return blocks >= 1


_barriers: dict = {}  # device index -> int32 [2], zeroed once: the grid barrier's counter and generation

# gu_words, gu_scales, down_words, down_scales, h, norm_weight, act, h_out, barrier, eps
_ARG_TYPES = (ctypes.c_void_p,) * 9 + (ctypes.c_float,)


def draft_mlp(h: torch.Tensor, norm_weight: torch.Tensor, eps: float, gate_up_words: torch.Tensor,
              gate_up_scales: torch.Tensor, down_words: torch.Tensor, down_scales: torch.Tensor, group: int,
              pdl: bool = False) -> torch.Tensor:
    """h [..., hidden] float16, one token -> h + down(silu(gate) * up)(rms_norm(h) * norm_weight). The INT4
    weights as int4_cuda.int4_gemv takes them (gate/up interleaved); where `serves` said so."""
    hidden, inter = h.shape[-1], down_words.shape[1] * 8
    if h.numel() != hidden or h.dtype != torch.float16:
        raise ValueError(f"draft_mlp takes one float16 token, got {tuple(h.shape)} {h.dtype}")
    device = torch.device("cuda", h.device.index if h.device.index is not None else torch.cuda.current_device())
    p = plan(device, hidden, inter, group)
    function = _kernel(device, hidden, inter, group, p)
    if device.index not in _barriers:
        _barriers[device.index] = torch.zeros(2, dtype=torch.int32, device=device)
    h = h.contiguous()
    act = torch.empty(inter, dtype=torch.float16, device=device)
    out = torch.empty_like(h)
    args = (gate_up_words.data_ptr(), gate_up_scales.data_ptr(), down_words.data_ptr(), down_scales.data_ptr(),
            h.data_ptr(), norm_weight.data_ptr(), act.data_ptr(), out.data_ptr(), _barriers[device.index].data_ptr(),
            float(eps))
    pdl = pdl and torch.cuda.get_device_capability(device) >= (9, 0)
    int4_cuda.launch(function, (p.blocks, 1, 1), (32 * p.warps, 1, 1), torch.cuda.current_stream(device).cuda_stream,
                     pdl, args, _ARG_TYPES, p.shared_bytes)
    return out
