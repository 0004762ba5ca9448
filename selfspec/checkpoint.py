"""Baichuan2 hub checkpoints: locate, validate, load weights and tokenizer, build chat prompts.

Only data files are read (json, tokenizer.model, weights); the .py files that hub checkpoints ship
for trust_remote_code are never imported or downloaded.
"""
import json
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from selfspec import InputError
from selfspec.model import Baichuan2, ModelArgs

SAFETENSORS_INDEX, SAFETENSORS_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name": no leading / or ., one slash
HUB_PATTERNS = ["*.json", "*.model", "*.safetensors", "*.bin"]  # never *.py
PROGRESS_MIN_BYTES = 1 << 30  # progress bars only for real checkpoints, so tests stay quiet


class CheckpointError(InputError):
    """A checkpoint folder or hub id that cannot be used (missing, incomplete, corrupted, not Baichuan)."""


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0][:200] if text else "") or type(err).__name__


def resolve_model_path(path_or_id: str) -> Path:
    """Local folder as is; otherwise an "org/name" hub id from the cache, else downloaded (data files only)."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"model path {path} is not a folder")
        return path
    if not HUB_ID.match(path_or_id):
        raise CheckpointError(f"model path {path_or_id} does not exist")
    from huggingface_hub import snapshot_download  # imported late: only hub ids need it

    try:
        return Path(snapshot_download(path_or_id, local_files_only=True))
    except Exception:
        pass  # not cached: try the hub
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:
        raise CheckpointError(
            f"{path_or_id} is not a local folder, not in the Hugging Face cache, and could not be downloaded "
            f"({_one_line(err)}); pass a local checkpoint folder with --repo-id-or-model-path"
        ) from None


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {_one_line(err)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def load_config(folder: Path) -> dict:
    """config.json, checked to describe a Baichuan model."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json (not a Hugging Face checkpoint folder?)")
    config = read_json(path)
    architectures = config.get("architectures") or []
    if config.get("model_type") != "baichuan" and not any("Baichuan" in str(a) for a in architectures):
        found = config.get("model_type") or architectures or "unknown"
        raise CheckpointError(f"{path} describes a {found} model, not Baichuan2")
    return config


def model_args_from_config(config: dict, max_seq_len: int | None = None) -> ModelArgs:
    """7B configs have max_position_embeddings (RoPE); 13B configs only model_max_length (ALiBi)."""

    def positive_int(key):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json: {key} must be a positive integer, got {value!r}")
        return value

    hidden, heads = positive_int("hidden_size"), positive_int("num_attention_heads")
    if hidden % heads:
        raise CheckpointError(f"config.json: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    rope = "max_position_embeddings" in config
    context = positive_int("max_position_embeddings" if rope else "model_max_length")
    if max_seq_len is not None and not 0 < max_seq_len <= context:
        raise InputError(f"max sequence length {max_seq_len} must be between 1 and the model's context {context}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise CheckpointError(f"config.json: rms_norm_eps must be a positive number, got {eps!r}")
    return ModelArgs(
        vocab_size=positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=positive_int("intermediate_size"),
        num_layers=positive_int("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,  # Baichuan2 has no grouped-query attention
        max_seq_len=max_seq_len or context,
        rms_norm_eps=float(eps),
        position_encoding="rope" if rope else "alibi",
        rope_theta=float(config.get("rope_theta", 10000.0)),
    )


def find_weight_files(folder: Path) -> list[Path]:
    """Weight files in load order; safetensors preferred over .bin when a folder has both."""
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (BIN_INDEX, BIN_FILE)):
        if (folder / index_name).is_file():
            weight_map = read_json(folder / index_name).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{folder / index_name} has no weight_map")
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{folder / index_name} lists missing weight files: {', '.join(missing)}")
            return files
        if (folder / single).is_file():
            return [folder / single]
    raise CheckpointError(f"{folder} has no weights ({SAFETENSORS_FILE}, {BIN_FILE} or a sharded index)")


def _read_weight_file(path: Path):
    """Yield (key, tensor) on CPU; torch.load with mmap so a shard is not copied into memory twice."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            # mmap needs the zip format; older pickle-only .bin files load without it.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
            if not isinstance(state, dict):
                raise CheckpointError(f"weights file {path} does not hold a state dict")
            yield from state.items()
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"cannot read weights file {path} (truncated or corrupted?): {_one_line(err)}") from None


def load_model(folder: Path, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None) -> Baichuan2:
    """Build the model on meta, fill it shard by shard (converted as read), normalize lm_head, set up caches."""
    folder = Path(folder)
    args = model_args_from_config(load_config(folder), max_seq_len)
    files = find_weight_files(folder)
    with torch.device("meta"):
        model = Baichuan2(args)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    show_progress = sum(f.stat().st_size for f in files) > PROGRESS_MIN_BYTES
    tensors = {}
    for path in files:
        for key, tensor in tqdm(_read_weight_file(path), desc=path.name, file=sys.stderr, disable=not show_progress):
            if key not in expected:
                raise CheckpointError(f"{path}: unexpected weight {key} for the model described by config.json")
            if tuple(tensor.shape) != expected[key]:
                raise CheckpointError(
                    f"{path}: {key} has shape {tuple(tensor.shape)}, config.json implies {expected[key]}"
                )
            tensors[key] = tensor.to(device=device, dtype=dtype)
    missing = [key for key in expected if key not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{folder}: weights missing from the checkpoint: {', '.join(missing[:3])}{more}")
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    _normalize_rows_(model.lm_head.weight.data)
    model.setup_caches(args.max_seq_len, dtype, device)
    model.eval().requires_grad_(False)
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"model tensors left on meta after loading: {on_meta}")
    return model


@torch.no_grad()
def _normalize_rows_(weight: torch.Tensor, chunk: int = 16384) -> None:
    """NormHead: checkpoints store W, the model uses W / ||W_row||. In chunks to bound the float32 copy."""
    for start in range(0, weight.shape[0], chunk):
        rows = weight[start : start + chunk]
        rows.copy_(F.normalize(rows.float(), dim=1).to(weight.dtype))


class Tokenizer:
    """SentencePiece tokenizer.model; encode adds no BOS/EOS, as Baichuan2's tokenizer."""

    def __init__(self, model_file: Path):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise CheckpointError(f"tokenizer file {model_file} not found")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"tokenizer file {model_file} is not a SentencePiece model: {_one_line(err)}") from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def build_chat_ids(
    tokenizer: Tokenizer,
    messages_or_prompt,
    *,
    system: str = "",
    user_token_id: int,
    assistant_token_id: int,
    max_input_tokens: int,
) -> tuple[list[int], bool]:
    """Token ids as Baichuan2's build_chat_input; returns (ids, truncated).

    `messages_or_prompt` is one user prompt or a list of {"role": "system"|"user"|"assistant",
    "content": str}. Whole rounds (a user turn and its replies) are kept from the newest while they
    fit, the newest one always; the result is then cut from the left to max_input_tokens.
    """
    if max_input_tokens <= 0:
        raise InputError(f"no room for the prompt: max input tokens is {max_input_tokens}")
    if isinstance(messages_or_prompt, str):
        messages = [{"role": "user", "content": messages_or_prompt}]
    else:
        messages = list(messages_or_prompt)
    if messages and messages[0].get("role") == "system":
        system = messages.pop(0)["content"]
    rounds = []
    for message in messages:
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InputError(f"chat message role must be user or assistant (system only first), got {role!r}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"chat message content must be a string, got {message.get('content')!r}")
        if role == "user" or not rounds:
            rounds.append([])
        marker = user_token_id if role == "user" else assistant_token_id
        rounds[-1] += [marker] + tokenizer.encode(message["content"])
    system_ids = tokenizer.encode(system) if system else []
    # Like the reference, the final assistant token is not budgeted here: a history that fills the
    # budget exactly loses its first token to the left cut below (kept so prompts match the reference).
    max_history = max_input_tokens - len(system_ids)
    history, kept = [], 0
    for round_ids in reversed(rounds):
        if history and len(history) + len(round_ids) > max_history:
            break
        history, kept = round_ids + history, kept + 1
        if len(history) >= max_history:
            break
    ids = system_ids + history
    if not messages or messages[-1]["role"] != "assistant":
        ids.append(assistant_token_id)
    truncated = kept < len(rounds) or len(ids) > max_input_tokens
    return ids[-max_input_tokens:], truncated


@dataclass
class Checkpoint:
    """A validated checkpoint folder; sampling defaults are Baichuan2-Chat's generation_config.json."""

    folder: Path
    config: dict
    args: ModelArgs
    weight_files: list[Path]
    user_token_id: int = 195
    assistant_token_id: int = 196
    eos_token_id: int = 2
    do_sample: bool = True
    temperature: float = 0.3
    top_k: int = 5
    top_p: float = 0.85
    repetition_penalty: float = 1.05
    max_new_tokens: int = 2048

    @property
    def context_length(self) -> int:
        return self.config.get("max_position_embeddings") or self.config["model_max_length"]


GENERATION_FIELDS = {
    "user_token_id": int, "assistant_token_id": int, "eos_token_id": int, "do_sample": bool,
    "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "max_new_tokens": int,
}


def _is_kind(value, kind) -> bool:
    if kind is bool or isinstance(value, bool):  # bool is an int subclass: keep flags and numbers apart
        return kind is bool and isinstance(value, bool)
    return isinstance(value, int) or (kind is float and isinstance(value, float))


def open_checkpoint(path_or_id: str, max_seq_len: int | None = None) -> Checkpoint:
    """Cheap validation (config, generation config, weight files, tokenizer file) without reading weights."""
    folder = resolve_model_path(str(path_or_id))
    config = load_config(folder)
    args = model_args_from_config(config, max_seq_len)
    weight_files = find_weight_files(folder)
    if not (folder / "tokenizer.model").is_file():
        raise CheckpointError(f"{folder} has no tokenizer.model")
    values = {"eos_token_id": config["eos_token_id"]} if _is_kind(config.get("eos_token_id"), int) else {}
    generation_path = folder / "generation_config.json"
    if generation_path.is_file():
        generation = read_json(generation_path)
        if isinstance(generation.get("eos_token_id"), list) and generation["eos_token_id"]:
            generation["eos_token_id"] = generation["eos_token_id"][0]  # HF allows several; Baichuan2 has one
        for key, kind in GENERATION_FIELDS.items():
            if key in generation:
                if not _is_kind(generation[key], kind):
                    raise CheckpointError(f"{generation_path}: {key} has invalid value {generation[key]!r}")
                values[key] = kind(generation[key])
    ckpt = Checkpoint(folder=folder, config=config, args=args, weight_files=weight_files, **values)
    for key in ("user_token_id", "assistant_token_id", "eos_token_id"):
        if not 0 <= getattr(ckpt, key) < args.vocab_size:
            raise CheckpointError(f"{folder}: {key} {getattr(ckpt, key)} is outside the vocabulary ({args.vocab_size})")
    return ckpt


def load_checkpoint(
    path_or_id: str, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None
) -> tuple[Checkpoint, Baichuan2, Tokenizer]:
    """Resolve -> validate -> tokenizer -> model; everything cheap fails before weights are read."""
    ckpt = open_checkpoint(path_or_id, max_seq_len)
    tokenizer = Tokenizer(ckpt.folder / "tokenizer.model")
    if tokenizer.vocab_size > ckpt.args.vocab_size:
        raise CheckpointError(
            f"{ckpt.folder}: tokenizer.model has {tokenizer.vocab_size} tokens, more than vocab_size "
            f"{ckpt.args.vocab_size} in config.json"
        )
    tokenizer.eos_token_id = ckpt.eos_token_id
    model = load_model(ckpt.folder, dtype, device, max_seq_len)
    return ckpt, model, tokenizer
