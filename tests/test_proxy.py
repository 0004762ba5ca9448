"""scripts/make_proxy.py: a Llama model embedded into a larger shape computes the same logits on the real
vocabulary, padded rows never win, greedy outputs are identical."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from make_proxy import embed_llama, read_llama
from tiny_llama import write_tiny_llama

from selfspec.checkpoint import load_checkpoint
from selfspec.generate import generate
from selfspec.draft import make_draft
from selfspec.weights import model_from_state_dict

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[1]

# From 64 hidden, 4 heads of 16, 2 KV heads, 2 layers, 128 MLP. MHA: a head beyond the original's,
# head width x2, extra layer, MLP and vocabulary padding. GQA: width x4, 8 heads over 4 KV heads, two
# extra layers, no vocabulary padding (no constant channels).
SHAPES = {
    "mha": dict(hidden_size=160, num_hidden_layers=3, num_attention_heads=5, num_key_value_heads=5,
                intermediate_size=200, vocab_size=437),
    "gqa": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                intermediate_size=128, vocab_size=None),  # None: the original's
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama-for-proxy"), tied=True, num_kv_heads=2)


def check_embedding(original, proxy, ids, vocab):
    """Logits equal on the real vocabulary, every padded logit below every real one."""
    positions = torch.arange(len(ids))
    expected = original(torch.tensor([ids]), positions)[0]
    actual = proxy(torch.tensor([ids]), positions)[0]
    torch.testing.assert_close(actual[:, :vocab], expected, atol=2e-4, rtol=1e-4)
    if actual.shape[1] > vocab:
        assert (actual[:, vocab:].max(-1).values < expected.min(-1).values).all()


@pytest.mark.parametrize("name", list(SHAPES))
def test_tiny_proxy_is_exact(tiny, name):
    ckpt, original, tokenizer = load_checkpoint(str(tiny), torch.float32, "cpu")
    state, config = read_llama(tiny)
    shape = {**SHAPES[name], "vocab_size": SHAPES[name]["vocab_size"] or config["vocab_size"]}
    proxy_state, proxy_config = embed_llama(state, config, shape)
    proxy = model_from_state_dict(proxy_config, proxy_state, torch.float32, "cpu")
    assert proxy.args.head_dim == shape["hidden_size"] // shape["num_attention_heads"]
    # Spare hidden channels carry constants only where padded vocabulary rows need them.
    assert bool(proxy_state["model.embed_tokens.weight"][:, 64:].any()) == (shape["vocab_size"] > config["vocab_size"])
    m = proxy.args.head_dim // original.args.head_dim
    # The RoPE frequencies coincide: proxy dim m*i turns exactly as original dim i.
    half, proxy_half = original.args.head_dim // 2, proxy.args.head_dim // 2
    assert torch.equal(proxy.rope_cos[:, :proxy_half:m], original.rope_cos[:, :half])
    for prompt in ["Hello, how are you today?", "大语言模型根据前面的词预测下一个词。"]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=100)
        check_embedding(original, proxy, ids, ckpt.args.vocab_size)
        expected, _ = generate(original, ids, 30, eos_token_id=ckpt.eos_token_id)
        assert generate(proxy, ids, 30, eos_token_id=ckpt.eos_token_id)[0] == expected
        spec, _ = generate(proxy, ids, 30, draft=make_draft(proxy, group_size=16), eos_token_id=ckpt.eos_token_id)
        assert spec == expected


def test_proxy_cli_writes_a_standard_llama_checkpoint(tiny, tmp_path):
    shape = SHAPES["mha"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in shape.items()]
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_proxy.py"), str(tiny), str(tmp_path / "proxy"),
                    "--dtype", "float32", *flags], check=True, capture_output=True, timeout=300)
    config = json.loads((tmp_path / "proxy" / "config.json").read_text())
    assert {k: config[k] for k in shape} == shape and config["tie_word_embeddings"] is False
    ckpt, proxy, tokenizer = load_checkpoint(str(tmp_path / "proxy"), torch.float32, "cpu")
    original_ckpt, _, original_tokenizer = load_checkpoint(str(tiny), torch.float32, "cpu")
    chat = ckpt.chat_ids(tokenizer, "Hello", max_input_tokens=50)  # tokenizer and template came along
    assert chat == original_ckpt.chat_ids(original_tokenizer, "Hello", max_input_tokens=50)
    assert ckpt.eos_token_ids == original_ckpt.eos_token_ids
    # transformers reads the proxy as an ordinary Llama checkpoint and computes the same logits.
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "proxy", dtype=torch.float32).eval()
    tokens = list(range(3, 60))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0]
    actual = proxy(torch.tensor([tokens]), torch.arange(len(tokens)))[0]
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_impossible_shapes(tiny):
    state, config = read_llama(tiny)
    base = SHAPES["mha"]
    for change, message in [
        ({"hidden_size": 32, "num_attention_heads": 2}, "smaller"),
        ({"hidden_size": 200, "num_attention_heads": 5}, "multiple"),  # head width 40 is not a multiple of 16
        ({"num_hidden_layers": 1}, "smaller"),
        ({"num_key_value_heads": 1}, "smaller"),
    ]:
        with pytest.raises(ValueError, match=message):
            embed_llama(state, config, {**base, **change})
    # Proxy KV head 0 would serve original heads 0-3, which read two different original KV heads.
    with pytest.raises(ValueError, match="KV"):
        embed_llama(state, config, {**base, "num_attention_heads": 8, "hidden_size": 256, "num_key_value_heads": 2})


@pytest.mark.slow
@torch.inference_mode()
def test_smollm2_proxy(smollm2):
    """The real model, padded in every dimension (a head beyond its 9, width 64 -> 128, one extra layer)."""
    folder, ckpt, original, tokenizer = smollm2
    state, config = read_llama(folder)
    shape = dict(hidden_size=1280, num_hidden_layers=31, num_attention_heads=10, num_key_value_heads=10,
                 intermediate_size=1600, vocab_size=49152 + 64)
    proxy_state, proxy_config = embed_llama(state, config, shape)
    proxy = model_from_state_dict(proxy_config, proxy_state, torch.float32, "cpu", max_seq_len=512)
    del proxy_state, state
    ids, _ = ckpt.chat_ids(tokenizer, "What is the capital of France?", max_input_tokens=400)
    check_embedding(original, proxy, ids, 49152)
    expected, _ = generate(original, ids, 24, eos_token_id=ckpt.eos_token_id)
    assert generate(proxy, ids, 24, eos_token_id=ckpt.eos_token_id)[0] == expected
    assert "Paris" in tokenizer.decode(expected)
