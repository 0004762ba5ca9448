"""selfspec.config: config.json -> ModelArgs, refused configs, generation_config.json, the sampling rules."""
import json

import pytest
from helpers import read_config, write_config

from selfspec.checkpoint import open_checkpoint
from selfspec.config import model_args_from_config, sampling_errors
from selfspec.errors import CheckpointError, InputError


CONFIG_7B = {
    "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "max_position_embeddings": 4096, "model_max_length": 4096, "rms_norm_eps": 1e-06, "vocab_size": 125696,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}


CONFIG_13B = {
    **{k: v for k, v in CONFIG_7B.items() if k != "max_position_embeddings"},
    "hidden_size": 5120, "intermediate_size": 13696, "num_attention_heads": 40, "num_hidden_layers": 40,
}


def test_model_args_7b_rope():
    args = model_args_from_config(CONFIG_7B)
    assert args.position_encoding == "rope" and args.max_seq_len == 4096
    assert (args.hidden_size, args.intermediate_size, args.num_layers) == (4096, 11008, 32)
    assert args.num_heads == args.num_kv_heads == 32 and args.head_dim == 128
    assert (args.vocab_size, args.rms_norm_eps, args.rope_theta) == (125696, 1e-6, 10000.0)


def test_model_args_13b_alibi():
    args = model_args_from_config(CONFIG_13B)
    assert args.position_encoding == "alibi" and args.max_seq_len == 4096
    assert args.num_heads == args.num_kv_heads == 40 and args.head_dim == 128 and args.num_layers == 40


def test_model_args_max_seq_len():
    assert model_args_from_config(CONFIG_13B, max_seq_len=1024).max_seq_len == 1024
    for bad in (0, 4097):
        with pytest.raises(InputError, match="context 4096"):
            model_args_from_config(CONFIG_7B, max_seq_len=bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": None}, "hidden_size must be a positive integer"),
        ({"vocab_size": "125696"}, "vocab_size must be a positive integer"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
        ({"num_attention_heads": 30}, "not divisible"),
        ({"model_max_length": None}, "model_max_length must be a positive integer"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps"),
    ],
)
def test_model_args_invalid(change, message):
    config = {**CONFIG_13B, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(CheckpointError, match=message):
        model_args_from_config(config)


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        open_checkpoint(str(tmp_path))


def test_bad_json(tiny_copy):
    folder = tiny_copy()
    (folder / "config.json").write_text('{"model_type": "baichuan",')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        open_checkpoint(str(folder))


def test_bad_generation_config(tiny_copy):
    folder = tiny_copy()
    (folder / "generation_config.json").write_text(json.dumps({"top_k": "five"}))
    with pytest.raises(CheckpointError, match="generation_config.json: top_k"):
        open_checkpoint(str(folder))
    (folder / "generation_config.json").write_text(json.dumps({"temperature": True}))  # a flag is not a number
    with pytest.raises(CheckpointError, match="generation_config.json: temperature has invalid value True"):
        open_checkpoint(str(folder))
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": "yes", "max_new_tokens": None}))
    assert open_checkpoint(str(folder)).temperature is None  # fields the engine does not use are left alone


def test_not_baichuan(tiny_copy):
    folder = tiny_copy()
    write_config(folder, {**read_config(folder), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(CheckpointError, match=r"config.json describes a 'gpt2' model, not Baichuan2 or Llama"):
        open_checkpoint(str(folder))


def test_one_rule_set_checks_every_sampling_setting():
    assert sampling_errors(temperature=0.3, top_k=5, top_p=0.85, repetition_penalty=1.05) == []
    assert sampling_errors(temperature=0.0, top_k=-1, top_p=1.5, repetition_penalty=float("nan")) == [
        "temperature must be positive and finite, got 0.0", "top_k must be >= 0 (0: off), got -1",
        "top_p must be in (0, 1] (1: off), got 1.5", "repetition_penalty must be in [0.01, 100], got nan",
    ]
