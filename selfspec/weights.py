"""Weights: find and read a checkpoint's shards safely, copy them to the device, and assemble the model
(Llama's q/k/v fused into W_pack, a tied head shared, Baichuan2's NormHead normalized once)."""
import pickle
import sys
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from selfspec.config import checkpoint_arch, is_tied, load_config, model_args_from_config
from selfspec.errors import CheckpointError, one_line, short_repr
from selfspec.folder import checkpoint_file, read_json
from selfspec.model import ModelArgs, Transformer
from selfspec.quantize import rows_per_slice

SAFETENSORS_INDEX, SAFETENSORS_FILE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_FILE = "pytorch_model.bin.index.json", "pytorch_model.bin"
PROGRESS_MIN_BYTES = 1 << 30  # progress bars only for real checkpoints, so tests stay quiet
STAGING_BYTES = 64 << 20  # each of the two pinned buffers that weights pass through on their way to a GPU


def checkpoint_weight_shapes(config: dict, args: ModelArgs) -> dict[str, tuple]:
    """Key -> shape of every tensor the checkpoint must hold, in its own naming (Llama: q/k/v apart)."""
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in Transformer(args).state_dict().items()}
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
            for name in names:  # not "" or "." (the folder itself), not "config.json" (read as weights)
                if not name.endswith(Path(single).suffix):
                    raise CheckpointError(f"{index} names {short_repr(name)}, which is not a {Path(single).suffix} file")
            files = [checkpoint_file(folder, name, required=False) for name in names]
            missing = [short_repr(name) for name, f in zip(names, files) if f is None]
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
                        f"({type(err).__name__}: {one_line(err)})"
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
        raise CheckpointError(f"cannot read weights file {path} (truncated or corrupted?): {one_line(err)}") from None


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


def load_model(folder: Path, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None) -> Transformer:
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
                          max_seq_len: int | None = None) -> Transformer:
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
        raise CheckpointError(f"{source}: unexpected weight {short_repr(key)} for the model described by config.json")
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
            raise CheckpointError(f"cannot read weights file {path} (truncated or corrupted?): {one_line(err)}") from None
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
    are not finite in the model's dtype. Each tensor gets memory of its own: a .bin may store two weights in
    one storage, or one expanded without any, and NormHead normalizes the head in place."""
    tensors, storages = {}, set()
    for key, tensor in items:
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: {short_repr(key)} is a {type(tensor).__name__}, not a tensor")
        if not _wanted(source, config, expected, key, tuple(tensor.shape)):
            continue
        if not tensor.is_floating_point():
            raise CheckpointError(f"{source}: {key} holds {tensor.dtype} values, not floating-point weights")
        tensor = to_device(tensor)
        if not tensor.is_contiguous() or tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
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


def _assemble(config: dict, args: ModelArgs, tensors: dict, dtype, device) -> Transformer:
    """Checkpoint tensors -> ready model: fuse Llama's q/k/v, tie or normalize the head, set up caches."""
    if checkpoint_arch(config) == "llama":
        for i in range(args.num_layers):  # one layer at a time: the concatenation costs one layer extra
            p = f"model.layers.{i}.self_attn."
            qkv = [tensors.pop(p + f"{name}_proj.weight") for name in "qkv"]
            tensors[p + "W_pack.weight"] = torch.cat(qkv)
        if is_tied(config):
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # shared, not copied
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    if checkpoint_arch(config) == "baichuan":
        _normalize_rows_(model.lm_head.weight.data)  # NormHead; Llama's head is a plain linear layer
    try:
        model.setup_caches(args.max_seq_len, dtype, device)
    except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
        raise CheckpointError(
            f"cannot allocate the KV cache for a context of {args.max_seq_len} tokens on {device}: {one_line(err)}"
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
