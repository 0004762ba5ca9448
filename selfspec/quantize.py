"""Symmetric quantization of the target's own weights for the draft (draft.py): group-wise INT4 with a
clipping search, per-row INT8, their packings, and the plain INT4/INT8 linear layers that hold them.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import model

# Clipping ratios tried per group: the scale that minimises the group's squared error wins.
# Calibration-free; it recovers much of the accuracy that plain absmax scaling loses to outliers.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def rows_per_slice(weight: torch.Tensor, gpu_rows: int) -> int:
    """Rows of `weight` to convert to float32 at a time. On CPU slices of about 2 MB: larger temporaries go
    back to the system when freed and fault in again for the next slice, which made building a 7B draft on
    two cores 4-8x slower (docs/performance.md). On GPUs `gpu_rows`: fewer, larger slices, fewer launches."""
    return gpu_rows if weight.device.type != "cpu" else max(1, (1 << 19) // weight.shape[1])


def quantize_int4(weight: torch.Tensor, group_size: int, clip_ratios=CLIP_RATIOS, rows_per_chunk: int | None = None):
    """Symmetric group-wise INT4. Returns (q int8 [N, K] in [-8, 7], scales float32 [N, K // group_size]).
    In torch, in slices; accel.int4.quantize_groups is the same search in one kernel."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    rows_per_chunk = rows_per_chunk or rows_per_slice(weight, 1024)
    q_out = torch.empty(n, k, dtype=torch.int8, device=weight.device)
    s_out = torch.empty(n, k // group_size, dtype=torch.float32, device=weight.device)
    for start in range(0, n, rows_per_chunk):  # chunks bound the float32 working memory
        w = weight[start : start + rows_per_chunk].float().view(-1, k // group_size, group_size)
        absmax = w.abs().amax(-1, keepdim=True).clamp(min=1e-8)
        best_err = best_scale = None
        for ratio in clip_ratios:
            scale = absmax * ratio / 7
            err = ((w - (w / scale).round().clamp(-8, 7) * scale) ** 2).sum(-1, keepdim=True)
            if best_err is None:
                best_err, best_scale = err, scale
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_scale = torch.where(better, scale, best_scale)
        q_out[start : start + rows_per_chunk] = (w / best_scale).round().clamp(-8, 7).to(torch.int8).view(-1, k)
        s_out[start : start + rows_per_chunk] = best_scale.squeeze(-1)
    return q_out, s_out


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    n, k = q.shape
    groups = scales.shape[1]
    return (q.view(n, groups, k // groups).to(dtype) * scales[..., None].to(dtype)).view(n, k)


def pack_nibbles(q: torch.Tensor, group_size: int) -> torch.Tensor:
    """int8 [N, K] in [-8, 7] -> uint8 [N, K/2]. Within each group, byte j holds column j in its low
    nibble and column j + group_size/2 in its high one, so a kernel multiplies the low nibbles by the
    first half of the group's activations and the high nibbles by the second half: two contiguous loads."""
    n, k = q.shape
    u = (q.to(torch.int16) + 8).to(torch.uint8).view(n, k // group_size, 2, group_size // 2)
    return (u[:, :, 0] | (u[:, :, 1] << 4)).view(n, k // 2)


def _half2_bit_offsets(device) -> torch.Tensor:
    """[4, 2]: where columns 8w+2j (bits 4j..) and 8w+2j+1 (bits 16+4j..) of word w sit, j = 0..3."""
    return torch.tensor([[4 * j, 16 + 4 * j] for j in range(4)], device=device)


def pack_half2_words(q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] in [-8, 7] -> int32 [N, K/8] for accel.int4.int4_matmul_half2. Word w holds columns
    8w..8w+7 at `_half2_bit_offsets`, so that one masked OR pulls out the half2 pair that meets two
    consecutive activations."""
    n, k = q.shape
    u = (q.to(torch.int64) + 8).view(n, k // 8, 4, 2)
    words = (u << _half2_bit_offsets(q.device)).sum((-1, -2))
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_nibbles(packed: torch.Tensor, group_size: int) -> torch.Tensor:
    n = packed.shape[0]
    p = packed.view(n, -1, group_size // 2)
    return (torch.stack((p & 0xF, p >> 4), dim=2).view(n, -1).to(torch.int8) - 8)


def choose_group_size(in_features: int, group_size: int) -> int:
    """The requested group size, halved until it divides in_features (tiny test models need this); at least 2,
    as two weights share a byte."""
    while in_features % group_size:
        group_size //= 2
    if group_size < 2:
        raise ValueError(f"INT4 groups pack two weights a byte: {in_features} columns do not divide into them")
    return group_size


class Int4Linear(nn.Module):
    """y = x @ (q * scale)^T for symmetric group-wise INT4 weights: `packed` nibbles (pack_nibbles) and
    `scales` in the weight's dtype, multiplied here by dequantizing, which is always correct; accel.use_kernels
    swaps in a kernel for the device (accel/int4.py), which may repack the weights for it.

    `quantize` (quantize_int4's signature) does the rounding: accel.int4.quantizer picks it per device.
    """

    kernel = "dequantize"

    def __init__(self, weight: torch.Tensor, group_size: int, clip_ratios=CLIP_RATIOS, glu: bool = False,
                 quantize=quantize_int4):
        super().__init__()
        rows, self.in_features = weight.shape
        self.glu = glu  # rows interleave gate and up (g0, u0, g1, u1, ...): the output is silu(gate) * up
        self.out_features = rows // 2 if glu else rows
        self.group_size = choose_group_size(self.in_features, group_size)
        q, scales = quantize(weight, self.group_size, clip_ratios)
        self.register_buffer("packed", pack_nibbles(q, self.group_size))
        self.register_buffer("scales", scales.to(weight.dtype))

    def forward(self, x):
        y = F.linear(x, dequantize_int4(unpack_nibbles(self.packed, self.group_size), self.scales, x.dtype))
        return model.silu_mul(y[..., 0::2], y[..., 1::2]) if self.glu else y

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, kernel={self.kernel}"
                + (", glu: rows interleave gate and up" if self.glu else ""))


class Int8Linear(nn.Module):
    """y = x @ (q * scale)^T with symmetric INT8 weights, one scale per output row (absmax / 127). For the
    draft's lm_head: half the bytes of the 16-bit head, and rounding errors far below INT4's. Multiplied here
    by dequantizing; accel.use_kernels swaps in a kernel for the device (accel/int8.py)."""

    kernel = "dequantize"

    def __init__(self, weight: torch.Tensor, rows_per_chunk: int | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        rows_per_chunk = rows_per_chunk or rows_per_slice(weight, 8192)
        q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        scales = torch.empty(self.out_features, device=weight.device)
        for start in range(0, self.out_features, rows_per_chunk):  # chunks bound the float32 working memory
            rows = slice(start, start + rows_per_chunk)
            w = weight[rows].float()
            scales[rows] = w.abs().amax(1).clamp(min=1e-8) / 127
            q[rows] = (w / scales[rows, None]).round().clamp(-127, 127)
        self.register_buffer("q", q)
        self.register_buffer("scales", scales.to(weight.dtype))

    def forward(self, x):
        return F.linear(x, self.q.to(x.dtype)) * self.scales

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def weight_bytes(module: nn.Module, quantized_only: bool = False) -> int:
    """Bytes of the weights a module holds (KV cache and position tables excluded), a head tied to the
    embeddings once; with `quantized_only`, those of its INT4/INT8 layers, which a draft adds to the target's."""
    if quantized_only:
        quantized = (Int4Linear, Int8Linear)
        return sum(b.numel() * b.element_size() for m in module.modules() if isinstance(m, quantized) for b in m.buffers())
    unique = {p.data_ptr(): p for p in module.parameters()}  # tied weights are two Parameters over one tensor
    return sum(p.numel() * p.element_size() for p in unique.values())
