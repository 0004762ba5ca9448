import math

import pytest
import torch
import torch.nn.functional as F

from selfspec.model import AttentionWindow, alibi_slopes
from helpers import random_model


def full_forward(model, tokens):
    return model(torch.tensor([tokens]), torch.arange(len(tokens)))[0]


def test_rope_model_matches_transformers_llama():
    """Baichuan2-7B is Llama with a fused W_pack and a NormHead: transformers' Llama is an exact reference."""
    transformers = pytest.importorskip("transformers")
    model = random_model("rope", num_heads=4, head_dim=16, num_layers=3)
    args = model.args
    config = transformers.LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads, num_key_value_heads=args.num_heads,
        max_position_embeddings=args.max_seq_len, rms_norm_eps=args.rms_norm_eps, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    reference = transformers.LlamaForCausalLM(config).eval()
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("W_pack.weight"):
            prefix = key.removesuffix("W_pack.weight")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                state[f"{prefix}{name}.weight"] = part
        else:
            state[key] = value
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing)

    tokens = torch.randint(0, args.vocab_size, (1, 37), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(tokens).logits[0]
    actual = full_forward(model, tokens[0].tolist())
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def reference_alibi_forward(model, tokens, window=None):
    """Baichuan2-13B written out from the definition: full causal attention with bias slope * (j - i); with
    an AttentionWindow `window`, query i sees keys j < sinks and i - recent < j only."""
    args = model.args
    state = {k: v.float() for k, v in model.state_dict().items()}
    T, h, d = len(tokens), args.num_heads, args.head_dim

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + args.rms_norm_eps)

    positions = torch.arange(T, dtype=torch.float32)
    slopes = alibi_slopes(h)
    bias = slopes[:, None, None] * (positions[None, :] - positions[:, None])[None]
    hidden = torch.ones(T, T).triu(1).bool()
    if window is not None:
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        hidden |= (j >= window.sinks) & (j <= i - window.recent)
    bias = bias.masked_fill(hidden, float("-inf"))
    x = state["model.embed_tokens.weight"][torch.tensor(tokens)]
    for i in range(args.num_layers):
        p = f"model.layers.{i}."
        a = rms(x, state[p + "input_layernorm.weight"])
        q, k, v = (a @ state[p + "self_attn.W_pack.weight"].T).split(h * d, dim=-1)
        q, k, v = (t.view(T, h, d).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(1, 2) / math.sqrt(d) + bias
        attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(T, h * d)
        x = x + attn @ state[p + "self_attn.o_proj.weight"].T
        m = rms(x, state[p + "post_attention_layernorm.weight"])
        gate, up = m @ state[p + "mlp.gate_proj.weight"].T, m @ state[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ state[p + "mlp.down_proj.weight"].T
    return rms(x, state["model.norm.weight"]) @ state["lm_head.weight"].T


@pytest.mark.parametrize("num_heads", [5, 8])
def test_alibi_model_matches_definition(num_heads):
    model = random_model("alibi", num_heads=num_heads)
    tokens = torch.randint(0, model.args.vocab_size, (41,), generator=torch.Generator().manual_seed(2)).tolist()
    torch.testing.assert_close(full_forward(model, tokens), reference_alibi_forward(model, tokens), atol=1e-4, rtol=1e-4)


def test_attention_window_matches_definition_through_prefill_and_cache():
    model = random_model("alibi", num_heads=5)
    model.attention_window = window = AttentionWindow(sinks=3, recent=7)
    tokens = torch.randint(0, model.args.vocab_size, (41,), generator=torch.Generator().manual_seed(2)).tolist()
    expected = reference_alibi_forward(model, tokens, window)
    assert (expected - reference_alibi_forward(model, tokens)).abs().max() > 1e-2  # the window matters here
    torch.testing.assert_close(full_forward(model, tokens), expected, atol=1e-4, rtol=1e-4)
    steps = torch.cat([model(torch.tensor([tokens[i : i + 1]]), torch.tensor([i]))[0] for i in range(41)])
    torch.testing.assert_close(steps, expected, atol=1e-4, rtol=1e-4)


def test_rope_attention_window_hides_the_keys_between_sinks_and_recent():
    # One layer: a token between the sinks and the window changes no later logit; a sink or a recent one does.
    model = random_model("rope", num_heads=4, num_layers=1)
    model.attention_window = AttentionWindow(sinks=2, recent=5)
    tokens = torch.randint(0, model.args.vocab_size, (20,), generator=torch.Generator().manual_seed(5)).tolist()
    last = full_forward(model, tokens)[-1]
    for position, visible in ((1, True), (2, False), (14, False), (15, True), (19, True)):
        changed = list(tokens)
        changed[position] = (tokens[position] + 1) % model.args.vocab_size
        assert (full_forward(model, changed)[-1] - last).abs().max() > 1e-4 if visible else \
            torch.equal(full_forward(model, changed)[-1], last), position
    with pytest.raises(ValueError, match="needs a sink and a recent"):
        AttentionWindow(sinks=0, recent=5)


def test_alibi_slopes():
    # Power of two: start = 2^(-8/n), slope_i = start^(i+1).
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 40 heads (Baichuan2-13B): the 32-head series, then every second slope of the 64-head series.
    s32, s64 = alibi_slopes(32), alibi_slopes(64)
    torch.testing.assert_close(alibi_slopes(40), torch.cat([s32, s64[0::2][:8]]))
    assert len(alibi_slopes(40).unique()) == 40


@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_incremental_decoding_matches_full_forward(position_encoding, num_heads):
    model = random_model(position_encoding, num_heads=num_heads)
    tokens = torch.randint(0, model.args.vocab_size, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    expected = full_forward(model, tokens)
    # Prefill 11 tokens, 5 single steps, then a chunk of 14 (a verification pass), through the cache.
    pieces = [(0, 11)] + [(i, i + 1) for i in range(11, 16)] + [(16, 30)]
    actual = torch.cat([model(torch.tensor([tokens[a:b]]), torch.arange(a, b))[0] for a, b in pieces])
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    last = model(torch.tensor([tokens[:11]]), torch.arange(11), last_only=True)
    assert last.shape == (1, 1, model.args.vocab_size)
    torch.testing.assert_close(last[0, 0], expected[10], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_leaf_rows_are_one_token_steps_with_their_own_key(position_encoding, num_heads):
    """A verify pass with leaves: [token, d1, d2, d3, l1, l2, l3] at positions [20..23, 21..23], slots 20..26. The
    row of l_i is a one-token step at l_i's position after token, d1..d(i-1); copy_cache_entry then puts l_i's key
    and value where a step at its position would have."""
    model = random_model(position_encoding, num_heads=num_heads)
    gen = torch.Generator().manual_seed(5)
    prompt, chain, leaves = (torch.randint(0, model.args.vocab_size, (n,), generator=gen) for n in (20, 4, 3))
    model(prompt[None], torch.arange(20))
    logits = model(torch.cat([chain, leaves])[None], torch.tensor([20, 21, 22, 23, 21, 22, 23]), 27,
                   slots=torch.arange(20, 27))[0]
    torch.testing.assert_close(logits[:4], full_forward(model, torch.cat([prompt, chain]).tolist())[20:])
    for i in range(3):
        step = model(torch.cat([chain[: i + 1], leaves[i : i + 1]])[None], torch.arange(20, 22 + i))[0, -1]
        torch.testing.assert_close(logits[4 + i], step, atol=1e-5, rtol=1e-5)
    keys = model.model.layers[1].self_attn.kv_cache.k
    model(leaves[None, 2:], torch.tensor([23]), slots=torch.tensor([26]))
    leaf_key = keys[:, :, 26].clone()
    model(chain[None], torch.arange(20, 24))
    model.copy_cache_entry(26, 23)
    torch.testing.assert_close(keys[:, :, 23], leaf_key, atol=0, rtol=0)


def test_stale_cache_entries_past_the_query_are_ignored():
    """A rejected draft leaves entries past the verified prefix; they must not change later logits."""
    model = random_model("alibi", num_heads=5)
    tokens = list(range(1, 21))
    expected = full_forward(model, tokens)[-1]
    model(torch.tensor([[7, 8, 9, 10]]), torch.arange(20, 24))  # garbage written at 20..23
    torch.testing.assert_close(full_forward(model, tokens)[-1], expected)
    # Overwrite position 19 alone after garbage at 20..23: only positions <= 19 are read.
    model(torch.tensor([[7, 8, 9, 10]]), torch.arange(20, 24))
    step = model(torch.tensor([[tokens[-1]]]), torch.tensor([19]))[0, -1]
    torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)


def test_alibi_half_precision_stays_close_at_long_positions():
    """Relative bias slope*(j-i) keeps the diagonal exact in fp16; a long sequence stays near float32."""
    model32 = random_model("alibi", num_heads=5, max_seq_len=1100)
    model16 = random_model("alibi", num_heads=5, max_seq_len=1100, dtype=torch.bfloat16)
    tokens = torch.randint(0, 320, (1024,), generator=torch.Generator().manual_seed(4)).tolist()
    a, b = full_forward(model32, tokens)[-8:], full_forward(model16, tokens)[-8:].float()
    assert ((a - b).norm() / a.norm()) < 0.05
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75
