"""The memory check: refuse, before any weight is read, a model that cannot fit its device at all."""
import math
import os

import torch

from selfspec.errors import CheckpointError
from selfspec.draft import draft_bytes
from selfspec.weights import checkpoint_weight_shapes


def kv_cache_bytes(args, dtype: torch.dtype) -> int:
    """The static KV cache: keys and values for every layer and position."""
    return 2 * args.num_layers * args.max_seq_len * args.num_kv_heads * args.head_dim * dtype.itemsize


def rope_tables_bytes(args) -> int:
    """RoPE's cos and sin tables, float32, a row per position (none with ALiBi)."""
    return 2 * args.max_seq_len * args.head_dim * 4 if args.position_encoding == "rope" else 0


def memory_needed(ckpt, dtype: torch.dtype, draft_group_size: int | None = None) -> dict[str, int]:
    """Bytes the model will keep on its device: weights and KV cache, and the INT4 draft's with a group size.
    Activations, CUDA graphs and the allocator's slack come on top (together about 2% at 7B on an H100)."""
    a = ckpt.args
    name = str(dtype).removeprefix("torch.")
    need = {
        f"{name} weights": sum(math.prod(shape) for shape in checkpoint_weight_shapes(ckpt.config, a).values()) * dtype.itemsize,
        f"KV cache for {a.max_seq_len:,} tokens": kv_cache_bytes(a, dtype),
    }
    if rope_tables_bytes(a):
        need["RoPE tables"] = rope_tables_bytes(a)
    if draft_group_size:
        # The one place the check counts the draft: what make_draft adds with this group size and its other
        # settings (INT8 head over the whole vocabulary) at their defaults.
        need["INT4 draft"] = draft_bytes(a, dtype, group_size=draft_group_size)
    return need


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of a GPU; None for the CPU, whose memory the system may overcommit or swap."""
    if device.type in ("cuda", "xpu"):
        return getattr(torch, device.type).get_device_properties(device).total_memory
    return None


def check_memory(ckpt, dtype: torch.dtype, device: torch.device, draft_group_size: int | None) -> None:
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


def machine_memory_bytes() -> int | None:
    """The machine's physical memory; None where the system does not say (no sysconf: Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_cache_fits_ram(ckpt, dtype: torch.dtype) -> None:
    """On CPU only the KV cache and the RoPE tables are checked (weights may stay pages of a memory-mapped
    file): they are written whole when allocated, so ones larger than the machine's memory would swap or be
    killed, not fail cleanly. The tables count twice: building them takes as much again for a moment."""
    ram = machine_memory_bytes()
    if ram is None:  # nothing to compare with
        return
    a = ckpt.args
    cache, tables = kv_cache_bytes(a, dtype), 2 * rope_tables_bytes(a)
    if cache + tables > ram:
        what, need = ("the KV cache and the RoPE tables", "need") if tables else ("the KV cache", "needs")
        raise CheckpointError(f"{ckpt.folder}: {what} for a context of {a.max_seq_len:,} tokens {need} "
                              f"{(cache + tables) / 2**30:.1f} GiB, more than this machine's {ram / 2**30:.1f} GiB "
                              f"of memory")
