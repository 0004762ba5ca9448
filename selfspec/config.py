"""config.json and generation_config.json -> the model's shape (ModelArgs) and the generation defaults.

Two families share one model class (selfspec.model): Baichuan2 (fused W_pack, NormHead, user/assistant marker
tokens) and Llama (q/k/v apart, grouped-query attention, plain or tied lm_head). Every value is checked:
a checkpoint folder is untrusted input.
"""
import math
from pathlib import Path

from selfspec.errors import CheckpointError, InputError, short_repr
from selfspec.folder import checkpoint_file, read_json
from selfspec.model import ModelArgs
from selfspec.sampling import REPETITION_PENALTY_RANGE

MAX_SIZES = {  # config.json fields; the largest public models stay well inside (hidden 16384, 126 layers)
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024,
    "num_attention_heads": 1024, "num_key_value_heads": 1024, "max_position_embeddings": 1 << 22,
    "model_max_length": 1 << 22,
}


def checkpoint_arch(config: dict) -> str | None:
    """"baichuan", "llama", or None for anything else."""
    architectures = config.get("architectures") or []
    architectures = [str(a) for a in (architectures if isinstance(architectures, list) else [architectures])]
    if config.get("model_type") == "baichuan" or any("Baichuan" in a for a in architectures):
        return "baichuan"
    if config.get("model_type") == "llama" or "LlamaForCausalLM" in architectures:
        return "llama"
    return None


def load_config(folder: Path) -> dict:
    """config.json, checked to describe a Baichuan or Llama model."""
    path = checkpoint_file(folder, "config.json", required=False)
    if path is None:
        raise CheckpointError(f"{folder} has no config.json (not a Hugging Face checkpoint folder?)")
    config = read_json(path)
    if checkpoint_arch(config) is None:
        found = config.get("model_type") or config.get("architectures") or "unknown"
        raise CheckpointError(f"{path} describes a {short_repr(found)} model, not Baichuan2 or Llama")
    return config


def model_args_from_config(config: dict, max_seq_len: int | None = None) -> ModelArgs:
    """Baichuan2-7B configs have max_position_embeddings (RoPE), 13B ones only model_max_length (ALiBi);
    Llama configs always use RoPE and may group query heads (num_key_value_heads)."""

    def positive_int(key):
        value = _typed(config.get(key), int)
        if value is None or value <= 0:
            raise CheckpointError(f"config.json: {key} must be a positive integer, got {short_repr(config.get(key))}")
        if value > MAX_SIZES[key]:
            raise CheckpointError(f"config.json: {key} {value} is beyond any real model (at most {MAX_SIZES[key]})")
        return value

    llama = checkpoint_arch(config) == "llama"
    hidden, heads = positive_int("hidden_size"), positive_int("num_attention_heads")
    if hidden % heads:
        raise CheckpointError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    kv_heads = positive_int("num_key_value_heads") if llama and "num_key_value_heads" in config else heads
    if heads % kv_heads:
        raise CheckpointError(
            f"config.json: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    # transformers 5 writes rope_parameters: {"rope_theta": ...}; older configs a top-level rope_theta.
    rope_parameters = config.get("rope_parameters") or {}
    if not isinstance(rope_parameters, dict):
        raise CheckpointError(f"config.json: rope_parameters must be an object, got {short_repr(rope_parameters)}")
    if llama:
        _check_llama_features(config, hidden // heads)
    rope = llama or "max_position_embeddings" in config
    if rope and (hidden // heads) % 2:
        raise CheckpointError(f"config.json: RoPE needs an even head size, hidden_size / num_attention_heads is {hidden // heads}")
    context = positive_int("max_position_embeddings" if rope else "model_max_length")
    if max_seq_len is not None and not 0 < max_seq_len <= context:
        raise InputError(f"max sequence length {max_seq_len} must be between 1 and the model's context {context}")
    eps = positive_number("rms_norm_eps", config.get("rms_norm_eps", 1e-6))
    theta = positive_number("rope_theta", rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0)))
    if theta < 1:  # no model uses one; far below 1 the RoPE frequencies overflow to NaN
        raise CheckpointError(f"config.json: rope_theta must be at least 1, got {theta}")
    return ModelArgs(
        vocab_size=positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=positive_int("intermediate_size"),
        num_layers=positive_int("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        max_seq_len=max_seq_len or context,
        rms_norm_eps=eps,
        position_encoding="rope" if rope else "alibi",
        rope_theta=theta,
    )


def positive_number(key: str, value) -> float:
    """A config.json value that must be a positive finite number, as a float."""
    number = _typed(value, float)
    if number is None or not 0 < number < math.inf:
        raise CheckpointError(f"config.json: {key} must be a positive number, got {short_repr(value)}")
    return number


def _check_llama_features(config: dict, head_dim: int) -> None:
    """Refuse Llama variants the model does not implement, rather than compute something else."""
    if config.get("head_dim") not in (None, head_dim):
        raise CheckpointError(
            f"config.json: head_dim {short_repr(config['head_dim'])} != hidden_size / num_attention_heads ({head_dim})"
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise CheckpointError(f"config.json: {key} is not supported")
    if not isinstance(config.get("tie_word_embeddings", True), bool):  # "false" is a true string
        raise CheckpointError(f"config.json: tie_word_embeddings must be true or false, got "
                              f"{short_repr(config['tie_word_embeddings'])}")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {short_repr(config['hidden_act'])} is not supported (only silu)")
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
    if kind != "default":
        raise CheckpointError(f"config.json: RoPE scaling {short_repr(kind)} is not supported")


def is_tied(config: dict) -> bool:
    """Llama's default ties lm_head to the embeddings; Baichuan2's head is always its own (NormHead)."""
    return checkpoint_arch(config) == "llama" and bool(config.get("tie_word_embeddings", True))

# generation_config.json fields the engine uses; the others (do_sample, max_new_tokens, ...) are left alone.
GENERATION_FIELDS = {
    "user_token_id": int, "assistant_token_id": int,
    "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float,
}


def _typed(value, kind):
    """`value` as `kind`: an int, or for a float an int or a float; never a bool (an int subclass, but a flag).
    None if it is none of these, or an int too large for a float."""
    if isinstance(value, bool) or not (isinstance(value, int) or (kind is float and isinstance(value, float))):
        return None
    try:
        return kind(value)
    except OverflowError:
        return None


def _eos_ids(value) -> tuple[int, ...] | None:
    """eos_token_id as a tuple (Hugging Face allows one id or a list); None if malformed or absent."""
    values = value if isinstance(value, list) else [value]
    if values and all(_typed(v, int) is not None for v in values):
        return tuple(values)
    return None


def read_generation_config(folder: Path, config: dict) -> dict:
    """The Checkpoint fields that generation_config.json declares, typed and checked ("eos_token_ids" from
    config.json where it is silent)."""
    values = {"eos_token_ids": _eos_ids(config.get("eos_token_id")) or ()}
    generation_path = checkpoint_file(folder, "generation_config.json", required=False)
    if generation_path is None:
        return values
    generation = read_json(generation_path)
    if generation.get("eos_token_id") is not None:
        values["eos_token_ids"] = _eos_ids(generation["eos_token_id"])
        if not values["eos_token_ids"]:
            raise CheckpointError(
                f"{generation_path}: eos_token_id has invalid value {short_repr(generation['eos_token_id'])}"
            )
    for key, kind in GENERATION_FIELDS.items():
        if key in generation:
            values[key] = _typed(generation[key], kind)
            if values[key] is None:
                raise CheckpointError(f"{generation_path}: {key} has invalid value {short_repr(generation[key])}")
    return values


SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # top_k 0 and top_p 1: off


SAMPLING_RULES = {  # name -> (test, what it must be); the one check of these settings, flags and checkpoints alike
    "temperature": (lambda v: 0 < v < math.inf, "positive and finite"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: off)"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (1: off)"),
    "repetition_penalty": (lambda v: REPETITION_PENALTY_RANGE[0] <= v <= REPETITION_PENALTY_RANGE[1],
                           "in [{}, {:g}]".format(*REPETITION_PENALTY_RANGE)),
}


def sampling_errors(**settings) -> list[str]:
    """'NAME must be ..., got VALUE' for each setting out of range."""
    return [f"{name} must be {what}, got {settings[name]}" for name, (ok, what) in SAMPLING_RULES.items()
            if name in settings and not ok(settings[name])]
