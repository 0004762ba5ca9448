"""The INT4 draft: the target's own weights, quantized, in a model that shares everything else.

The draft is not a second checkpoint. `make_draft` builds a model that shares the target's embeddings,
norms, position tables and KV cache, with every linear layer of the decoder layers an INT4 layer (gate and up
one matrix) and the lm_head shared or quantized to INT8 or INT4. No second 16-bit copy of any weight is
kept. `draft_bytes` tells the memory check what a draft will add, before any weight is read.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .accel.int4 import quantizer
from .model import MLP, AttentionWindow, Linear, ModelArgs, Transformer
from .quantize import CLIP_RATIOS, Int4Linear, Int8Linear, choose_group_size, quantize_int4

LM_HEADS = ("shared", "int8", "int4")  # the draft's lm_head: the target's own 16-bit one, or a quantized copy


@dataclass(frozen=True)
class DraftConfig:
    """How a draft is built; these defaults are make_draft's and draft_bytes', so the memory check counts
    the draft that will be built.

    Why an INT8 head by default (docs/performance.md, SmolLM2's real weights): an INT4 head made the draft
    step 7% cheaper than the shared 16-bit head but cost eight points of acceptance; an INT8 head is as
    cheap as the INT4 one on an H100 and accepts as often as the 16-bit one."""

    group_size: int = 64  # INT4 weights per scale (halved where a layer's width needs it: choose_group_size)
    lm_head: str = "int8"  # one of LM_HEADS
    clip_ratios: tuple[float, ...] = CLIP_RATIOS

    def __post_init__(self):
        if self.lm_head not in LM_HEADS:
            raise ValueError(f"lm_head must be one of {LM_HEADS}, got {self.lm_head!r}")


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


def make_draft(target: Transformer, group_size: int = DraftConfig.group_size, lm_head: str = DraftConfig.lm_head,
               clip_ratios=DraftConfig.clip_ratios, attention_window: AttentionWindow | None = None,
               head_vocab: torch.Tensor | None = None, on_weight=None) -> Transformer:
    """A draft model over the target's own weights (see DraftConfig for the settings): every linear layer
    of the decoder layers becomes an Int4Linear (gate and up one Int4MLP matrix); lm_head an Int8Linear,
    an Int4Linear or the target's own (`"shared"`); embeddings, norms, KV cache and position tables are the
    target's tensors. The layers are plain (dequantizing): accel.use_kernels swaps the device's kernels in.

    `attention_window` (model.AttentionWindow): the draft attends to those keys only, the target to all. Not
    the default: on long passage questions it cost more acceptance than it saved time (docs/performance.md,
    "Tried and not kept"); `bench/measure_acceptance.py --draft-window` measures it on a checkpoint.

    `head_vocab` (token ids): the head covers these tokens only (FrequentVocabHead). `on_weight(weight)`, if
    given, is called with each linear weight of the target once it is done (for a progress bar: at 7B on
    CPU this takes minutes). The target's caches must be set up (setup_caches) first: the draft shares them.
    """
    config = DraftConfig(group_size, lm_head, clip_ratios)
    if not target.max_seq_len:
        raise ValueError("the target has no KV cache yet: call setup_caches before make_draft, which shares it")
    report = on_weight if on_weight is not None else (lambda weight: None)
    quantize = quantizer(target.lm_head.weight.device)

    def int4(linear: nn.Linear) -> Int4Linear:
        layer = Int4Linear(linear.weight.detach(), config.group_size, config.clip_ratios, quantize=quantize)
        report(linear.weight)
        return layer

    with torch.device("meta"):  # the structure only: every tensor is assigned below
        draft = Transformer(target.args)
    draft.model.embed_tokens, draft.model.norm = target.model.embed_tokens, target.model.norm
    for layer, source in zip(draft.model.layers, target.model.layers):
        layer.input_layernorm = source.input_layernorm
        layer.post_attention_layernorm = source.post_attention_layernorm
        attn = source.self_attn
        layer.self_attn.W_pack, layer.self_attn.o_proj = int4(attn.W_pack), int4(attn.o_proj)
        layer.self_attn.kv_cache = attn.kv_cache
        layer.mlp = Int4MLP(source.mlp, config.group_size, config.clip_ratios, quantize)
        for linear in (source.mlp.gate_proj, source.mlp.up_proj, source.mlp.down_proj):
            report(linear.weight)
    draft.lm_head = draft_head(target.lm_head, config, quantize, head_vocab)
    report(target.lm_head.weight)
    draft.max_seq_len = target.max_seq_len
    draft.attention_window = attention_window
    for name, table in target.named_buffers(recurse=False):  # RoPE or ALiBi tables
        draft.register_buffer(name, table, persistent=False)
    return draft


def draft_head(head: nn.Linear, config: DraftConfig, quantize, ids: torch.Tensor | None) -> nn.Module:
    """The draft's lm_head from the target's: shared, INT8 or INT4, over the tokens `ids` only if given."""
    weight = head.weight.detach()
    if ids is not None:
        ids = ids.to(weight.device)
        weight = weight[ids]  # a copy, also for a shared head
    if config.lm_head == "int8":
        converted = Int8Linear(weight)
    elif config.lm_head == "int4":
        converted = Int4Linear(weight, config.group_size, config.clip_ratios, quantize=quantize)
    elif ids is None:
        return head
    else:
        with torch.device("meta"):
            converted = Linear(weight.shape[1], weight.shape[0])
        converted.weight = nn.Parameter(weight, requires_grad=False)
    return converted if ids is None else FrequentVocabHead(converted, ids, head.out_features)


def draft_bytes(args: ModelArgs, dtype: torch.dtype, group_size: int = DraftConfig.group_size,
                lm_head: str = DraftConfig.lm_head, head_vocab_size: int | None = None) -> int:
    """What `make_draft` will add to a target of this shape, before any weight is read: 4 bits per layer
    weight and a scale per group, and the head. As `weight_bytes(draft, quantized_only=True)` counts it,
    except for CPU's int4 kernel in 16-bit dtypes, which keeps a zero beside each (bfloat16) scale."""
    def int4(rows: int, cols: int) -> int:
        return rows * cols // 2 + rows * (cols // choose_group_size(cols, group_size)) * dtype.itemsize

    DraftConfig(group_size, lm_head)  # checks the settings
    h, i = args.hidden_size, args.intermediate_size
    v = head_vocab_size or args.vocab_size
    qkv_rows = (args.num_heads + 2 * args.num_kv_heads) * args.head_dim
    layer = int4(qkv_rows, h) + int4(h, args.num_heads * args.head_dim) + int4(2 * i, h) + int4(h, i)
    shared = v * h * dtype.itemsize if head_vocab_size else 0  # a subset of the shared head is a copy
    head = {"shared": shared, "int8": v * h + v * dtype.itemsize, "int4": int4(v, h)}[lm_head]
    return args.num_layers * layer + head


