"""The decoder-only transformer of Baichuan2 (7B: RoPE, 13B: ALiBi) and Llama, with a static KV cache.

Each layer adds attention(norm(x)) to x, then mlp(norm(x)). Module and parameter names follow the hub
checkpoints (`model.layers.N.self_attn.W_pack.weight`, ...) so weights load without renaming. The KV cache is a preallocated buffer written by position: rolling
back rejected draft tokens is only a matter of which positions later queries may attend to.

This is the plain eager model, which runs anywhere; accel.use_kernels swaps a device's fast paths in.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_seq_len: int
    rms_norm_eps: float = 1e-6
    position_encoding: str = "rope"  # "rope" (Baichuan2-7B) or "alibi" (Baichuan2-13B)
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class AttentionWindow:
    """Keys a query attends to beyond causality: the first `sinks` positions and the last `recent` up to its
    own (StreamingLLM's attention sinks and window). A draft may attend this way (draft.make_draft)."""

    sinks: int
    recent: int

    def __post_init__(self):
        if self.sinks < 1 or self.recent < 1:
            raise ValueError(f"an attention window needs a sink and a recent position, got {self}")


def rms_norm(x, weight, eps: float):
    x32 = x.float()
    return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def apply_rope(q, k, cos, sin):
    """NeoX-style rotation (rotate_half) of q and k in float32; both [1, heads, T, head_dim]."""

    def rotate(x):
        x32 = x.float()
        half = x32.shape[-1] // 2
        rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
        return (x32 * cos + rotated * sin).to(x.dtype)

    return rotate(q), rotate(k)


def silu_mul(gate, up):
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Linear(nn.Linear):
    """nn.Linear without bias (accel/gemv.py swaps a GEMV in for decode-sized products)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = Linear(args.hidden_size, args.intermediate_size)
        self.up_proj = Linear(args.hidden_size, args.intermediate_size)
        self.down_proj = Linear(args.intermediate_size, args.hidden_size)

    def forward(self, x):
        return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))


class KVCache(nn.Module):
    """One layer's keys and values [1, kv_heads, max_seq_len, head_dim] (views of the model's one cache
    tensor: Transformer.setup_caches), by slot. A token's slot is its position, except for the leaves of a
    verify pass (Transformer.forward's `slots`)."""

    def __init__(self, k, v):
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)

    def update(self, slots, k, v, end: int):
        """Write k/v [1, kv_heads, T, head_dim] at `slots`; return the cache up to `end`."""
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        qkv_rows = (args.num_heads + 2 * args.num_kv_heads) * args.head_dim
        # Rows [0:h] are Q, then K, then V; heads contiguous inside each block.
        self.W_pack = Linear(args.hidden_size, qkv_rows)
        self.o_proj = Linear(args.num_heads * args.head_dim, args.hidden_size)
        self.kv_cache: KVCache | None = None

    def forward(self, x, input_pos, end: int, mask, rope, slots=None):
        """x [1, T, hidden] at positions input_pos [T], stored at `slots` (None: input_pos); attends to the
        cache over [0, end) with the additive `mask` (None: causal, for a prefill from position 0); `rope`:
        the (cos, sin) rows of the positions, or None (ALiBi: the mask holds the bias)."""
        T = x.shape[1]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = self.W_pack(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(1, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(1, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(1, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, k, *rope)
        k, v = self.kv_cache.update(input_pos if slots is None else slots, k, v, end)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.o_proj(y.transpose(1, 2).reshape(1, T, q_size))


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, input_pos, end: int, mask, rope, slots=None):
        h = x + self.self_attn(self.input_layernorm(x), input_pos, end, mask, rope, slots)
        return h + self.mlp(self.post_attention_layernorm(h))


class Decoder(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        # Left uninitialized: the weights are always assigned. A random init on the meta device (how the
        # loader builds the model) would import torch._dynamo for normal_: 1.7-3.4 s of start-up.
        self.embed_tokens = nn.Embedding.from_pretrained(torch.empty(args.vocab_size, args.hidden_size), freeze=False)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(self, tokens, input_pos, end: int, mask, rope, slots=None):
        x = self.embed_tokens(tokens)
        for layer in self.layers:
            x = layer(x, input_pos, end, mask, rope, slots)
        return self.norm(x)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes; head counts that are not a power of two (13B has 40) interleave a 2m series."""

    def power_of_2_slopes(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    m = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_2_slopes(m)
    if m < num_heads:
        slopes += power_of_2_slopes(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


class Transformer(nn.Module):
    """Causal LM. For Baichuan2 `lm_head.weight` holds row-normalized weights (NormHead, normalized once at
    load); Llama's head may be tied to the embeddings."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.model = Decoder(args)
        self.lm_head = Linear(args.hidden_size, args.vocab_size)
        self.max_seq_len = 0
        self.attention_window: AttentionWindow | None = None  # None: every earlier key

    def setup_caches(self, max_seq_len: int | None = None, dtype=None, device=None):
        """Allocate the KV cache and position tables; the draft model shares them (see draft.py)."""
        args = self.args
        max_seq_len = max_seq_len or args.max_seq_len
        dtype = dtype or self.lm_head.weight.dtype
        device = device or self.lm_head.weight.device
        self.max_seq_len = max_seq_len
        # One tensor for every layer's keys and values, so that copy_cache_entry is one copy.
        self.kv_storage = torch.zeros(args.num_layers, 2, 1, args.num_kv_heads, max_seq_len, args.head_dim,
                                      dtype=dtype, device=device)
        for layer, (k, v) in zip(self.model.layers, self.kv_storage):
            layer.self_attn.kv_cache = KVCache(k, v)
        positions = torch.arange(max_seq_len, device=device, dtype=torch.float32)
        if args.position_encoding == "rope":
            inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, device=device).float() / args.head_dim))
            angles = torch.outer(positions, inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        elif args.position_encoding == "alibi":
            self.register_buffer("alibi", alibi_slopes(args.num_heads).to(device), persistent=False)
        else:
            raise ValueError(f"unknown position encoding {args.position_encoding!r}")

    def copy_cache_entry(self, source: int, dest: int):
        """Every layer's key and value at slot `source` into slot `dest` (a verify pass's accepted leaf)."""
        self.kv_storage[..., dest, :] = self.kv_storage[..., source, :]

    def attention_mask(self, input_pos, end: int, slots=None):
        """Causal mask (RoPE) or causal ALiBi bias slope*(j-i) (relative: exact near the diagonal in fp16),
        keys outside `attention_window` masked too.

        Keys run over slots [0, end); `end` may exceed the last query position + 1 (CUDA graphs use
        fixed-length buckets), so the mask, not the slice, is what keeps queries causal. A query whose slot
        is not its position (a leaf) sees the keys before its position and, in place of the key at its
        position, its own."""
        key_pos = torch.arange(end, device=input_pos.device)
        offset = key_pos[None, :] - input_pos[:, None]  # [T, end], j - i
        hidden = offset > 0
        if slots is not None:
            own = key_pos[None, :] == slots[:, None]
            hidden = (hidden | (offset == 0)) & ~own
            offset = offset.masked_fill(own, 0)
        if self.attention_window is not None:
            window = self.attention_window
            hidden |= (key_pos[None, :] >= window.sinks) & (offset <= -window.recent)
        dtype = self.model.norm.weight.dtype
        if self.args.position_encoding == "rope":
            # Additive, built once per forward: a boolean mask is converted again in every layer.
            return torch.zeros(offset.shape, dtype=dtype, device=offset.device).masked_fill(hidden, float("-inf"))
        bias = self.alibi[:, None, None] * offset.float()
        return bias.masked_fill(hidden, float("-inf")).to(dtype).unsqueeze(0)

    def forward(self, tokens, input_pos, end: int | None = None, last_only: bool = False, slots=None):
        """tokens [1, T] at absolute positions input_pos [T] (consecutive but for leaves, below). Returns
        logits [1, T, vocab], or [1, 1, vocab] for the last position only (`last_only`: a prefill needs no more).

        Attention reads the cache over [0, end), `end` defaulting to the last query position + 1 (pass it
        to avoid reading input_pos back from the device). Entries past a query's own position, left by
        rejected drafts or padding, are masked out and get overwritten later.

        `slots` [T] (None: input_pos): where each token's key and value go in the cache. A verify pass with
        leaves (generate.py) puts tokens at positions that drafts already hold, [token, d1..dk, l1..lk] at
        positions [p..p+k, p+1..p+k] and slots p..p+2k; each row still gives the logits of a one-token step
        after the tokens before its position.
        """
        x = self.hidden_states(tokens, input_pos, end, slots)
        return self.lm_head(x[:, -1:] if last_only else x)

    def hidden_states(self, tokens, input_pos, end: int | None = None, slots=None):
        """The final-normed hidden states [1, T, hidden] that the head turns into logits."""
        if end is None:
            end = int(input_pos[-1]) + 1
        return self.model(tokens, input_pos, end, *self.attention_inputs(tokens, input_pos, end, slots), slots)

    def attention_inputs(self, tokens, input_pos, end: int, slots=None):
        """(mask, rope) of every layer's attention in one forward pass (see Attention.forward)."""
        rope = None
        if self.args.position_encoding == "rope":
            rope = self.rope_cos[input_pos], self.rope_sin[input_pos]
        # A prefill from position 0 of a RoPE model needs no mask: SDPA's causal kernels apply.
        causal = tokens.shape[1] == end and rope is not None and self.attention_window is None and slots is None
        return None if causal else self.attention_mask(input_pos, end, slots), rope
