"""The draft's forward pass with the norms and residual adds inside the CUDA INT4 GEMV (accel/fused_draft.py):
chosen only where every matrix of the draft runs on that GEMV; on a GPU its logits match the unfused draft's,
in CUDA graphs with programmatic dependent launch, and speculative decoding through it equals plain decoding."""
import types

import pytest
import torch

from selfspec import accel
from selfspec.accel import fused_draft, int4, int4_cuda, launch
from selfspec.accel.cuda_graphs import GraphedModel
from selfspec.accel.fused_draft import FusedDraft
from selfspec.accel.transformer import FusedTransformer
from selfspec.draft import make_draft
from selfspec.model import AttentionWindow, rms_norm, silu_mul
from selfspec.quantize import Int4Linear, dequantize_int4, unpack_nibbles
from helpers import check_greedy_speculative_equals_plain, random_model

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and int4_cuda.available(torch.device("cuda"))),
                          reason="needs a CUDA GPU (compute capability 8.0+) and cuda-python")
# Relative norm of the logits' difference. Against the same draft unfused (the same GEMV, norm and add kernels
# of their own): the norm's sum of squares in another order and one fp16 rounding of h + W x instead of two.
# Against the Triton GEMV: also its own summation order in every product, through two layers.
SAME_GEMV_TOLERANCE = 5e-3
TRITON_TOLERANCE = 2e-2
SHAPES = [("rope", 4), ("alibi", 5)]  # 7B-like and 13B-like (ALiBi, a head count that is not a power of two)


def _as_fused_transformer(model):
    model.__class__ = FusedTransformer
    model.attention_kernels = True
    return model


def test_only_a_draft_whose_every_matrix_is_on_the_cuda_gemv_is_served(monkeypatch):
    model = random_model("rope", num_heads=4, head_dim=32, dtype=torch.float16)
    draft = _as_fused_transformer(make_draft(model, group_size=32))
    monkeypatch.setattr(int4, "on_cuda_kernel", lambda layer: isinstance(layer, Int4Linear))
    assert fused_draft.serves(draft)
    monkeypatch.setattr(fused_draft, "enabled", False)  # benchmarks' switch
    assert not fused_draft.serves(draft)
    monkeypatch.setattr(fused_draft, "enabled", True)
    assert not fused_draft.serves(_as_fused_transformer(model))  # the 16-bit target
    assert not fused_draft.serves(make_draft(model, group_size=32))  # not a FusedTransformer
    draft.attention_kernels = False
    assert not fused_draft.serves(draft)
    draft.attention_kernels = True
    last = draft.model.layers[-1]
    monkeypatch.setattr(int4, "on_cuda_kernel",
                        lambda layer: isinstance(layer, Int4Linear) and layer is not last.mlp.down_proj)
    assert not fused_draft.serves(draft)
    monkeypatch.setattr(int4, "on_cuda_kernel", lambda layer: isinstance(layer, Int4Linear))
    last.post_attention_layernorm.weight.data = last.post_attention_layernorm.weight.data.float()
    assert not fused_draft.serves(draft)


def test_use_kernels_on_cpu_keeps_the_plain_draft():
    model = random_model("rope", num_heads=4, head_dim=32, dtype=torch.float16)
    draft = make_draft(model, group_size=32)
    accel.use_kernels(model, draft)
    assert not isinstance(draft, FusedDraft) and not isinstance(model, FusedDraft)


@pytest.mark.parametrize("position_encoding,num_heads", SHAPES)
def test_the_fused_layers_compute_the_plain_draft_on_cpu(position_encoding, num_heads, monkeypatch):
    # The order of FusedDraft's work (which norm each GEMV takes, where each residual is added), with torch's
    # arithmetic in place of the CUDA kernels: float32, so only the rounding of float32 sums can differ.
    model = random_model(position_encoding, num_heads=num_heads, head_dim=16)
    draft = make_draft(model, group_size=16)
    tokens, input_pos = torch.randint(0, 320, (1, 7)), torch.arange(5, 12)
    model(torch.randint(0, 320, (1, 5)), torch.arange(5))  # a cache to attend to

    def gemv(x, packed, scales, group_size, glu=False, residual=None, norm=None):
        x = x if norm is None else norm(x)
        y = torch.nn.functional.linear(x, dequantize_int4(unpack_nibbles(packed, group_size), scales, x.dtype))
        y = silu_mul(y[..., 0::2], y[..., 1::2]) if glu else y
        return y if residual is None else residual + y

    def attend_qkv(attn, qkv, input_pos, end, rope, alibi, window, slots):  # Attention.forward without W_pack, o_proj
        assert window == draft.attention_window and slots is None  # the mask of attention_inputs below applies it
        projections = attn.W_pack, attn.o_proj
        attn.W_pack = attn.o_proj = torch.nn.Identity()
        try:
            return attn(qkv, input_pos, end, *draft.attention_inputs(tokens, input_pos, end))
        finally:
            attn.W_pack, attn.o_proj = projections

    for layer in draft.modules():
        if isinstance(layer, Int4Linear):
            layer.gemv = gemv
    monkeypatch.setattr(fused_draft.attention, "attend_qkv", attend_qkv)
    monkeypatch.setattr(fused_draft, "pointwise", types.SimpleNamespace(rms_norm=rms_norm))
    expected = draft.hidden_states(tokens, input_pos)
    draft.__class__ = FusedDraft
    torch.testing.assert_close(draft.hidden_states(tokens, input_pos), expected, atol=1e-5, rtol=1e-5)


def _cuda_draft(position_encoding, num_heads, group_size, attention_window=None):
    model = random_model(position_encoding, num_heads=num_heads, head_dim=32, max_seq_len=300,
                         dtype=torch.float16).cuda()
    model.setup_caches(300)
    return model, make_draft(model, group_size=group_size, attention_window=attention_window)


def _draft_steps(draft, tokens, pdl):
    """Logits of draft steps of 1 and 3 tokens from position 150 on, replayed from graphs captured with or
    without PDL; each step writes the cache entries it reads, so every call sees its own."""
    graphed = GraphedModel(draft, bucket=64, pdl=pdl)
    logits = []
    with launch.pdl(torch.device("cuda"), pdl):
        for pos, t in [(150, 1), (151, 3), (154, 1), (155, 1)]:
            logits.append(graphed(tokens[:, pos : pos + t], torch.arange(pos, pos + t, device="cuda"), pos + t).clone())
    return torch.cat(logits, dim=1).float()


def _relative(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("position_encoding,num_heads", SHAPES)
def test_fused_draft_logits_match_the_unfused_draft(position_encoding, num_heads, group_size, monkeypatch):
    window = AttentionWindow(sinks=4, recent=16)  # steps at 150-158: the sinks' block masked, the next one read
    model, draft = _cuda_draft(position_encoding, num_heads, group_size, window)
    accel.use_kernels(model, draft)
    assert type(draft) is FusedDraft
    tokens = torch.randint(0, 320, (1, 200), device="cuda")
    model(tokens[:, :150], torch.arange(150, device="cuda"))
    pdl = torch.cuda.get_device_capability() >= (9, 0)
    fused = _draft_steps(draft, tokens, pdl)
    assert torch.equal(fused, _draft_steps(draft, tokens, False))  # PDL changes no result
    draft.__class__ = FusedTransformer  # the same layers, with separate norm and add kernels
    unfused = _draft_steps(draft, tokens, pdl)
    assert _relative(fused, unfused) < SAME_GEMV_TOLERANCE

    monkeypatch.setattr(int4, "prefer_cuda_kernel", False)
    triton_draft = make_draft(model, group_size=group_size, attention_window=window)  # the same weights, Triton's GEMV
    accel.use_kernels(triton_draft)
    assert type(triton_draft) is FusedTransformer
    assert _relative(fused, _draft_steps(triton_draft, tokens, pdl)) < TRITON_TOLERANCE


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("position_encoding,num_heads", SHAPES)
def test_float16_speculative_through_the_fused_draft_equals_plain(position_encoding, num_heads):
    model, draft = _cuda_draft(position_encoding, num_heads, 32)
    model_g, draft_g = accel.graph_models(model, draft, bucket=64)
    assert type(draft) is FusedDraft
    check_greedy_speculative_equals_plain(model_g, draft_g, seed=2, runs=6, new_tokens=60)
