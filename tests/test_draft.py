import pytest
import torch

from selfspec import accel
from selfspec.draft import DraftConfig, Int4MLP, draft_bytes, frequent_vocab, make_draft
from selfspec.model import ModelArgs
from selfspec.quantize import Int4Linear, Int8Linear, weight_bytes
from helpers import random_model


@pytest.mark.parametrize("shape", [(64, 256), (40, 80)])  # CPU int4 kernel, dequantize fallback
def test_draft_mlp_fuses_gate_and_up_without_changing_their_quantization(shape):
    hidden, intermediate = shape[1], shape[0]
    model = random_model("rope", num_heads=hidden // 16, intermediate_size=intermediate)
    mlp = model.model.layers[0].mlp
    fused = Int4MLP(mlp, 32)
    assert fused.gate_up_proj.glu and fused.gate_up_proj.out_features == intermediate
    gate, up, down = (Int4Linear(lin.weight, 32) for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    for layer in (fused, gate, up, down):
        accel.use_kernels(layer)
    x = torch.randn(2, 3, hidden, generator=torch.Generator().manual_seed(4))
    expected = down(torch.nn.functional.silu(gate(x)) * up(x))
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_draft_shares_everything_but_the_linear_layers():
    model = random_model("rope", num_heads=4)
    draft = make_draft(model, group_size=32)
    assert draft.model.embed_tokens.weight is model.model.embed_tokens.weight
    assert draft.model.norm.weight is model.model.norm.weight
    assert draft.rope_cos is model.rope_cos
    for t, d in zip(model.model.layers, draft.model.layers):
        assert d.self_attn.kv_cache is t.self_attn.kv_cache
        assert d.input_layernorm is t.input_layernorm
        assert isinstance(d.self_attn.W_pack, Int4Linear) and isinstance(d.mlp, Int4MLP)
    assert isinstance(draft.lm_head, Int8Linear)
    assert make_draft(model, group_size=32, lm_head="shared").lm_head is model.lm_head  # the 16-bit head
    assert isinstance(make_draft(model, group_size=32, lm_head="int4").lm_head, Int4Linear)
    with pytest.raises(ValueError, match="lm_head must be one of"):
        make_draft(model, lm_head="fp8")
    assert isinstance(model.lm_head, torch.nn.Linear) and isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert not any(isinstance(m, Int4Linear) for m in model.modules())


def test_draft_quantizes_with_the_given_clip_ratios():
    model = random_model("rope", num_heads=4)
    w = model.model.layers[0].mlp.down_proj.weight
    drafts = {ratios: make_draft(model, group_size=32, clip_ratios=ratios).model.layers[0].mlp.down_proj
              for ratios in [(1.0,), (1.0, 0.9, 0.8)]}
    for ratios, layer in drafts.items():
        expected = Int4Linear(w, 32, ratios)
        assert torch.equal(layer.packed, expected.packed) and torch.equal(layer.scales, expected.scales)
    assert not torch.equal(drafts[(1.0,)].scales, drafts[(1.0, 0.9, 0.8)].scales)


@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("lm_head", ["shared", "int4"])
def test_draft_memory_is_under_three_tenths_of_the_fp16_weights_it_quantizes(group_size, lm_head):
    model = random_model("rope", num_heads=8, head_dim=16, intermediate_size=256)  # hidden 128: CPU kernel layout
    draft = make_draft(model, group_size=group_size, lm_head=lm_head)
    quantized = [m for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and (lm_head == "int4" or name != "lm_head")]
    fp16_bytes = sum(m.weight.numel() * 2 for m in quantized)
    int4_bytes = weight_bytes(draft, quantized_only=True)
    assert int4_bytes <= 0.3 * fp16_bytes
    assert int4_bytes >= 0.25 * fp16_bytes  # 4 bits per weight plus scales: the count is honest
    # No float copy of a quantized linear is left; everything else is the target's own tensors.
    assert weight_bytes(draft) == weight_bytes(model) - sum(m.weight.numel() * m.weight.element_size() for m in quantized)


@pytest.mark.parametrize("lm_head", ["shared", "int8", "int4"])
@pytest.mark.parametrize("group_size", [32, 128])
def test_draft_bytes_are_known_before_the_weights(lm_head, group_size):
    model = random_model("alibi", num_heads=5, intermediate_size=192)  # hidden 80: groups shrink to 16
    draft = make_draft(model, group_size=group_size, lm_head=lm_head)
    assert draft_bytes(model.args, torch.float32, group_size, lm_head) == weight_bytes(draft, quantized_only=True)


def test_int8_head_adds_one_byte_per_weight_and_no_float_copy():
    model = random_model("rope", num_heads=8, head_dim=16, intermediate_size=256)
    shared, int8 = make_draft(model, lm_head="shared"), make_draft(model, lm_head="int8")
    head = model.lm_head.weight
    assert weight_bytes(int8, quantized_only=True) == (
        weight_bytes(shared, quantized_only=True) + head.numel() + head.shape[0] * head.element_size())
    assert weight_bytes(int8) == weight_bytes(shared) - head.numel() * head.element_size()


def test_draft_predicts_like_the_target():
    model = random_model("alibi", num_heads=5)
    draft = make_draft(model, group_size=64)
    tokens = torch.randint(0, 320, (1, 64), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(64)
    target_logits = model(tokens, pos)[0]
    draft_logits = draft(tokens, pos)[0]
    agreement = (target_logits.argmax(-1) == draft_logits.argmax(-1)).float().mean()
    assert agreement > 0.5
    assert (draft_logits - target_logits).norm() / target_logits.norm() < 0.3


def test_frequent_vocab_keeps_the_first_ranked_ids_and_the_ones_always_needed():
    ranked = [5, 9, 400, 2, 7, 1]  # 400 is past the vocabulary: skipped
    assert frequent_vocab(ranked, 3, 10, always=[8]).tolist() == [2, 5, 8, 9]
    assert frequent_vocab(ranked, 100, 10).tolist() == [1, 2, 5, 7, 9]


@pytest.mark.parametrize("lm_head", ["shared", "int8", "int4"])
def test_frequent_vocab_head_gives_the_full_heads_logits_on_its_tokens_and_minus_infinity_elsewhere(lm_head):
    model = random_model("rope", num_heads=4)
    ids = torch.cat((torch.tensor([0, 3, 17]), torch.arange(64, 320, 20)))  # 16 rows: the same CPU INT4 kernel
    full, part = make_draft(model, lm_head=lm_head), make_draft(model, lm_head=lm_head, head_vocab=ids)
    tokens, pos = torch.tensor([[5, 6, 7]]), torch.arange(3)
    expected, logits = full(tokens, pos), part(tokens, pos)
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits[..., ids], expected[..., ids])
    outside = torch.ones(model.args.vocab_size, dtype=torch.bool)
    outside[ids] = False
    assert torch.isneginf(logits[..., outside]).all()


@pytest.mark.parametrize("lm_head", ["int8", "int4"])
def test_draft_bytes_count_a_frequent_vocab_head(lm_head):
    model = random_model("rope", num_heads=4)
    ids = torch.arange(0, 320, 5)
    draft = make_draft(model, group_size=32, lm_head=lm_head, head_vocab=ids)
    expected = draft_bytes(model.args, torch.float32, 32, lm_head, head_vocab_size=ids.numel())
    assert expected == weight_bytes(draft, quantized_only=True)
    assert expected < draft_bytes(model.args, torch.float32, 32, lm_head)


@pytest.mark.parametrize("lm_head", ["shared", "int8"])
def test_draft_reports_each_target_weight_once_for_its_progress_bar(lm_head):
    model = random_model("rope", num_heads=4, max_seq_len=64)
    reported = []
    make_draft(model, group_size=32, lm_head=lm_head, on_weight=reported.append)
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(map(id, reported)) == sorted(map(id, linears))  # layers' 7 matrices each and the head


def test_draft_needs_the_targets_caches_and_leaves_nothing_unassigned():
    model = random_model("alibi", num_heads=5)
    draft = make_draft(model, group_size=32)
    assert not any(t.is_meta for t in (*draft.parameters(), *draft.buffers()))
    assert draft.alibi is model.alibi and draft.max_seq_len == model.max_seq_len
    with torch.device("meta"):
        bare = type(model)(model.args)
    with pytest.raises(ValueError, match="setup_caches"):
        make_draft(bare)


def test_draft_bytes_count_the_draft_make_draft_builds_by_default():
    model = random_model("rope", num_heads=4, head_dim=32, intermediate_size=256)
    assert (DraftConfig().group_size, DraftConfig().lm_head) == (64, "int8")
    assert draft_bytes(model.args, torch.float32) == weight_bytes(make_draft(model), quantized_only=True)
    with pytest.raises(ValueError, match="lm_head must be one of"):
        draft_bytes(ModelArgs(10, 64, 64, 1, 4, 4, 16), torch.float32, lm_head="fp8")
