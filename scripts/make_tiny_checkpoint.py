"""Write a tiny random Baichuan2-style checkpoint in the hub layout (for tests and quick local runs).

    python scripts/make_tiny_checkpoint.py OUT_DIR [--arch 7b|13b] [--format FMT] [--seed N] [--force]

The layout, key names and dtypes (bfloat16) follow the hub checkpoints, but shapes are tiny and the
weights random. Key names and shapes are spelled out here rather than taken from selfspec.model, so the
loader is tested against an independent description of the hub format.
"""
import argparse
import functools
import io
import json
import math
import sys
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfspec.errors import InputError, one_line_usage_errors, run_main  # noqa: E402
from selfspec.folder import output_folder  # noqa: E402

FORMATS = ("bin", "sharded-bin", "safetensors", "sharded-safetensors")
USER_PIECE, ASSISTANT_PIECE = "<reserved_106>", "<reserved_107>"  # ids 195/196 in the real tokenizer

_EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens with a small model and verifies them with the large one.",
    "Hello, how are you today? I am fine, thank you.",
    "Please write a short poem about the sea and the stars.",
    "The weather is nice, let us go for a walk in the park.",
    "Large language models predict the next token from the previous ones.",
    "What is the capital of France? Paris is the capital of France.",
    "I like to read books about history, science and music.",
    "Numbers like 12345 and 3.14159 appear in text too.",
    "Write a Python function that returns the sum of a list.",
]
_ZH = [
    "今天天气很好，我们去公园散步吧。",
    "你好，请问有什么可以帮助你的？",
    "大语言模型根据前面的词预测下一个词。",
    "请写一首关于大海和星星的短诗。",
    "北京是中国的首都，上海是最大的城市。",
    "我喜欢读历史、科学和音乐方面的书。",
    "谢谢你的帮助！不客气。",
    "推测解码先用小模型起草，再用大模型验证。",
]


@functools.lru_cache(maxsize=None)
def train_tiny_tokenizer(vocab_size: int = 512) -> bytes:
    """Serialized SentencePiece BPE model; ids 0/1/2 are <unk>/<s>/</s> like Baichuan2's tokenizer."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter((_EN + _ZH) * 20),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # any text round-trips, as with the real tokenizer
        user_defined_symbols=[USER_PIECE, ASSISTANT_PIECE],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        # Baichuan2's tokenizer keeps text as is (no dummy prefix, no whitespace folding).
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        character_coverage=0.9995,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def tiny_config(arch: str, vocab_size: int, **overrides) -> dict:
    """config.json like the hub's (7B: RoPE via max_position_embeddings; 13B: ALiBi, model_max_length only)."""
    if arch == "7b":
        sizes = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    elif arch == "13b":
        # 5 heads: not a power of two, like the 40 heads of the real 13B (ALiBi slope interleaving).
        sizes = dict(hidden_size=80, intermediate_size=160, num_attention_heads=5, num_hidden_layers=2)
    else:
        raise ValueError(f"unknown arch {arch!r} (expected 7b or 13b)")
    config = {
        "architectures": ["BaichuanForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_baichuan.BaichuanConfig",
            "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
        },
        "model_type": "baichuan",
        **sizes,
        "model_max_length": 256,
        "rms_norm_eps": 1e-06,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    if arch == "7b":
        config["max_position_embeddings"] = 256
    config.update(overrides)
    return config


def layer_weights(i: int, h: int, inter: int, linear, norm) -> dict[str, torch.Tensor]:
    """Decoder layer i under the hub's key names, from `linear(rows, cols)` and `norm()` (called in this order)."""
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": norm(),
        p + "self_attn.W_pack.weight": linear(3 * h, h),
        p + "self_attn.o_proj.weight": linear(h, h),
        p + "post_attention_layernorm.weight": norm(),
        p + "mlp.gate_proj.weight": linear(inter, h),
        p + "mlp.up_proj.weight": linear(inter, h),
        p + "mlp.down_proj.weight": linear(h, inter),
    }


def tiny_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random bfloat16 weights with hub key names; same config and seed give the same tensors."""
    gen = torch.Generator().manual_seed(seed)
    h, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]

    def normal(rows, cols, std):
        return torch.randn(rows, cols, generator=gen) * std

    def linear(rows, cols):
        # std 1/sqrt(fan_in) keeps activations O(1) through the layers, so logits are not flat.
        return normal(rows, cols, 1 / math.sqrt(cols))

    def norm(scale=1.0):
        return scale * (1 + 0.1 * (2 * torch.rand(h, generator=gen) - 1))

    sd = {"model.embed_tokens.weight": normal(vocab, h, 1.0)}
    for i in range(config["num_hidden_layers"]):
        sd.update(layer_weights(i, h, inter, linear, norm))
    # The head is row-normalized at load (NormHead), so the final norm sets the logit scale: ~4 gives
    # peaky next-token distributions, like a trained model's, instead of near-uniform ones.
    sd["model.norm.weight"] = norm(4.0)
    # Un-normalized rows with norms spread over 16x, so a loader that forgets to normalize is caught.
    row_scale = torch.exp(torch.empty(vocab, 1).uniform_(math.log(0.25), math.log(4.0), generator=gen))
    sd["lm_head.weight"] = linear(vocab, h) * row_scale
    return {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items()}


def _shards(keys: list[str], num_shards: int) -> list[list[str]]:
    per = math.ceil(len(keys) / num_shards)
    return [keys[i : i + per] for i in range(0, len(keys), per)]


def write_weights(out_dir: Path, state_dict: dict[str, torch.Tensor], fmt: str, num_shards: int = 2) -> None:
    """Write weights under the hub file names: one file, or `num_shards` files plus an index json."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    safetensors = fmt.endswith("safetensors")

    def save(tensors, name):
        if safetensors:
            save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
        else:
            torch.save(tensors, out_dir / name)

    if not fmt.startswith("sharded"):
        save(state_dict, "model.safetensors" if safetensors else "pytorch_model.bin")
        return
    groups = _shards(list(state_dict), num_shards)
    weight_map = {}
    for n, keys in enumerate(groups, start=1):
        name = (
            f"model-{n:05d}-of-{len(groups):05d}.safetensors"
            if safetensors
            else f"pytorch_model-{n:05d}-of-{len(groups):05d}.bin"
        )
        save({k: state_dict[k] for k in keys}, name)
        weight_map.update({k: name for k in keys})
    total = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (out_dir / index_name).write_text(json.dumps(index, indent=2) + "\n")


def write_tiny_checkpoint(
    out_dir, arch: str = "7b", fmt: str = "safetensors", seed: int = 0, num_shards: int = 2, force: bool = False,
    **size_overrides,
) -> Path:
    """Write a complete tiny checkpoint folder; `size_overrides` replace config.json fields. An existing
    `out_dir` must be empty, unless `force` (then it is replaced); the folder appears whole or not at all."""
    with output_folder(out_dir, force) as partial:
        _write_tiny_checkpoint(partial, arch, fmt, seed, num_shards, **size_overrides)
    return Path(out_dir)


def _write_tiny_checkpoint(out_dir: Path, arch, fmt, seed, num_shards, **size_overrides) -> None:
    tokenizer_bytes = train_tiny_tokenizer()
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_bytes)
    (out_dir / "tokenizer.model").write_bytes(tokenizer_bytes)

    # vocab_size may be overridden upwards (padded embeddings, as hub vocabularies often are).
    config = tiny_config(arch, **{"vocab_size": sp.vocab_size(), **size_overrides})
    context = config.get("max_position_embeddings", config["model_max_length"])
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {
            "user_token_id": sp.piece_to_id(USER_PIECE),
            "assistant_token_id": sp.piece_to_id(ASSISTANT_PIECE),
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "do_sample": True,
            "temperature": 0.3,
            "top_k": 5,
            "top_p": 0.85,
            "repetition_penalty": 1.05,
            "max_new_tokens": 64,
        },
    )
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": context,
            "sp_model_kwargs": {},
            "tokenizer_class": "BaichuanTokenizer",
        },
    )
    write_weights(out_dir, tiny_state_dict(config, seed), fmt, num_shards)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    parser = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=["7b", "13b"], default="7b")
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty (its files are deleted)")
    args = parser.parse_args()
    if not 0 <= args.seed < 2**64:  # torch's generators take seeds of 64 bits
        raise InputError(f"--seed must be in [0, 2**64), got {args.seed}")
    out = write_tiny_checkpoint(args.out_dir, arch=args.arch, fmt=args.fmt, seed=args.seed, force=args.force)
    print(f"wrote tiny {args.arch} checkpoint ({args.fmt}) to {out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
