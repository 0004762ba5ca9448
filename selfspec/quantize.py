"""INT4 weight-only draft: symmetric group-wise quantization of the target's own linear layers.

The draft is not a second checkpoint. `make_draft` builds a model object that shares the target's
embeddings, norms, position tables and KV cache, replaces every nn.Linear of the layers by an Int4Linear,
and shares, or quantizes to INT8 or INT4, the lm_head. No second 16-bit copy of any weight is kept.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import model
from .model import MLP, ModelArgs, Transformer

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
    """The requested group size, halved until it divides in_features (tiny test models need this)."""
    while in_features % group_size:
        group_size //= 2
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


class Int4MLP(nn.Module):
    """The draft's MLP: gate and up as one INT4 matrix, rows interleaved, whose matmul also applies
    silu(gate) * up (one kernel instead of three on NVIDIA GPUs), then down. Each row is quantized as the
    separate layers would be."""

    def __init__(self, mlp: MLP, group_size: int, clip_ratios=CLIP_RATIOS, quantize=quantize_int4):
        super().__init__()
        gate, up = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()
        self.gate_up_proj = Int4Linear(torch.stack((gate, up), dim=1).flatten(0, 1), group_size, clip_ratios, glu=True,
                                       quantize=quantize)
        self.down_proj = Int4Linear(mlp.down_proj.weight.detach(), group_size, clip_ratios, quantize=quantize)

    def forward(self, x):
        return self.down_proj(self.gate_up_proj(x))


class FrequentVocabHead(nn.Module):
    """The draft's lm_head over part of the vocabulary (the most frequent tokens: FR-Spec, ACL 2025): the
    head's rows of the tokens `ids` only, logits of every other token -inf. The draft then never proposes
    those tokens, and its head reads a fraction of the bytes; nothing else changes, since the target
    verifies every draft and emits its own token where the draft was wrong (a draft distribution that is 0
    outside `ids` is as valid a proposal for speculative sampling as any)."""

    def __init__(self, head: nn.Module, ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.head, self.vocab_size = head, vocab_size
        self.register_buffer("ids", ids)

    def forward(self, x):
        logits = self.head(x)
        full = torch.full((*logits.shape[:-1], self.vocab_size), float("-inf"), dtype=logits.dtype, device=logits.device)
        return full.index_copy_(-1, self.ids, logits)

    def extra_repr(self):
        return f"{self.ids.numel()} of {self.vocab_size} tokens"


def frequent_vocab(ranked_ids, size: int, vocab_size: int, always=()) -> torch.Tensor:
    """The ids of a FrequentVocabHead: the first `size` of `ranked_ids` (most frequent first) below
    vocab_size, and the ids in `always` (EOS, chat markers), sorted."""
    keep = {int(i) for i in ranked_ids if 0 <= int(i) < vocab_size}
    ranked = [int(i) for i in ranked_ids if int(i) in keep][:size]
    return torch.tensor(sorted(set(ranked) | {int(i) for i in always if 0 <= int(i) < vocab_size}))


LM_HEADS = ("shared", "int8", "int4")  # the draft's lm_head: the target's own 16-bit one, or a quantized copy


def make_draft(target: Transformer, group_size: int = 64, lm_head: str = "int8",
               clip_ratios=CLIP_RATIOS, head_vocab: torch.Tensor | None = None, on_weight=None) -> Transformer:
    """A draft model over the target's own weights: every nn.Linear of the layers becomes an Int4Linear (gate
    and up one fused Int4MLP matrix); lm_head is an Int8Linear (default), an Int4Linear or the target's own
    (`"shared"`); everything else (embeddings, norms, KV cache, RoPE/ALiBi tables) is the same tensor object
    as the target's.

    Why INT8 (docs/performance.md, SmolLM2's real weights): an INT4 head made the draft step 7% cheaper
    than the shared 16-bit head but cost eight points of acceptance; an INT8 head is as cheap as the INT4
    one on an H100 and accepts as often as the 16-bit one.

    `head_vocab` (token ids): the head covers these tokens only (FrequentVocabHead). `on_weight(weight)`, if
    given, is called with each nn.Linear weight of the target once it is done (for a progress bar: at 7B on
    CPU this takes minutes).

    Call after `target.setup_caches()`: the draft shares the cache that exists at that moment.
    """
    if lm_head not in LM_HEADS:
        raise ValueError(f"lm_head must be one of {LM_HEADS}, got {lm_head!r}")
    from .accel.int4 import quantizer

    quantize = quantizer(target.lm_head.weight.device)

    def convert_head(weight: torch.Tensor) -> nn.Module:
        if lm_head == "int8":
            return Int8Linear(weight)
        if lm_head == "int4":
            return Int4Linear(weight, group_size, clip_ratios, quantize=quantize)
        with torch.device("meta"):
            shared = model.Linear(weight.shape[1], weight.shape[0])
        shared.weight = nn.Parameter(weight, requires_grad=False)
        return shared

    def convert_and_report(module: nn.Module, name: str) -> nn.Module:
        converted = convert(module, name)
        if on_weight is not None and isinstance(module, (MLP, nn.Linear)):
            for linear in module.modules():
                if isinstance(linear, nn.Linear):
                    on_weight(linear.weight)
        return converted

    def convert(module: nn.Module, name: str) -> nn.Module:
        if isinstance(module, MLP):
            return Int4MLP(module, group_size, clip_ratios, quantize)
        if isinstance(module, nn.Linear):
            if name == "lm_head" and head_vocab is not None:
                ids = head_vocab.to(module.weight.device)
                return FrequentVocabHead(convert_head(module.weight.detach()[ids]), ids, module.out_features)
            if name == "lm_head" and lm_head == "shared":
                return module
            if name == "lm_head":
                return convert_head(module.weight.detach())
            return Int4Linear(module.weight.detach(), group_size, clip_ratios, quantize=quantize)
        if not module._modules:  # leaf (norm, embedding, KV cache): shared, not copied
            return module
        clone = copy.copy(module)  # shallow: parameters and buffers are the target's tensors
        clone._parameters = dict(module._parameters)
        clone._buffers = dict(module._buffers)
        clone._modules = {child: convert_and_report(sub, child) for child, sub in module._modules.items()}
        return clone

    return convert(target, "")


def draft_bytes(args: ModelArgs, dtype: torch.dtype, group_size: int = 64, lm_head: str = "int8",
                head_vocab_size: int | None = None) -> int:
    """What `make_draft` will add to a target of this shape, before any weight is read: 4 bits per layer
    weight and a scale per group, and the head. As `weight_bytes(draft, quantized_only=True)` counts it,
    except for CPU's int4 kernel in 16-bit dtypes, which keeps a zero beside each (bfloat16) scale."""
    def int4(rows: int, cols: int) -> int:
        return rows * cols // 2 + rows * (cols // choose_group_size(cols, group_size)) * dtype.itemsize

    h, i = args.hidden_size, args.intermediate_size
    v = head_vocab_size or args.vocab_size
    qkv_rows = (args.num_heads + 2 * args.num_kv_heads) * args.head_dim
    layer = int4(qkv_rows, h) + int4(h, args.num_heads * args.head_dim) + int4(2 * i, h) + int4(h, i)
    shared = v * h * dtype.itemsize if head_vocab_size else 0  # a subset of the shared head is a copy
    head = {"shared": shared, "int8": v * h + v * dtype.itemsize, "int4": int4(v, h)}[lm_head]
    return args.num_layers * layer + head


def weight_bytes(module: nn.Module, quantized_only: bool = False) -> int:
    """Bytes of the weights a module holds (KV cache and position tables excluded), a head tied to the
    embeddings once; with `quantized_only`, those of its INT4/INT8 layers, which a draft adds to the target's."""
    if quantized_only:
        quantized = (Int4Linear, Int8Linear)
        return sum(b.numel() * b.element_size() for m in module.modules() if isinstance(m, quantized) for b in m.buffers())
    unique = {p.data_ptr(): p for p in module.parameters()}  # tied weights are two Parameters over one tensor
    return sum(p.numel() * p.element_size() for p in unique.values())
