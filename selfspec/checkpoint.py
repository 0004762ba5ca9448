"""Hub checkpoints: locate, validate, load weights and tokenizer, build chat prompts.

Two families share one model class (selfspec.model): Baichuan2 (fused W_pack, NormHead, SentencePiece,
user/assistant marker tokens) and Llama (q/k/v fused into W_pack at load, grouped-query attention, plain
or tied lm_head, tokenizer.json, Jinja chat template). Only data files are read (json, tokenizer files,
weights); the .py files that hub checkpoints ship for trust_remote_code are never imported or downloaded.
"""
import contextlib
import json
import math
import os
import pickle
import re
import signal
import stat
import sys
import threading
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from selfspec import InputError
from selfspec.model import ModelArgs, Transformer as Baichuan2  # the one model class of both families
from selfspec.draft import draft_bytes
from selfspec.quantize import rows_per_slice

SAFETENSORS_INDEX, SAFETENSORS_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name": no leading / or ., one slash
HUB_PATTERNS = ["*.json", "*.jinja", "*.model", "*.safetensors", "*.bin"]  # never *.py
PROGRESS_MIN_BYTES = 1 << 30  # progress bars only for real checkpoints, so tests stay quiet
STAGING_BYTES = 64 << 20  # each of the two pinned buffers that weights pass through on their way to a GPU
# Bounds on what a checkpoint folder may ask for, far above any real checkpoint: beyond them the folder is
# refused before anything is allocated (folders are untrusted input).
MAX_JSON_BYTES, MAX_JSON_DEPTH = 64 << 20, 32  # config, generation config, index, tokenizer config
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.model, tokenizer.json (the largest public ones: about 35 MB)
# A chat template is a program from the checkpoint: its source, time, memory and output are bounded.
MAX_TEMPLATE_CHARS, TEMPLATE_SECONDS = 1 << 20, 1.0
TEMPLATE_OUTPUT_CHARS, TEMPLATE_MEMORY_BYTES = 1 << 20, 256 << 20  # plus 8 chars, 64 bytes per conversation char
MAX_TEMPLATE_INT_BITS = 1 << 16  # for * and ** on integers, which run in C without a chance to stop them
MAX_SIZES = {  # config.json fields; the largest public models stay well inside (hidden 16384, 126 layers)
    "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1024,
    "num_attention_heads": 1024, "num_key_value_heads": 1024, "max_position_embeddings": 1 << 22,
    "model_max_length": 1 << 22,
}


class CheckpointError(InputError):
    """A checkpoint folder or hub id that cannot be used (missing, incomplete, corrupted, unsupported)."""


def _one_line(err: Exception) -> str:
    """The first line of an error message; its first sentence if the line is long."""
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > 200:
        line = line.split(". ")[0][:200]
    return line or type(err).__name__


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


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where the files of a checkpoint folder may lie once symlinks are followed: the folder, and for a
    snapshot of the Hugging Face cache (models--org--name/snapshots/REV, whose files link to ../../blobs)
    that cache entry's blobs."""
    root = Path(folder).resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root, root.parent.parent / "blobs"
    return (root,)


def checkpoint_file(folder: Path, name: str, required: bool = True) -> Path | None:
    """folder/name, checked to be a regular file inside the folder once symlinks are followed (a checkpoint
    folder is untrusted: `name` may come from its index, links may point anywhere, a fifo would block the
    reader). A missing file is None, or a CheckpointError if `required`."""
    path = Path(folder) / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte in the name, ...
        raise CheckpointError(f"{path} cannot be opened: {_one_line(err)}") from None
    if not any(real.is_relative_to(root) for root in _allowed_roots(folder)):
        raise CheckpointError(f"{path} lies outside the checkpoint folder {folder}: only the folder's own files are read")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        if required:
            raise CheckpointError(f"{path} not found") from None
        return None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file")
    return path


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file of at most `max_bytes`, nested at most MAX_JSON_DEPTH deep."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
        if len(raw) > max_bytes:
            raise CheckpointError(f"{path} is larger than {max_bytes >> 20} MiB")
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {_one_line(err)}") from None
    except RecursionError:
        data = None  # nested deeper than the parser can follow: refused below
    if not isinstance(data, dict) and data is not None:
        raise CheckpointError(f"{path} is not a JSON object")
    if data is None or _json_depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def _json_depth(data) -> int:
    """How many lists and objects nest in each other, counted without recursion up to MAX_JSON_DEPTH + 1."""
    depth, level = 0, [data]
    while depth <= MAX_JSON_DEPTH:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]
    return depth


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
        raise CheckpointError(f"{path} describes a {_short_repr(found)} model, not Baichuan2 or Llama")
    return config


def model_args_from_config(config: dict, max_seq_len: int | None = None) -> ModelArgs:
    """Baichuan2-7B configs have max_position_embeddings (RoPE), 13B ones only model_max_length (ALiBi);
    Llama configs always use RoPE and may group query heads (num_key_value_heads)."""

    def positive_int(key):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json: {key} must be a positive integer, got {_short_repr(value)}")
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
    if llama:
        _check_llama_features(config, hidden // heads)
    rope = llama or "max_position_embeddings" in config
    if rope and (hidden // heads) % 2:
        raise CheckpointError(f"config.json: RoPE needs an even head size, hidden_size / num_attention_heads is {hidden // heads}")
    context = positive_int("max_position_embeddings" if rope else "model_max_length")
    if max_seq_len is not None and not 0 < max_seq_len <= context:
        raise InputError(f"max sequence length {max_seq_len} must be between 1 and the model's context {context}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise CheckpointError(f"config.json: rms_norm_eps must be a positive number, got {_short_repr(eps)}")
    # transformers 5 writes rope_parameters: {"rope_theta": ...}; older configs a top-level rope_theta.
    rope_parameters = config.get("rope_parameters") or {}
    if not isinstance(rope_parameters, dict):
        raise CheckpointError(f"config.json: rope_parameters must be an object, got {_short_repr(rope_parameters)}")
    theta = rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise CheckpointError(f"config.json: rope_theta must be a positive number, got {_short_repr(theta)}")
    return ModelArgs(
        vocab_size=positive_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=positive_int("intermediate_size"),
        num_layers=positive_int("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        max_seq_len=max_seq_len or context,
        rms_norm_eps=float(eps),
        position_encoding="rope" if rope else "alibi",
        rope_theta=float(theta),
    )


def _short_repr(value, limit: int = 60) -> str:
    """repr for messages, cut: config values may be anything (long strings, deep lists)."""
    try:
        text = value if isinstance(value, str) and value.isprintable() else repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def _check_llama_features(config: dict, head_dim: int) -> None:
    """Refuse Llama variants the model does not implement, rather than compute something else."""
    if config.get("head_dim") not in (None, head_dim):
        raise CheckpointError(
            f"config.json: head_dim {config['head_dim']} != hidden_size / num_attention_heads ({head_dim})"
        )
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise CheckpointError(f"config.json: {key} is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {_short_repr(config['hidden_act'])} is not supported (only silu)")
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
    if kind != "default":
        raise CheckpointError(f"config.json: RoPE scaling {_short_repr(kind)} is not supported")


def is_tied(config: dict) -> bool:
    """Llama's default ties lm_head to the embeddings; Baichuan2's head is always its own (NormHead)."""
    return checkpoint_arch(config) == "llama" and bool(config.get("tie_word_embeddings", True))


def checkpoint_weight_shapes(config: dict, args: ModelArgs) -> dict[str, tuple]:
    """Key -> shape of every tensor the checkpoint must hold, in its own naming (Llama: q/k/v apart)."""
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in Baichuan2(args).state_dict().items()}
    if checkpoint_arch(config) == "llama":
        q_rows, kv_rows = args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        for i in range(args.num_layers):
            p = f"model.layers.{i}.self_attn."
            del shapes[p + "W_pack.weight"]
            for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                shapes[p + f"{name}_proj.weight"] = (rows, args.hidden_size)
        if is_tied(config):
            del shapes["lm_head.weight"]
    return shapes


def _ignored(config: dict, key: str) -> bool:
    """Llama checkpoints may carry RoPE tables (recomputed here) or a copy of a tied head."""
    if checkpoint_arch(config) != "llama":
        return False
    return key.endswith("rotary_emb.inv_freq") or (key == "lm_head.weight" and is_tied(config))


def find_weight_files(folder: Path) -> list[Path]:
    """Weight files in load order; safetensors preferred over .bin when a folder has both."""
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (BIN_INDEX, BIN_FILE)):
        index = checkpoint_file(folder, index_name, required=False)
        if index is not None:
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index} has no weight_map from tensor names to file names")
            names = list(dict.fromkeys(weight_map.values()))
            files = [checkpoint_file(folder, name, required=False) for name in names]
            missing = [_short_repr(name) for name, f in zip(names, files) if f is None]
            if missing:
                more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
                raise CheckpointError(f"{index} lists missing weight files: {', '.join(missing[:3])}{more}")
            return files
        path = checkpoint_file(folder, single, required=False)
        if path is not None:
            return [path]
    raise CheckpointError(f"{folder} has no weights ({SAFETENSORS_FILE}, {BIN_FILE} or a sharded index)")


def _read_weight_file(path: Path):
    """Yield (key, tensor) on CPU; torch.load with mmap so a shard is not copied into memory twice."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            # mmap needs the zip format; older pickle-only .bin files load without it. torch's warnings
            # about old formats are dropped: the error below says what to do.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
                except pickle.UnpicklingError:
                    raise
                except Exception as err:  # damaged bytes lead the unpickler anywhere: IndexError, KeyError, ...
                    raise CheckpointError(
                        f"cannot read weights file {path}: not a PyTorch checkpoint, or a damaged one "
                        f"({type(err).__name__}: {_one_line(err)})"
                    ) from None
            if not isinstance(state, dict):
                raise CheckpointError(f"weights file {path} does not hold a state dict")
            yield from state.items()
    except pickle.UnpicklingError:  # torch's own message suggests weights_only=False, which we never do
        raise CheckpointError(
            f"cannot read weights file {path}: corrupted, or a pickle that the safe loader refuses (an old pickle "
            "format, or objects other than tensors); save the weights again as safetensors"
        ) from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as err:
        raise CheckpointError(f"cannot read weights file {path} (truncated or corrupted?): {_one_line(err)}") from None


def device_copier(device: torch.device | str, dtype: torch.dtype, slice_bytes: int = STAGING_BYTES):
    """A function: tensor -> the tensor in `dtype` on `device`. For a CUDA device, CPU tensors (often pages
    of a memory-mapped file) go through two pinned buffers in slices, one filled while the other's copy
    to the GPU runs, and are converted to `dtype` on the GPU: `tensor.to(device, dtype)` converts on the CPU
    and copies from pageable memory: 3.9-5.4 s against 0.6 s for a 7B checkpoint on an H100 host."""
    device = torch.device(device)
    if device.type != "cuda":
        return lambda tensor: tensor.to(device=device, dtype=dtype)
    buffers = [torch.empty(slice_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied = [torch.cuda.Event(), torch.cuda.Event()]  # recorded after each buffer's last copy was queued
    stream = torch.cuda.current_stream(device)

    def copy(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type != "cpu":
            return tensor.to(device=device, dtype=dtype)
        out = torch.empty(tensor.shape, dtype=tensor.dtype, device=device)
        src, dst = tensor.contiguous().reshape(-1).view(torch.uint8), out.reshape(-1).view(torch.uint8)
        for i, start in enumerate(range(0, src.numel(), slice_bytes)):
            end = min(start + slice_bytes, src.numel())
            buffer = buffers[i % 2][: end - start]
            copied[i % 2].synchronize()  # the GPU has read what this buffer held before
            buffer.copy_(src[start:end])
            dst[start:end].copy_(buffer, non_blocking=True)
            copied[i % 2].record(stream)
        return out.to(dtype)

    return copy


def _counted(items, bar):
    """(key, tensor) items as they are, each tensor's bytes counted on the progress bar (anything else is
    passed on uncounted, for the checks after this to refuse)."""
    for key, tensor in items:
        if isinstance(tensor, torch.Tensor):
            bar.update(tensor.numel() * tensor.element_size())
        yield key, tensor


def load_model(folder: Path, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None) -> Baichuan2:
    """Read the weights shard by shard (converted as read, shapes checked), then build the model."""
    folder = Path(folder)
    config = load_config(folder)
    args = model_args_from_config(config, max_seq_len)
    files = find_weight_files(folder)
    expected = checkpoint_weight_shapes(config, args)
    total_bytes = sum(f.stat().st_size for f in files)
    tensors, to_device = {}, device_copier(device, dtype)
    with tqdm(total=total_bytes, desc="loading weights", unit="B", unit_scale=True, unit_divisor=1024,
              file=sys.stderr, disable=total_bytes <= PROGRESS_MIN_BYTES) as bar:
        for path in files:
            end = bar.n + path.stat().st_size
            tensors.update(_checked_tensors(path, config, expected, _counted(_read_weight_file(path), bar), to_device))
            bar.update(end - bar.n)  # the file's headers: the bar ends at its size
    _check_complete(folder, expected, tensors)
    return _assemble(config, args, tensors, dtype, device)


def model_from_state_dict(config: dict, state_dict: dict, dtype: torch.dtype, device: torch.device | str,
                          max_seq_len: int | None = None) -> Baichuan2:
    """The model for an in-memory checkpoint (hub key names, e.g. scripts/make_proxy.py's output).
    Tensors already in `dtype` on `device` are used without a copy (Baichuan2's head is normalized in a copy)."""
    if checkpoint_arch(config) is None:
        raise CheckpointError(f"config describes a {config.get('model_type')} model, not Baichuan2 or Llama")
    args = model_args_from_config(config, max_seq_len)
    expected = checkpoint_weight_shapes(config, args)
    tensors = _checked_tensors("state dict", config, expected, state_dict.items(), device_copier(device, dtype))
    _check_complete("state dict", expected, tensors)
    if checkpoint_arch(config) == "baichuan":  # normalized in place below: leave the caller's tensor alone
        tensors["lm_head.weight"] = tensors["lm_head.weight"].clone()
    return _assemble(config, args, tensors, dtype, device)


def _wanted(source, config: dict, expected: dict, key, shape: tuple) -> bool:
    """Whether the model takes the checkpoint's tensor `key` (False: ignored); refuses unknown keys and
    shapes other than config.json implies."""
    if _ignored(config, key):
        return False
    if key not in expected:
        raise CheckpointError(f"{source}: unexpected weight {_short_repr(key)} for the model described by config.json")
    if shape != expected[key]:
        raise CheckpointError(f"{source}: {key} has shape {shape}, config.json implies {expected[key]}")
    return True


def check_weights_match_config(config: dict, args: ModelArgs, files: list[Path]) -> None:
    """Compare config.json with the tensors the safetensors headers describe, before any weight is read (.bin
    files describe theirs only once loaded: load_model checks each tensor as it comes)."""
    if not all(path.suffix == ".safetensors" for path in files):
        return
    shapes = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"cannot read weights file {path} (truncated or corrupted?): {_one_line(err)}") from None
    embed = shapes.get("model.embed_tokens.weight")
    if embed is not None and embed != (args.vocab_size, args.hidden_size):
        raise CheckpointError(f"config.json: vocab_size {args.vocab_size} and hidden_size {args.hidden_size} do not "
                              f"match model.embed_tokens.weight of shape {embed} in the weights")
    layers = {key.split(".")[2] for key in shapes if key.startswith("model.layers.") and key.count(".") > 2}
    if len(layers) != args.num_layers:
        raise CheckpointError(f"config.json: num_hidden_layers {args.num_layers}, but the weights hold {len(layers)} layers")
    source = files[0].parent
    expected = checkpoint_weight_shapes(config, args)
    for key, shape in shapes.items():
        _wanted(source, config, expected, key, shape)
    _check_complete(source, expected, shapes)


def _checked_tensors(source, config: dict, expected: dict, items, to_device) -> dict:
    """(key, tensor) pairs -> {key: to_device(tensor)}, refusing unknown keys, wrong shapes and values that
    are not finite in the model's dtype."""
    tensors = {}
    for key, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: {_short_repr(key)} is a {type(tensor).__name__}, not a tensor")
        if not _wanted(source, config, expected, key, tuple(tensor.shape)):
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{source}: {key} holds {tensor.dtype} values, not floating-point weights")
        tensors[key] = to_device(tensor)
        if not _all_finite(tensors[key]):  # corrupted, or out of the range of the model's dtype
            dtype = str(tensors[key].dtype).removeprefix("torch.")
            raise CheckpointError(f"{source}: {key} has NaN or infinite values in {dtype}")
    return tensors


def _all_finite(tensor: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """In slices, so that the check's boolean scratch stays small next to an embedding matrix."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[i : i + chunk]).all()) for i in range(0, flat.numel(), chunk))


def _check_complete(source, expected: dict, tensors: dict) -> None:
    missing = [key for key in expected if key not in tensors]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CheckpointError(f"{source}: weights missing from the checkpoint: {', '.join(missing[:3])}{more}")


def _assemble(config: dict, args: ModelArgs, tensors: dict, dtype, device) -> Baichuan2:
    """Checkpoint tensors -> ready model: fuse Llama's q/k/v, tie or normalize the head, set up caches."""
    if checkpoint_arch(config) == "llama":
        for i in range(args.num_layers):  # one layer at a time: the concatenation costs one layer extra
            p = f"model.layers.{i}.self_attn."
            qkv = [tensors.pop(p + f"{name}_proj.weight") for name in "qkv"]
            tensors[p + "W_pack.weight"] = torch.cat(qkv)
        if is_tied(config):
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # shared, not copied
    with torch.device("meta"):
        model = Baichuan2(args)
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    if checkpoint_arch(config) == "baichuan":
        _normalize_rows_(model.lm_head.weight.data)  # NormHead; Llama's head is a plain linear layer
    try:
        model.setup_caches(args.max_seq_len, dtype, device)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        raise CheckpointError(
            f"cannot allocate the KV cache for a context of {args.max_seq_len} tokens on {device}: {_one_line(err)}"
        ) from None
    model.eval().requires_grad_(False)
    on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise RuntimeError(f"model tensors left on meta after loading: {on_meta}")
    return model


@torch.no_grad()
def _normalize_rows_(weight: torch.Tensor) -> None:
    """NormHead: checkpoints store W, the model uses W / ||W_row||. In slices to bound the float32 copy."""
    chunk = rows_per_slice(weight, 16384)
    for start in range(0, weight.shape[0], chunk):
        rows = weight[start : start + chunk]
        rows.copy_(F.normalize(rows.float(), dim=1).to(weight.dtype))


def _check_tokenizer_size(path: Path) -> None:
    """The tokenizer libraries read a whole file into memory: refuse one far larger than any real tokenizer."""
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"tokenizer file {path} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")


class Tokenizer:
    """SentencePiece tokenizer.model (Baichuan2); encode adds no BOS/EOS, as Baichuan2's tokenizer."""

    def __init__(self, model_file: Path):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise CheckpointError(f"tokenizer file {model_file} not found")
        _check_tokenizer_size(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"tokenizer file {model_file} is not a SentencePiece model: {_one_line(err)}") from None
        self.vocab_size = self.sp.vocab_size()
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids) -> str:
        # A padded vocabulary (config vocab_size above the tokenizer's) can emit ids with no piece: no text.
        return self.sp.decode([int(i) for i in ids if int(i) < self.vocab_size])

    def ids_by_frequency(self) -> list[int]:
        """Token ids, most frequent first, as the model file ranks them: a SentencePiece piece's score is
        its log probability (unigram) or minus its merge order (BPE), higher for more frequent pieces."""
        scores = [self.sp.get_score(i) for i in range(self.vocab_size)]
        return sorted(range(self.vocab_size), key=lambda i: -scores[i])


class HFTokenizer:
    """tokenizer.json through the `tokenizers` library (what transformers' fast tokenizers run), with
    the special tokens and chat template of tokenizer_config.json (or chat_template.jinja).

    encode(text) gives what the checkpoint's tokenizer gives for tokenizer(text): its post-processor
    decides about BOS. Rendered chat templates are encoded without it, as apply_chat_template does.
    """

    SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

    def __init__(self, folder: Path):
        folder = Path(folder)
        from tokenizers import Tokenizer as FastTokenizer  # imported late: only Llama checkpoints need it

        path = checkpoint_file(folder, "tokenizer.json", required=False)
        if path is None:
            raise CheckpointError(f"tokenizer file {folder / 'tokenizer.json'} not found")
        _check_tokenizer_size(path)
        try:
            self.tok = FastTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises plain Exceptions
            raise CheckpointError(f"tokenizer file {path} is not a tokenizers JSON file: {_one_line(err)}") from None
        config_path = checkpoint_file(folder, "tokenizer_config.json", required=False)
        config = read_json(config_path) if config_path is not None else {}
        # Tokens are strings or serialized AddedTokens ({"content": ...}).
        self.special_tokens = {}
        for name in self.SPECIAL_NAMES:
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                self.special_tokens[name] = value
        self.chat_template = _chat_template(folder, config)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id, self.eos_token_id = (
            self.tok.token_to_id(self.special_tokens.get(name, "")) for name in ("bos_token", "eos_token")
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def ids_by_frequency(self) -> list[int]:
        """Token ids, most frequent first, taken as id order: a BPE vocabulary numbers its tokens in the
        order of their merges, and the earlier merges are the more frequent pairs."""
        return list(range(self.vocab_size))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The checkpoint's chat template, rendered as transformers' apply_chat_template does."""
        if self.chat_template is None:
            raise InputError("the checkpoint has no chat template (tokenizer_config.json); use --raw-prompt")
        import jinja2  # imported late: only Llama checkpoints need it

        conversation = sum(len(m["content"]) for m in messages)
        max_chars, max_bytes = TEMPLATE_OUTPUT_CHARS + 8 * conversation, TEMPLATE_MEMORY_BYTES + 64 * conversation
        try:
            # The timer is the inner bound: it is stopped before the memory bound is lifted, so that it
            # cannot fire in between and leave the process bounded.
            with _memory_limit(max_bytes), _time_limit(TEMPLATE_SECONDS):
                chunks, size = [], 0
                stream = _compile_template(self.chat_template).generate(
                    messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
                )
                for chunk in stream:
                    size += len(chunk)
                    if size > max_chars:
                        raise TemplateLimit(f"writes more than {max_chars:,} characters")
                    chunks.append(chunk)
        except jinja2.TemplateError as err:
            raise InputError(f"the chat template rejected the conversation: {_one_line(err)}") from None
        except TemplateLimit as err:
            raise CheckpointError(f"the checkpoint's chat template {err}: refused") from None
        except MemoryError:
            raise CheckpointError(f"the checkpoint's chat template needs more than {max_bytes >> 20} MiB of memory: "
                                  "refused") from None
        except RecursionError:
            raise CheckpointError("the checkpoint's chat template recurses too deeply: refused") from None
        except Exception as err:  # the template is the checkpoint's code: any failure of it is the checkpoint's
            raise CheckpointError(f"the checkpoint's chat template failed: {type(err).__name__}: {_one_line(err)}") from None
        return "".join(chunks)


def _chat_template(folder: Path, config: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: "default"), else the
    chat_template.jinja file newer transformers versions write."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        jinja_file = checkpoint_file(folder, "chat_template.jinja", required=False)
        if jinja_file is None:
            return None
        try:
            with open(jinja_file, encoding="utf-8") as f:
                template = f.read(MAX_TEMPLATE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read {jinja_file}: {_one_line(err)}") from None
    if len(template) > MAX_TEMPLATE_CHARS:
        raise CheckpointError(f"{folder}: the chat template is longer than {MAX_TEMPLATE_CHARS:,} characters")
    return template


class TemplateLimit(BaseException):
    """A chat template went past a bound. A BaseException, so that no `except Exception` on the way
    (Jinja's, or one the template reaches) swallows it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupt the block after `seconds` (SIGALRM: in the main thread, where there is one; else unbounded)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TemplateLimit(f"runs longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _memory_limit(extra_bytes: int):
    """Let the process's address space grow by at most `extra_bytes` in the block (RLIMIT_AS, lowered and
    raised back; Linux): allocations past it raise MemoryError instead of eating the machine's memory."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, ValueError):
        yield
        return
    limit = used + extra_bytes
    if (soft != resource.RLIM_INFINITY and soft <= limit) or (hard != resource.RLIM_INFINITY and hard < limit):
        yield  # already limited at least as tightly
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _bounded_binop(operator: str, left, right):
    """* and ** of the sandbox, refusing integers and repeated sequences too large to compute in a bound."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and left.bit_length() * right > MAX_TEMPLATE_INT_BITS:
        raise TemplateLimit(f"computes an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
    if operator == "*":
        if ints and left.bit_length() + right.bit_length() > MAX_TEMPLATE_INT_BITS:
            raise TemplateLimit(f"computes an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
        count, sequence = (left, right) if isinstance(left, int) else (right, left)
        if isinstance(count, int) and hasattr(sequence, "__len__") and count * len(sequence) > TEMPLATE_OUTPUT_CHARS:
            raise TemplateLimit(f"repeats a sequence past {TEMPLATE_OUTPUT_CHARS:,} items")
    return left ** right if operator == "**" else left * right


_templates: dict = {}


def _compile_template(source: str):
    """A sandboxed Jinja environment configured like transformers' (templates come from the hub), whose
    * and ** are bounded (see render_chat for the bounds on time, memory and output)."""
    if source not in _templates:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class BoundedEnvironment(ImmutableSandboxedEnvironment):
            intercepted_binops = frozenset({"*", "**"})  # also keeps them from being folded at compile time

            def call_binop(self, context, operator, left, right):
                return _bounded_binop(operator, left, right) if operator in ("*", "**") else super().call_binop(
                    context, operator, left, right)

        def raise_exception(message):
            raise jinja2.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        _templates[source] = env.from_string(source)
    return _templates[source]


def _chat_rounds(messages_or_prompt, system: str) -> tuple[str, list[list[dict]]]:
    """(system text, rounds): a round is a user message and the replies after it. A leading system
    message replaces `system`."""
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
        rounds[-1].append({"role": role, "content": message["content"]})
    return system, rounds


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
    system, rounds = _chat_rounds(messages_or_prompt, system)
    round_ids = []
    for messages in rounds:
        round_ids.append([])
        for message in messages:
            marker = user_token_id if message["role"] == "user" else assistant_token_id
            round_ids[-1] += [marker] + tokenizer.encode(message["content"])
    system_ids = tokenizer.encode(system) if system else []
    # Like the reference, the final assistant token is not budgeted here: a history that fills the
    # budget exactly loses its first token to the left cut below (kept so prompts match the reference).
    max_history = max_input_tokens - len(system_ids)
    history, kept = [], 0
    for ids in reversed(round_ids):
        if history and len(history) + len(ids) > max_history:
            break
        history, kept = ids + history, kept + 1
        if len(history) >= max_history:
            break
    ids = system_ids + history
    if not rounds or rounds[-1][-1]["role"] != "assistant":
        ids.append(assistant_token_id)
    truncated = kept < len(rounds) or len(ids) > max_input_tokens
    return ids[-max_input_tokens:], truncated


def build_template_chat_ids(
    tokenizer: HFTokenizer, messages_or_prompt, *, system: str = "", max_input_tokens: int
) -> tuple[list[int], bool]:
    """Token ids of the checkpoint's chat template (generation prompt added unless the conversation
    ends with the assistant); returns (ids, truncated). As for Baichuan2, the newest rounds that fit are
    kept (the newest always), then the ids are cut from the left to max_input_tokens."""
    if max_input_tokens <= 0:
        raise InputError(f"no room for the prompt: max input tokens is {max_input_tokens}")
    system, rounds = _chat_rounds(messages_or_prompt, system)
    head = [{"role": "system", "content": system}] if system else []
    open_turn = not rounds or rounds[-1][-1]["role"] != "assistant"

    def ids_keeping(n):
        messages = head + [m for r in rounds[len(rounds) - n :] for m in r]
        return tokenizer.encode(tokenizer.render_chat(messages, open_turn), add_special_tokens=False)

    for kept in range(len(rounds), 0, -1):
        ids = ids_keeping(kept)
        if len(ids) <= max_input_tokens or kept == 1:
            break
    else:
        ids, kept = ids_keeping(0), 0
    truncated = kept < len(rounds) or len(ids) > max_input_tokens
    return ids[-max_input_tokens:], truncated


SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # top_k 0 and top_p 1: off


SAMPLING_RULES = {  # name -> (test, what it must be)
    "temperature": (lambda v: 0 < v < math.inf, "positive and finite"),
    "top_k": (lambda v: v >= 0, ">= 0 (0: off)"),
    "top_p": (lambda v: 0.0 < v <= 1.0, "in (0, 1] (1: off)"),
}


def sampling_errors(**settings) -> list[str]:
    """'NAME must be ..., got VALUE' for each setting out of range."""
    return [f"{name} must be {what}, got {settings[name]}" for name, (ok, what) in SAMPLING_RULES.items()
            if name in settings and not ok(settings[name])]


def valid_sampling(temperature: float, top_k: int, top_p: float) -> bool:
    return not sampling_errors(temperature=temperature, top_k=top_k, top_p=top_p)


@dataclass
class Checkpoint:
    """A validated checkpoint folder. Its generation_config.json gives the chat and end-of-sequence ids (where
    it is silent, Baichuan2-Chat's) and sampling values (None where it is silent)."""

    folder: Path
    config: dict
    args: ModelArgs
    weight_files: list[Path]
    arch: str = "baichuan"
    user_token_id: int = 195
    assistant_token_id: int = 196
    eos_token_id: int = 2  # the one generate() stops at: the first of eos_token_ids
    eos_token_ids: tuple[int, ...] = ()  # every end-of-sequence id the checkpoint declares
    do_sample: bool = True
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int = 2048

    def __post_init__(self):
        # Baichuan2 falls back to its EOS, 2; a Llama checkpoint without one takes its tokenizer's
        # (load_tokenizer).
        if not self.eos_token_ids and self.arch == "baichuan":
            self.eos_token_ids = (self.eos_token_id,)
        self.eos_token_ids = tuple(self.eos_token_ids)
        if self.eos_token_ids:
            self.eos_token_id = self.eos_token_ids[0]

    @property
    def context_length(self) -> int:
        return self.config.get("max_position_embeddings") or self.config["model_max_length"]

    def sampling(self, temperature=None, top_k=None, top_p=None) -> dict:
        """Sampling settings: those given, else this checkpoint's (as transformers' generate takes a model's
        generation config), else SAMPLING_DEFAULTS."""
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        settings = {name: next(v for v in (given[name], getattr(self, name), default) if v is not None)
                    for name, default in SAMPLING_DEFAULTS.items()}
        errors = sampling_errors(**settings)
        if errors:  # the flags were checked before: the value comes from the checkpoint
            flag = "--" + errors[0].split()[0].replace("_", "-")
            raise CheckpointError(f"{self.folder / 'generation_config.json'}: {errors[0]}; pass {flag}")
        return settings

    def chat_ids(self, tokenizer, messages_or_prompt, *, system: str = "", max_input_tokens: int):
        """(ids, truncated) in the checkpoint's chat format: Baichuan2's marker tokens or the chat template.
        `messages_or_prompt`: one user prompt or a list of {"role", "content"} messages."""
        if self.arch == "baichuan":
            return build_chat_ids(
                tokenizer, messages_or_prompt, system=system, user_token_id=self.user_token_id,
                assistant_token_id=self.assistant_token_id, max_input_tokens=max_input_tokens,
            )
        return build_template_chat_ids(
            tokenizer, messages_or_prompt, system=system, max_input_tokens=max_input_tokens
        )


GENERATION_FIELDS = {
    "user_token_id": int, "assistant_token_id": int, "do_sample": bool,
    "temperature": float, "top_k": int, "top_p": float, "repetition_penalty": float, "max_new_tokens": int,
}


def _is_kind(value, kind) -> bool:
    if kind is bool or isinstance(value, bool):  # bool is an int subclass: keep flags and numbers apart
        return kind is bool and isinstance(value, bool)
    return isinstance(value, int) or (kind is float and isinstance(value, float))


def _eos_ids(value) -> tuple[int, ...] | None:
    """eos_token_id as a tuple (Hugging Face allows one id or a list); None if malformed or absent."""
    values = value if isinstance(value, list) else [value]
    if values and all(_is_kind(v, int) for v in values):
        return tuple(values)
    return None


def open_checkpoint(path_or_id: str, max_seq_len: int | None = None) -> Checkpoint:
    """Cheap validation (config, generation config, weight files, tokenizer file) without reading weights."""
    folder = resolve_model_path(str(path_or_id))
    config = load_config(folder)
    arch = checkpoint_arch(config)
    args = model_args_from_config(config, max_seq_len)
    weight_files = find_weight_files(folder)
    check_weights_match_config(config, args, weight_files)
    tokenizer_file = "tokenizer.model" if arch == "baichuan" else "tokenizer.json"
    if checkpoint_file(folder, tokenizer_file, required=False) is None:
        raise CheckpointError(f"{folder} has no {tokenizer_file}")
    values = {"eos_token_ids": _eos_ids(config.get("eos_token_id")) or ()}
    generation_path = checkpoint_file(folder, "generation_config.json", required=False)
    if generation_path is not None:
        generation = read_json(generation_path)
        if generation.get("eos_token_id") is not None:
            values["eos_token_ids"] = _eos_ids(generation["eos_token_id"])
            if not values["eos_token_ids"]:
                raise CheckpointError(
                    f"{generation_path}: eos_token_id has invalid value {_short_repr(generation['eos_token_id'])}"
                )
        for key, kind in GENERATION_FIELDS.items():
            if key in generation:
                if not _is_kind(generation[key], kind):
                    raise CheckpointError(f"{generation_path}: {key} has invalid value {_short_repr(generation[key])}")
                values[key] = kind(generation[key])
    ckpt = Checkpoint(folder=folder, config=config, args=args, weight_files=weight_files, arch=arch, **values)
    ids = {"eos_token_id": ckpt.eos_token_ids}
    if arch == "baichuan":  # Llama chat formats need no marker tokens
        ids.update(user_token_id=[ckpt.user_token_id], assistant_token_id=[ckpt.assistant_token_id])
    for key, found in ids.items():
        for value in found:
            if not 0 <= value < args.vocab_size:
                raise CheckpointError(f"{folder}: {key} {value} is outside the vocabulary ({args.vocab_size})")
    return ckpt


def load_tokenizer(ckpt: Checkpoint) -> Tokenizer | HFTokenizer:
    """The checkpoint's tokenizer, its eos_token_id set to the one generation stops at."""
    if ckpt.arch == "baichuan":
        tokenizer = Tokenizer(checkpoint_file(ckpt.folder, "tokenizer.model"))
    else:
        tokenizer = HFTokenizer(ckpt.folder)
    if tokenizer.vocab_size > ckpt.args.vocab_size:
        name = "tokenizer.model" if ckpt.arch == "baichuan" else "tokenizer.json"
        raise CheckpointError(
            f"{ckpt.folder}: {name} has {tokenizer.vocab_size} tokens, more than vocab_size "
            f"{ckpt.args.vocab_size} in config.json"
        )
    if ckpt.arch == "llama":
        if not ckpt.eos_token_ids:
            if tokenizer.eos_token_id is None:
                raise CheckpointError(f"{ckpt.folder}: no eos_token_id in the configs or the tokenizer")
            ckpt.eos_token_ids = (tokenizer.eos_token_id,)
        # With several EOS ids (Llama 3 lists <|end_of_text|>, <|eom_id|>, <|eot_id|>), the tokenizer's own
        # EOS (what chat turns end with) goes first: generate() stops at one id, the first.
        own = tokenizer.eos_token_id
        if own in ckpt.eos_token_ids:
            ckpt.eos_token_ids = (own, *(i for i in ckpt.eos_token_ids if i != own))
        ckpt.eos_token_id = ckpt.eos_token_ids[0]
    tokenizer.eos_token_id = ckpt.eos_token_id
    return tokenizer


def memory_needed(ckpt: Checkpoint, dtype: torch.dtype, draft_group_size: int | None = None) -> dict[str, int]:
    """Bytes the model will keep on its device: weights and KV cache, and the INT4 draft's with a group size.
    Activations, CUDA graphs and the allocator's slack come on top (together about 2% at 7B on an H100)."""
    a = ckpt.args
    name = str(dtype).removeprefix("torch.")
    need = {
        f"{name} weights": sum(math.prod(shape) for shape in checkpoint_weight_shapes(ckpt.config, a).values()) * dtype.itemsize,
        f"KV cache for {a.max_seq_len:,} tokens": 2 * a.num_layers * a.max_seq_len * a.num_kv_heads * a.head_dim * dtype.itemsize,
    }
    if draft_group_size:
        need["INT4 draft"] = draft_bytes(a, dtype, draft_group_size)
    return need


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a GPU; None for the CPU, whose memory the system may overcommit or swap."""
    if device.type in ("cuda", "xpu"):
        return getattr(torch, device.type).get_device_properties(device).total_memory
    return None


def check_memory(ckpt: Checkpoint, dtype: torch.dtype, device: torch.device, draft_group_size: int | None) -> None:
    """Refuse, before reading any weight, a model that cannot fit the device at all."""
    total = device_memory_bytes(torch.device(device))
    if total is None:
        _check_cache_fits_ram(ckpt, dtype)
        return
    need = memory_needed(ckpt, dtype, draft_group_size)
    if sum(need.values()) <= total:
        return
    gib = 2**30
    parts = ", ".join(f"{what} {size / gib:.1f}" for what, size in need.items())
    without_draft = sum(need.values()) - need.get("INT4 draft", 0)
    hint = f"; without the draft it needs {without_draft / gib:.1f} GiB" if draft_group_size and without_draft <= total else ""
    raise CheckpointError(f"{ckpt.folder} needs at least {sum(need.values()) / gib:.1f} GiB on {device} ({parts}) "
                          f"and the device has {total / gib:.1f} GiB{hint}")


def _check_cache_fits_ram(ckpt: Checkpoint, dtype: torch.dtype) -> None:
    """On CPU only the KV cache is checked (weights may stay pages of a memory-mapped file): it is zero-filled
    when allocated, so one larger than the machine's memory would swap or be killed, not fail cleanly."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to compare with
        return
    a = ckpt.args
    cache = 2 * a.num_layers * a.max_seq_len * a.num_kv_heads * a.head_dim * dtype.itemsize
    if cache > ram:
        raise CheckpointError(f"{ckpt.folder}: the KV cache for a context of {a.max_seq_len:,} tokens needs "
                              f"{cache / 2**30:.1f} GiB, more than this machine's {ram / 2**30:.1f} GiB of memory")


def load_checkpoint(
    path_or_id: str, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None,
    draft_group_size: int | None = None,
) -> tuple[Checkpoint, Baichuan2, Tokenizer | HFTokenizer]:
    """Resolve -> validate -> tokenizer -> model; everything cheap fails before weights are read, including a
    model (plus the draft `make_draft` will add, given its group size) larger than the GPU's memory."""
    ckpt = open_checkpoint(path_or_id, max_seq_len)
    check_memory(ckpt, dtype, device, draft_group_size)
    tokenizer = load_tokenizer(ckpt)
    model = load_model(ckpt.folder, dtype, device, max_seq_len)
    return ckpt, model, tokenizer
