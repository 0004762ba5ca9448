"""Hub checkpoints: locate, validate, load weights and tokenizer, build chat prompts.

Two families share one model class (selfspec.model): Baichuan2 (fused W_pack, NormHead, SentencePiece,
user/assistant marker tokens) and Llama (q/k/v fused into W_pack at load, grouped-query attention, plain
or tied lm_head, tokenizer.json, Jinja chat template). Only data files are read (json, tokenizer files,
weights); the .py files that hub checkpoints ship for trust_remote_code are never imported or downloaded.
"""
import json
import math
import pickle
import re
import sys
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
from selfspec.model import Baichuan2, ModelArgs
from selfspec.quantize import draft_bytes, rows_per_slice

SAFETENSORS_INDEX, SAFETENSORS_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name": no leading / or ., one slash
HUB_PATTERNS = ["*.json", "*.jinja", "*.model", "*.safetensors", "*.bin"]  # never *.py
PROGRESS_MIN_BYTES = 1 << 30  # progress bars only for real checkpoints, so tests stay quiet
STAGING_BYTES = 64 << 20  # each of the two pinned buffers that weights pass through on their way to a GPU


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
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no config.json (not a Hugging Face checkpoint folder?)")
    config = read_json(path)
    if checkpoint_arch(config) is None:
        found = config.get("model_type") or config.get("architectures") or "unknown"
        raise CheckpointError(f"{path} describes a {found} model, not Baichuan2 or Llama")
    return config


def model_args_from_config(config: dict, max_seq_len: int | None = None) -> ModelArgs:
    """Baichuan2-7B configs have max_position_embeddings (RoPE), 13B ones only model_max_length (ALiBi);
    Llama configs always use RoPE and may group query heads (num_key_value_heads)."""

    def positive_int(key):
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise CheckpointError(f"config.json: {key} must be a positive integer, got {value!r}")
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
    context = positive_int("max_position_embeddings" if rope else "model_max_length")
    if max_seq_len is not None and not 0 < max_seq_len <= context:
        raise InputError(f"max sequence length {max_seq_len} must be between 1 and the model's context {context}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
        raise CheckpointError(f"config.json: rms_norm_eps must be a positive number, got {eps!r}")
    # transformers 5 writes rope_parameters: {"rope_theta": ...}; older configs a top-level rope_theta.
    rope_parameters = config.get("rope_parameters") or {}
    if not isinstance(rope_parameters, dict):
        raise CheckpointError(f"config.json: rope_parameters must be an object, got {rope_parameters!r}")
    theta = rope_parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise CheckpointError(f"config.json: rope_theta must be a positive number, got {theta!r}")
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
        raise CheckpointError(f"config.json: hidden_act {config['hidden_act']!r} is not supported (only silu)")
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else scaling
    if kind != "default":
        raise CheckpointError(f"config.json: RoPE scaling {kind!r} is not supported")


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
        if (folder / index_name).is_file():
            weight_map = read_json(folder / index_name).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{folder / index_name} has no weight_map from tensor names to file names")
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
            # mmap needs the zip format; older pickle-only .bin files load without it. torch's warnings
            # about old formats are dropped: the error below says what to do.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
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
    """(key, tensor) items as they are, each tensor's bytes counted on the progress bar."""
    for key, tensor in items:
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


def _checked_tensors(source, config: dict, expected: dict, items, to_device) -> dict:
    """(key, tensor) pairs -> {key: to_device(tensor)}, refusing unknown keys, wrong shapes and values that
    are not finite in the model's dtype."""
    tensors = {}
    for key, tensor in items:
        if _ignored(config, key):
            continue
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected weight {key} for the model described by config.json")
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"{source}: {key} has shape {tuple(tensor.shape)}, config.json implies {expected[key]}")
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


class Tokenizer:
    """SentencePiece tokenizer.model (Baichuan2); encode adds no BOS/EOS, as Baichuan2's tokenizer."""

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
        # A padded vocabulary (config vocab_size above the tokenizer's) can emit ids with no piece: no text.
        return self.sp.decode([int(i) for i in ids if int(i) < self.vocab_size])


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

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise CheckpointError(f"tokenizer file {path} not found")
        try:
            self.tok = FastTokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises plain Exceptions
            raise CheckpointError(f"tokenizer file {path} is not a tokenizers JSON file: {_one_line(err)}") from None
        config_path = folder / "tokenizer_config.json"
        config = read_json(config_path) if config_path.is_file() else {}
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

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The checkpoint's chat template, rendered as transformers' apply_chat_template does."""
        if self.chat_template is None:
            raise InputError("the checkpoint has no chat template (tokenizer_config.json); use --raw-prompt")
        import jinja2  # imported late: only Llama checkpoints need it

        try:
            return _compile_template(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
            )
        except jinja2.TemplateError as err:
            raise InputError(f"the chat template rejected the conversation: {_one_line(err)}") from None


def _chat_template(folder: Path, config: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: "default"), else the
    chat_template.jinja file newer transformers versions write."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    jinja_file = folder / "chat_template.jinja"
    return jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None


_templates: dict = {}


def _compile_template(source: str):
    """A sandboxed Jinja environment configured like transformers' (templates come from the hub)."""
    if source not in _templates:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(
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


def valid_sampling(temperature: float, top_k: int, top_p: float) -> bool:
    return 0 < temperature < math.inf and top_k >= 0 and 0.0 < top_p <= 1.0


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
        if not valid_sampling(**settings):
            raise CheckpointError(f"{self.folder / 'generation_config.json'} gives sampling settings out of range "
                                  f"({settings}); pass --temperature, --top-k and --top-p")
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
    tokenizer_file = "tokenizer.model" if arch == "baichuan" else "tokenizer.json"
    if not (folder / tokenizer_file).is_file():
        raise CheckpointError(f"{folder} has no {tokenizer_file}")
    values = {"eos_token_ids": _eos_ids(config.get("eos_token_id")) or ()}
    generation_path = folder / "generation_config.json"
    if generation_path.is_file():
        generation = read_json(generation_path)
        if generation.get("eos_token_id") is not None:
            values["eos_token_ids"] = _eos_ids(generation["eos_token_id"])
            if not values["eos_token_ids"]:
                raise CheckpointError(
                    f"{generation_path}: eos_token_id has invalid value {generation['eos_token_id']!r}"
                )
        for key, kind in GENERATION_FIELDS.items():
            if key in generation:
                if not _is_kind(generation[key], kind):
                    raise CheckpointError(f"{generation_path}: {key} has invalid value {generation[key]!r}")
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
    tokenizer = Tokenizer(ckpt.folder / "tokenizer.model") if ckpt.arch == "baichuan" else HFTokenizer(ckpt.folder)
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
