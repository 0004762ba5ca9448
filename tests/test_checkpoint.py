"""selfspec.checkpoint: what a checkpoint folder declares, checked before any weight is read, and the loaded model."""
import dataclasses
import json

import pytest
import torch

from selfspec import checkpoint as ckpt_mod
from selfspec.checkpoint import load_checkpoint, open_checkpoint
from selfspec.errors import CheckpointError
from selfspec.tokenizer import Tokenizer


@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b"])
def test_loaded_model_is_ready(request, fixture):
    folder = request.getfixturevalue(fixture)
    ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu", max_seq_len=64)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.max_seq_len == 64
    assert model.model.layers[0].self_attn.kv_cache.k.shape == (1, ckpt.args.num_heads, 64, ckpt.args.head_dim)
    torch.testing.assert_close(model.lm_head.weight.norm(dim=1), torch.ones(ckpt.args.vocab_size))
    ids = tokenizer.encode("Hello, how are you today?")
    logits = model(torch.tensor([ids]), torch.arange(len(ids)))
    assert logits.shape == (1, len(ids), ckpt.args.vocab_size)
    assert torch.isfinite(logits).all()


def test_checkpoint_values(tiny_7b, tiny_13b):
    ckpt = open_checkpoint(str(tiny_7b))
    sp = Tokenizer(tiny_7b / "tokenizer.model").sp
    assert ckpt.user_token_id == sp.piece_to_id("<reserved_106>")
    assert ckpt.assistant_token_id == sp.piece_to_id("<reserved_107>")
    assert (ckpt.eos_token_id, ckpt.top_k, ckpt.top_p, ckpt.temperature) == (2, 5, 0.85, 0.3)
    assert ckpt.repetition_penalty == 1.05
    assert ckpt.args.max_seq_len == 256 and ckpt.args.position_encoding == "rope"
    assert ckpt.weight_files == [tiny_7b / "model.safetensors"]
    ckpt13 = open_checkpoint(str(tiny_13b))
    assert ckpt13.args.max_seq_len == 256 and ckpt13.args.position_encoding == "alibi"
    assert ckpt13.args.num_heads == 5


def test_generation_config_defaults(tiny_copy):
    # Real vocabularies hold ids 195/196; this one is padded to 1024 so the defaults are valid ids.
    folder = tiny_copy(vocab_size=1024)
    (folder / "generation_config.json").unlink()
    ckpt = open_checkpoint(str(folder))
    assert (ckpt.user_token_id, ckpt.assistant_token_id, ckpt.eos_token_id) == (195, 196, 2)
    assert (ckpt.temperature, ckpt.top_k, ckpt.top_p, ckpt.repetition_penalty) == (None, None, None, None)
    assert ckpt.sampling() == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # nothing declared: plain sampling


def test_sampling_settings_come_from_the_flags_then_the_generation_config(tiny_7b, tiny_copy):
    ckpt = open_checkpoint(str(tiny_7b))  # declares temperature 0.3, top_k 5, top_p 0.85 as the hub's
    assert ckpt.sampling() == {"temperature": 0.3, "top_k": 5, "top_p": 0.85}
    assert ckpt.sampling(temperature=0.7, top_k=0) == {"temperature": 0.7, "top_k": 0, "top_p": 0.85}
    folder = tiny_copy()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "top_p": 0.9}))
    ckpt = open_checkpoint(str(folder))  # greedy decoding never reads these, so opening it is fine
    with pytest.raises(CheckpointError, match=r"generation_config.json: temperature must be positive and finite, "
                                              r"got 0.0; pass --temperature"):
        ckpt.sampling()
    assert ckpt.sampling(temperature=0.5) == {"temperature": 0.5, "top_k": 0, "top_p": 0.9}


@pytest.mark.parametrize("key", ["temperature", "top_p", "repetition_penalty"])
def test_generation_config_numbers_too_large_for_a_float(key, tiny_copy):
    folder = tiny_copy()
    (folder / "generation_config.json").write_text(f'{{"{key}": 1{"0" * 400}}}')
    with pytest.raises(CheckpointError, match=rf"generation_config.json: {key} has invalid value 1000"):
        open_checkpoint(str(folder))


def test_missing_tokenizer_fails_before_reading_weights(tiny_copy, monkeypatch):
    folder = tiny_copy()
    (folder / "tokenizer.model").unlink()
    monkeypatch.setattr(ckpt_mod, "load_model", lambda *a, **k: pytest.fail("weights read before validation"))
    with pytest.raises(CheckpointError, match="has no tokenizer.model"):
        load_checkpoint(str(folder), torch.float32, "cpu")
    with pytest.raises(CheckpointError, match="tokenizer.model not found"):
        Tokenizer(folder / "tokenizer.model")


def test_the_checkpoint_is_final_when_opened(tiny_7b):
    ckpt = open_checkpoint(str(tiny_7b))
    assert ckpt.tokenizer.eos_token_id == ckpt.eos_token_id == ckpt.eos_token_ids[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ckpt.eos_token_ids = (0,)
    loaded, _, tokenizer = load_checkpoint(str(tiny_7b), torch.float32, "cpu")
    assert tokenizer is loaded.tokenizer and loaded.eos_token_ids == ckpt.eos_token_ids
