"""CUDA C++ INT4 GEMV for the draft, compiled at run time with NVRTC: y = x @ (q * scale)^T (+ residual),
x optionally the RMS norm of the residual stream, computed in the kernel (the norm prologue).

Same packed format and arithmetic as int4_triton.int4_matmul_half2 (int32 words [N, K/8] from
quantize.pack_half2_words, fp16 scales [N, K/GROUP], the `_HALF2_DOT` dequantisation), written for the one
thing a batch-1 GEMV needs: many bytes of weights in flight on every SM. Each warp owns ROWS rows and walks
along K; each thread issues ROWS * UNROLL independent 16-byte weight loads before it uses any of them. The
first batch of loads is issued before the kernel waits for the kernel before it (programmatic dependent
launch, PDL): the weights do not depend on it, only x does, which each block then copies once into shared
memory. Once x is ready the kernel lets the next one launch, whose blocks then load their weights while this
one computes.

A matrix of many rows (W_pack, gate/up) runs in a grid of as many blocks as the SMs hold at once (the
kernel's occupancy), each looping over tiles of rows: x is copied (and normalised) once per block instead of
once per tile, and no second wave of blocks waits for the first to leave. A matrix whose tiles of one row a warp
fit in one such wave, and whose rows take more than one step of a warp's loop, gets one row a warp (twice the
blocks of two, its rows spread more evenly over the SMs); others two.

With the norm prologue the kernel is given the residual stream h instead of x, and the norm's weight (which
no kernel before writes: each block copies it into shared memory before the wait): each block normalises its
copy of h in shared memory (h is a few kilobytes, read from L2 by every block) with
pointwise.rms_norm's arithmetic and rounding, so that norm-then-GEMV takes one kernel instead of two. Only
the order of the float32 sum of squares differs from pointwise.rms_norm's, which can move an element of x by
one fp16 rounding step, rarely.

The source is compiled to a cubin for the device's own architecture (no PTX for the driver to JIT: a driver
refuses PTX from a newer NVRTC than itself), once per (device, GROUP, K, GLU, residual, norm, tiling) in a process,
and launched with cuLaunchKernelEx on torch's current stream, so CUDA-graph capture records it. Compile
outside capture (the usual warm-up call does).

Needs the `cuda-python` bindings (`cuda.bindings`, or the older `cuda.cuda`/`cuda.nvrtc` names; in
requirements.txt, importable without a GPU) and the NVRTC library of the same CUDA major version; torch's CUDA
wheels bring NVRTC (nvidia-cuda-nvrtc), where the bindings find it. `available()` says whether all of that is
there, and `unavailable_reason` why not.
"""
import ctypes
import functools
import math
from dataclasses import dataclass, replace

import torch

from .int4 import _HALF2_DOT

try:
    from cuda.bindings import driver, nvrtc
except ImportError:
    try:  # cuda-python before 12.6
        from cuda import cuda as driver, nvrtc
    except ImportError:
        driver = nvrtc = None

unavailable_reason = "" if nvrtc is not None else "cuda-python (cuda.bindings) is not installed"


def nvrtc_version() -> tuple[int, int] | None:
    """(major, minor) of the NVRTC library that the bindings load: one of their own CUDA major version (12.x
    bindings for a +cu12x torch, 13.x for +cu13x). None if there is none, the reason in `unavailable_reason`."""
    global unavailable_reason
    if nvrtc is None:
        return None
    try:
        return tuple(_check(nvrtc.nvrtcVersion()))
    except Exception as error:  # noqa: BLE001 - a missing or mismatched library, whatever the bindings raise
        unavailable_reason = f"NVRTC cannot be loaded: {error}"
        return None


def _asm_string(ptx: str) -> str:
    """A Triton inline-PTX block ($0, $1 ...) as the text of a CUDA asm statement (%0, %1 ...)."""
    lines = ptx.strip().replace("$", "%").splitlines()
    return "\n".join(f'        "{line}\\n"' for line in lines)


_SOURCE = r"""
// Compile-time: GROUP, K_COLS, ROWS (rows per warp), UNROLL (16-byte loads per thread per row per step),
// WARPS (per block), L2_PREFETCH (a load hint), LAUNCH_NEXT_EARLY (where PDL lets the next kernel launch),
// GLU (rows interleave gate and up), RESIDUAL (add [M, N] fp16), NORM (x is the residual stream h: the kernel
// multiplies by rms_norm(h) * norm_weight), TIMELINE (stamps of each block's phases, for a benchmark).
typedef unsigned int u32;
typedef unsigned short u16;

#define CHUNKS (K_COLS / 32)            // 16-byte chunks (4 words, 32 columns) per row
#define STEP (32 * UNROLL)              // chunks a warp covers per step
#define CHUNKS_PER_GROUP (GROUP / 32)

// One word of eight nibbles times eight activations (four half2 pairs): the float32 dot product / 16.
__device__ __forceinline__ float word_dot(u32 w, u32 x0, u32 x1, u32 x2, u32 x3) {
    float out;
    asm(
__HALF2_DOT__
        : "=f"(out) : "r"(w), "r"(x0), "r"(x1), "r"(x2), "r"(x3));
    return out;
}

#if L2_PREFETCH  // DRAM read in 256-byte pieces: each warp's load covers 512 contiguous bytes anyway
#define LOAD_WEIGHTS "ld.global.nc.L1::no_allocate.L2::256B.v4.u32"
#else
#define LOAD_WEIGHTS "ld.global.nc.L1::no_allocate.v4.u32"
#endif

// Weights are read once: bypass L1 (no_allocate) and the coherent path (nc). volatile keeps these loads
// ahead of the grid-dependency wait, where they were written.
__device__ __forceinline__ uint4 load_weights(const uint4* p) {
    uint4 v;
    asm volatile(LOAD_WEIGHTS " {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

__device__ __forceinline__ u16 load_scale(const u16* p) {
    u16 v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}

// x is copied once per block into shared memory, at position swizzle(j) for its 16-byte piece j. A lane reads
// pieces 4c..4c+3 for its chunk c, so the 8 lanes of a 128-bit access phase would hit only two of the eight
// 16-byte bank groups (4-way conflicts); XOR-ing bits 3-4 of j into bits 0-1 spreads them over all eight.
__device__ __forceinline__ int swizzle(int j) { return j ^ ((j >> 3) & 3); }

// x was written by the kernel before this one, maybe while this one already ran (PDL): copy it at L2 (.cg),
// asynchronously, so that all pieces are in flight together.
__device__ __forceinline__ void copy_activations(uint4* shared, const uint4* x) {
#pragma unroll
    for (int j = threadIdx.x; j < K_COLS / 8; j += WARPS * 32) {
        const u32 to = (u32)__cvta_generic_to_shared(shared + swizzle(j));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(to), "l"(x + j) : "memory");
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    __syncthreads();
}

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 float_to_half(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#if NORM
// The norm's weight depends on nothing the kernel before writes: each thread starts copying the pieces it will read
// (normalize_activations) into shared memory before the grid-dependency wait; copy_activations' wait covers
// these copies too.
__device__ __forceinline__ void copy_norm_weight(uint4* shared, const uint4* weight) {
#pragma unroll
    for (int j = threadIdx.x; j < K_COLS / 8; j += WARPS * 32) {
        const u32 to = (u32)__cvta_generic_to_shared(shared + j);
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(to), "l"(weight + j) : "memory");
    }
}

// float32 division as Triton's `/` compiles it (pointwise.rms_norm divides the sum of squares by K).
__device__ __forceinline__ float divide_as_triton(float a, float b) {
    float out;
    asm("div.full.f32 %0, %1, %2;" : "=f"(out) : "f"(a), "f"(b));
    return out;
}

__device__ __forceinline__ float low_half(u32 pair) { return half_to_float((u16)(pair & 0xFFFFu)); }
__device__ __forceinline__ float high_half(u32 pair) { return half_to_float((u16)(pair >> 16)); }

// round(weight * round(h * rstd)), pointwise.rms_norm's two roundings, for one half2 pair of h and of the weight:
// h * rstd in float32, both halves rounded by one cvt; the product of two halves is exact in float32, so one
// f16x2 multiply rounds it as rms_norm does.
__device__ __forceinline__ u32 norm_pair(u32 h, u32 weight, float rstd) {
    u32 normed, out;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(normed) : "f"(high_half(h) * rstd), "f"(low_half(h) * rstd));
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(out) : "r"(normed), "r"(weight));
    return out;
}

// The block's copy of h in shared memory (copy_activations) becomes x = rms_norm(h) * weight, in place: the
// sum of squares in float32 over the block (each thread its own pieces, then warps, then the block), then
// each thread scales the pieces it copied, with the norm weight copy_norm_weight put in shared memory.
__device__ __forceinline__ void normalize_activations(uint4* shared, const uint4* weight, float eps) {
    __shared__ float warp_sums[WARPS];
    float sum = 0.0f;
    for (int j = threadIdx.x; j < K_COLS / 8; j += WARPS * 32) {
        const uint4 h = shared[swizzle(j)];
        const u32 pairs[4] = {h.x, h.y, h.z, h.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float lo = low_half(pairs[i]), hi = high_half(pairs[i]);
            sum += lo * lo;
            sum += hi * hi;
        }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    float total = 0.0f;  // every thread adds the warps' sums in the same order: one rstd for the block
#pragma unroll
    for (int w = 0; w < WARPS; ++w) total += warp_sums[w];
    const float rstd = rsqrtf(divide_as_triton(total, (float)K_COLS) + eps);
    for (int j = threadIdx.x; j < K_COLS / 8; j += WARPS * 32) {
        const uint4 h = shared[swizzle(j)], w = weight[j];
        shared[swizzle(j)] = make_uint4(norm_pair(h.x, w.x, rstd), norm_pair(h.y, w.y, rstd),
                                        norm_pair(h.z, w.z, rstd), norm_pair(h.w, w.w, rstd));
    }
    __syncthreads();
}
#endif

// PDL: no-ops when the kernel was not launched with programmatic stream serialization.
__device__ __forceinline__ void wait_for_inputs() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_next_kernel_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

#if TIMELINE
// bench/gemv_timeline.py: per block, the global timer (ns) at its start, once the grid-dependency wait returns,
// once x is ready (copied, normalised) and when its last warp is done; its SM and how many tiles it takes.
#define TIMELINE_BLOCKS 32768
__device__ unsigned long long timeline[TIMELINE_BLOCKS][4];
__device__ unsigned int timeline_where[TIMELINE_BLOCKS][2];
__device__ unsigned int timeline_count;

__device__ __forceinline__ unsigned long long global_time() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define STAMP(slot, i) timeline[slot][i] = global_time()
#else
#define STAMP(slot, i)
#endif

// After the grid-dependency wait (PDL), the block's copy of x in shared memory, normalised with the norm prologue.
__device__ __forceinline__ void prepare_activations(uint4* xs, const uint4* x, const uint4* norm_weight, float eps,
                                                    unsigned int slot) {
    wait_for_inputs();
    if (threadIdx.x == 0) STAMP(slot, 1);
#if LAUNCH_NEXT_EARLY
    // The kernel before this one has finished: the next one may launch now and stream its weights
    // while this one works (one kernel ahead at most, since it waits here in turn).
    let_next_kernel_launch();
#endif
    copy_activations(xs, x + (long long)blockIdx.y * (K_COLS / 8));
#if NORM
    normalize_activations(xs, norm_weight, eps);
#endif
    if (threadIdx.x == 0) STAMP(slot, 2);
}

// The warp's sums of its ROWS rows (each lane's share of every row) to y: lane 0 stores them.
__device__ __forceinline__ void store_tile(float* acc, u16* y, const u16* residual, int n, int row0) {
    const int m = blockIdx.y;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], offset);
        acc[r] *= 16.0f;  // word_dot's 1/16
    }
    if (threadIdx.x % 32 != 0) return;
#if GLU
    const int n_out = n / 2;
#pragma unroll
    for (int r = 0; r < ROWS; r += 2) {
        const int row = (row0 + r) / 2;
        if (row < n_out) {
            const float gate = acc[r], up = acc[r + 1];
            y[(long long)m * n_out + row] = float_to_half(gate / (1.0f + __expf(-gate)) * up);
        }
    }
#else
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const int row = row0 + r;
        if (row < n) {
            float out = acc[r];
#if RESIDUAL
            out += half_to_float(residual[(long long)m * n + row]);
#endif
            y[(long long)m * n + row] = float_to_half(out);
        }
    }
#endif
}

// One tile of WARPS * ROWS rows: each warp its ROWS rows. `first`: the block's first tile, which waits for the
// kernel before (PDL), copies x into shared memory and normalises it; later tiles reuse that copy.
__device__ __forceinline__ void gemv_tile(uint4* xs, const uint4* __restrict__ words, const u16* __restrict__ scales,
                                          const uint4* x, u16* y, const u16* residual, const uint4* norm_weight,
                                          int n, float eps, int tile, bool first, unsigned int slot) {
    const int lane = threadIdx.x % 32;
    const int row0 = (tile * WARPS + threadIdx.x / 32) * ROWS;

    // Rows past n (last tile) load row n - 1 again and store nothing: loads stay unconditional, and every
    // warp takes part in the block's copy of x.
    const uint4* row_words[ROWS];
    const u16* row_scales[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        const long long row = min(row0 + r, n - 1);
        row_words[r] = words + row * CHUNKS;
        row_scales[r] = scales + row * (K_COLS / GROUP);
    }

    float acc[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) acc[r] = 0.0f;

#pragma unroll 1
    for (int base = 0; base < CHUNKS; base += STEP) {
        // All of this step's weight and scale loads first: ROWS * UNROLL * 16 bytes in flight per thread.
        uint4 w[UNROLL][ROWS];
        u16 s[UNROLL][ROWS];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = base + u * 32 + lane;
            if (CHUNKS % STEP == 0 || c < CHUNKS) {
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    w[u][r] = load_weights(row_words[r] + c);
                    s[u][r] = load_scale(row_scales[r] + c / CHUNKS_PER_GROUP);
                }
            }
        }
        if (base == 0 && first) prepare_activations(xs, x, norm_weight, eps, slot);
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = base + u * 32 + lane;
            if (CHUNKS % STEP == 0 || c < CHUNKS) {
                // 32 activations: four words' worth, each word's eight as four half2 pairs.
                const uint4 x0 = xs[swizzle(4 * c)], x1 = xs[swizzle(4 * c + 1)], x2 = xs[swizzle(4 * c + 2)],
                            x3 = xs[swizzle(4 * c + 3)];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    const float dot = word_dot(w[u][r].x, x0.x, x0.y, x0.z, x0.w)
                                    + word_dot(w[u][r].y, x1.x, x1.y, x1.z, x1.w)
                                    + word_dot(w[u][r].z, x2.x, x2.y, x2.z, x2.w)
                                    + word_dot(w[u][r].w, x3.x, x3.y, x3.z, x3.w);
                    acc[r] += dot * half_to_float(s[u][r]);
                }
            }
        }
    }
#if !LAUNCH_NEXT_EARLY
    if (first) let_next_kernel_launch();
#endif

    store_tile(acc, y, residual, n, row0);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
int4_gemv(const uint4* __restrict__ words, const u16* __restrict__ scales, const uint4* x, u16* y,
          const u16* residual, const uint4* norm_weight, int n, float eps) {
    __shared__ uint4 xs[K_COLS / 8];
#if NORM
    __shared__ uint4 norm_weight_shared[K_COLS / 8];
    copy_norm_weight(norm_weight_shared, norm_weight);
    norm_weight = norm_weight_shared;
#endif
    unsigned int slot = 0;
#if TIMELINE
    __shared__ unsigned int block_slot;
    if (threadIdx.x == 0) {
        const unsigned long long start = global_time();
        block_slot = min(atomicAdd(&timeline_count, 1u), TIMELINE_BLOCKS - 1u);
        timeline[block_slot][0] = start;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(timeline_where[block_slot][0]));
        const int n_tiles = TILE_LOOP ? (n + WARPS * ROWS - 1) / (WARPS * ROWS) : blockIdx.x + 1;
        timeline_where[block_slot][1] = (n_tiles - blockIdx.x + gridDim.x - 1) / gridDim.x;  // tiles it takes
        timeline[block_slot][3] = 0;
    }
    __syncthreads();
    slot = block_slot;
#endif
#if TILE_LOOP
    // A grid of fewer blocks than tiles: each block takes every gridDim.x-th tile.
    const int n_tiles = (n + WARPS * ROWS - 1) / (WARPS * ROWS);
    for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x)
        gemv_tile(xs, words, scales, x, y, residual, norm_weight, n, eps, tile, tile == blockIdx.x, slot);
#else
    gemv_tile(xs, words, scales, x, y, residual, norm_weight, n, eps, blockIdx.x, true, slot);
#endif
#if TIMELINE
    if (threadIdx.x % 32 == 0) atomicMax(&timeline[slot][3], global_time());
#endif
}
""".replace("__HALF2_DOT__", _asm_string(_HALF2_DOT))


MAX_BLOCKS_PER_SM = 32  # what an SM of compute capability 8.0 to 9.0 holds at most; the kernel's occupancy is lower


@dataclass(frozen=True)
class Tiling:
    rows: int = 2  # rows per warp (even with GLU); 0: one or two, chosen by _grid
    unroll: int = 4  # 16-byte loads per thread per row before any is used
    warps: int = 4  # per block
    l2_prefetch: bool = False  # the .L2::256B hint on weight loads
    launch_next_early: bool = True  # PDL: let the next kernel launch once x is ready (False: after the loop)
    # 0: a block per tile of WARPS * ROWS rows. Else a grid of this many blocks an SM, or as many as fit at once if
    # fewer, each looping over tiles; only where the tiles fill two such grids, since a grid with fewer leaves most
    # blocks one tile and the rest two.
    blocks_per_sm: int = 0
    timeline: bool = False  # record each block's phases in the module's `timeline` (bench/gemv_timeline.py)


def default_tiling(n: int, k: int) -> Tiling:
    """Enough loads per thread to cover short rows in one step, without more registers than that needs; as many
    blocks as fit at once, looping over tiles: each copies (and normalises) x once for several tiles; one or two
    rows a warp as _grid finds best."""
    return Tiling(rows=0, unroll=max(1, min(4, math.ceil(k / 1024))), warps=4, blocks_per_sm=MAX_BLOCKS_PER_SM)


def _check(result):
    """cuda-python calls return (status, values...): raise on a bad status, else the values."""
    status, *values = result
    if int(status) != 0:
        raise RuntimeError(f"CUDA call failed: {status!r}")
    return values[0] if len(values) == 1 else values


def supports(k: int, group: int, dtype: torch.dtype) -> bool:
    """Whether the kernel takes this shape: float16, groups of a multiple of 32 that divide K."""
    return dtype == torch.float16 and group % 32 == 0 and k % group == 0


def compile_cubin(arch: int, group: int, k: int, glu: bool, residual: bool, tiling: Tiling, norm: bool = False) -> bytes:
    """The kernel as a cubin for sm_{arch} (e.g. 90), with the norm prologue if `norm`. Needs NVRTC only, no GPU."""
    if k % group or group % 32:
        raise ValueError(f"K {k} must be a multiple of the group size {group}, itself a multiple of 32")
    if tiling.rows < 1 or glu and tiling.rows % 2:
        raise ValueError(f"{tiling.rows} rows a warp: at least one, and an even number with GLU")
    defines = dict(GROUP=group, K_COLS=k, ROWS=tiling.rows, UNROLL=tiling.unroll, WARPS=tiling.warps,
                   L2_PREFETCH=int(tiling.l2_prefetch), LAUNCH_NEXT_EARLY=int(tiling.launch_next_early),
                   GLU=int(glu), RESIDUAL=int(residual), NORM=int(norm), TILE_LOOP=int(tiling.blocks_per_sm > 0),
                   TIMELINE=int(tiling.timeline))
    options = [f"--gpu-architecture=sm_{arch}", "-std=c++17"] + [f"-D{key}={value}" for key, value in defines.items()]
    program = _check(nvrtc.nvrtcCreateProgram(_SOURCE.encode(), b"int4_cuda.cu", 0, [], []))
    try:
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        if int(status) != 0:
            log = b" " * _check(nvrtc.nvrtcGetProgramLogSize(program))
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC failed to compile the INT4 kernel: {log.decode(errors='replace')}")
        cubin = b" " * _check(nvrtc.nvrtcGetCUBINSize(program))
        _check(nvrtc.nvrtcGetCUBIN(program, cubin))
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(program)


_kernels: dict = {}  # (device index, compile key) -> (module, function, blocks an SM holds); modules stay loaded


def _ensure_context(device: torch.device) -> None:
    """Make torch's (primary) context current on this thread for the driver calls."""
    torch.cuda.init()
    _check(driver.cuInit(0))
    with torch.cuda.device(device):
        torch.cuda.current_stream(device)  # the runtime makes the primary context current here
        if int(_check(driver.cuCtxGetCurrent())) == 0:
            context = _check(driver.cuDevicePrimaryCtxRetain(_check(driver.cuDeviceGet(device.index))))
            _check(driver.cuCtxSetCurrent(context))


def _kernel(device: torch.device, group: int, k: int, glu: bool, residual: bool, norm: bool, tiling: Tiling):
    key = (device.index, group, k, glu, residual, norm, tiling)
    if key not in _kernels:
        _ensure_context(device)
        major, minor = torch.cuda.get_device_capability(device)
        cubin = compile_cubin(major * 10 + minor, group, k, glu, residual, tiling, norm)
        module = _check(driver.cuModuleLoadData(cubin))
        function = _check(driver.cuModuleGetFunction(module, b"int4_gemv"))
        resident = _check(driver.cuOccupancyMaxActiveBlocksPerMultiprocessor(function, 32 * tiling.warps, 0))
        _kernels[key] = (module, function, resident)
    return _kernels[key][1:]


def _rows_per_warp(device: torch.device, group: int, k: int, glu: bool, residual: bool, norm: bool, tiling: Tiling,
                   n: int) -> int:
    """For Tiling(rows=0): one row a warp where a row takes more than one step of a warp's loop and the tiles of
    one row a warp fit in one wave of resident blocks (twice the blocks of two rows a warp, the rows spread more
    evenly over the SMs: the 7B shape's down), else two (a second, partial wave costs more: the 13B shape's down;
    rows of one step gain nothing: the 7B shape's o_proj)."""
    columns_per_step = 32 * tiling.unroll * 32  # a warp's 32 lanes, UNROLL chunks of 32 columns each
    if glu or k <= columns_per_step:
        return 2
    _, resident = _kernel(device, group, k, glu, residual, norm, replace(tiling, rows=1, blocks_per_sm=0))
    one_wave = torch.cuda.get_device_properties(device).multi_processor_count * resident
    return 1 if math.ceil(n / tiling.warps) <= one_wave else 2


@functools.cache  # once per shape: every eager call of a decode step asks again
def _grid(device: torch.device, group: int, k: int, glu: bool, residual: bool, norm: bool, tiling: Tiling, n: int):
    """The kernel for n rows and its grid's width: blocks looping over tiles where `tiling` asks for it and the
    tiles fill two grids of them, else a block per tile (built without the loop)."""
    if tiling.rows == 0:
        tiling = replace(tiling, rows=_rows_per_warp(device, group, k, glu, residual, norm, tiling, n))
    tiles = math.ceil(n / (tiling.rows * tiling.warps))
    if tiling.blocks_per_sm:
        function, resident = _kernel(device, group, k, glu, residual, norm, tiling)
        blocks = torch.cuda.get_device_properties(device).multi_processor_count * min(tiling.blocks_per_sm, resident)
        if tiles >= 2 * blocks:
            return function, blocks
    return _kernel(device, group, k, glu, residual, norm, replace(tiling, blocks_per_sm=0))[0], tiles


def available(device: torch.device) -> bool:
    """cuda-python and NVRTC are there, `device` is CUDA with compute capability 8.0 or more, and a small kernel
    compiles and loads on it. Otherwise False, with the reason in `unavailable_reason`."""
    global unavailable_reason
    if nvrtc_version() is None:
        return False
    if device.type != "cuda" or not torch.cuda.is_available():
        unavailable_reason = f"{device} is not a CUDA device"
        return False
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    if torch.cuda.get_device_capability(device) < (8, 0):
        unavailable_reason = f"{torch.cuda.get_device_name(device)} is older than compute capability 8.0"
        return False
    try:
        _kernel(device, 32, 32, False, False, False, Tiling(rows=2, unroll=1, warps=1))
    except Exception as error:  # noqa: BLE001 - any failure of NVRTC or the driver means "use Triton"
        unavailable_reason = f"the CUDA INT4 kernel cannot be built: {error}"
        return False
    unavailable_reason = ""
    return True


# words, scales, x, y, residual, norm_weight, n, eps
_ARG_TYPES = (ctypes.c_void_p,) * 6 + (ctypes.c_int, ctypes.c_float)


def _launch(function, grid, block, stream, pdl: bool, args) -> None:
    config = driver.CUlaunchConfig()
    config.gridDimX, config.gridDimY, config.gridDimZ = grid
    config.blockDimX, config.blockDimY, config.blockDimZ = block
    config.sharedMemBytes = 0
    config.hStream = driver.CUstream(stream)
    if pdl:
        attribute = driver.CUlaunchAttribute()
        attribute.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attribute.value.programmaticStreamSerializationAllowed = 1
        config.attrs = [attribute]
        config.numAttrs = 1
    else:
        config.numAttrs = 0
    _check(driver.cuLaunchKernelEx(config, function, (args, _ARG_TYPES), 0))


def int4_gemv(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, group: int, glu: bool = False,
              out: torch.Tensor | None = None, pdl: bool = False, residual: torch.Tensor | None = None,
              tiling: Tiling | None = None, norm_weight: torch.Tensor | None = None,
              norm_eps: float = 1e-6) -> torch.Tensor:
    """x [..., K] float16 times the INT4 weight (int32 words [N, K/8], quantize.pack_half2_words; float16 scales
    [N, K/group]) -> [..., N], or silu(gate) * up [..., N/2] with `glu` (rows interleave gate and up).
    `residual` [..., N] is added to the product (not with `glu`). `out` receives the result if given.
    `norm_weight` [K] float16: x is the residual stream, and the product is taken of its RMS norm times this
    weight (pointwise.rms_norm(x, norm_weight, norm_eps)), computed in the kernel.
    `pdl`: launch with programmatic dependent launch (compute capability 9.0 and later)."""
    if x.dtype != torch.float16 or scales.dtype != torch.float16 or words.dtype != torch.int32:
        raise TypeError(f"int4_gemv takes float16 x and scales and int32 words, got {x.dtype}, {scales.dtype}, "
                        f"{words.dtype}")
    n, k = words.shape[0], words.shape[1] * 8
    if x.shape[-1] != k or scales.shape != (n, k // group):
        raise ValueError(f"int4_gemv: x {tuple(x.shape)}, words {tuple(words.shape)} and scales "
                         f"{tuple(scales.shape)} do not fit group size {group}")
    if glu and (n % 2 or residual is not None):
        raise ValueError("int4_gemv: GLU needs an even number of rows and no residual")
    if norm_weight is not None:
        if norm_weight.shape != (k,) or norm_weight.dtype != torch.float16:
            raise ValueError(f"int4_gemv: norm_weight must be float16 of shape ({k},)")
        if not norm_weight.is_contiguous() or norm_weight.data_ptr() % 16:
            norm_weight = norm_weight.clone(memory_format=torch.contiguous_format)
    n_out = n // 2 if glu else n
    flat = x.reshape(-1, k)
    if not flat.is_contiguous() or flat.data_ptr() % 16:
        flat = flat.clone(memory_format=torch.contiguous_format)
    m = flat.shape[0]
    if out is None:
        out = torch.empty(*x.shape[:-1], n_out, dtype=torch.float16, device=x.device)
    if out.shape != (*x.shape[:-1], n_out) or out.dtype != torch.float16 or not out.is_contiguous():
        raise ValueError(f"int4_gemv: out must be a contiguous float16 tensor of shape {(*x.shape[:-1], n_out)}")
    if residual is not None:
        if residual.shape != out.shape or residual.dtype != torch.float16:
            raise ValueError(f"int4_gemv: residual must be float16 of shape {tuple(out.shape)}")
        residual = residual.reshape(m, n).contiguous()
    words, scales = words.contiguous(), scales.contiguous()
    if words.data_ptr() % 16:
        raise ValueError("int4_gemv: the weight words must be 16-byte aligned")
    tiling = tiling or default_tiling(n, k)
    device = torch.device("cuda", x.device.index if x.device.index is not None else torch.cuda.current_device())
    function, blocks = _grid(device, group, k, glu, residual is not None, norm_weight is not None, tiling, n)
    pdl = pdl and torch.cuda.get_device_capability(device) >= (9, 0)
    grid = (blocks, m, 1)
    stream = torch.cuda.current_stream(device).cuda_stream
    args = (words.data_ptr(), scales.data_ptr(), flat.data_ptr(), out.data_ptr(),
            0 if residual is None else residual.data_ptr(), 0 if norm_weight is None else norm_weight.data_ptr(), n,
            float(norm_eps))
    _launch(function, grid, (32 * tiling.warps, 1, 1), stream, pdl, args)
    return out
