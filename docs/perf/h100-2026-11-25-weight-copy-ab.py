"""How fast a checkpoint's CPU tensors (pages of torch.load's memory map) reach the GPU in float16, five
ways, two rounds, on a checkpoint folder (e.g. one written by 2026-11-25-cli-shape-checkpoint.py):

    python docs/perf/h100-2026-11-25-weight-copy-ab.py CKPT > OUT.jsonl

to_device_and_dtype is what the loader did until 2026-11-25 (`tensor.to("cuda", torch.float16)`: converted on
the CPU, copied from pageable memory); device_copier is what it does now (selfspec.checkpoint).
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]
from selfspec.checkpoint import _read_weight_file, device_copier, find_weight_files, load_model  # noqa: E402

folder, dev, fp16 = Path(sys.argv[1]), torch.device("cuda"), torch.float16
files = find_weight_files(folder)


def pinned_per_tensor(t):
    staging = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    staging.copy_(t)
    return staging.to(dev, non_blocking=True).to(fp16)


variants = {
    "to_device_and_dtype": lambda: lambda t: t.to(device=dev, dtype=fp16),
    "to_device_then_dtype": lambda: lambda t: t.to(device=dev).to(fp16),
    "to_device_and_dtype_non_blocking": lambda: lambda t: t.to(device=dev, dtype=fp16, non_blocking=True),
    "pinned_per_tensor": lambda: pinned_per_tensor,
    "device_copier": lambda: device_copier(dev, fp16),
}
torch.zeros(1, device=dev)
for rnd in range(2):
    for name, make in variants.items():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        copy, out = make(), {}
        for path in files:
            for key, tensor in _read_weight_file(path):
                out[key] = copy(tensor)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        gb = sum(v.numel() * v.element_size() for v in out.values()) / 1e9
        del out
        torch.cuda.empty_cache()
        print(json.dumps({"round": rnd, "variant": name, "s": round(seconds, 2), "GB_fp16": round(gb, 2)}), flush=True)
    t0 = time.perf_counter()
    model = load_model(folder, fp16, dev)
    torch.cuda.synchronize()
    print(json.dumps({"round": rnd, "variant": "load_model (checks, NormHead, KV cache included)",
                      "s": round(time.perf_counter() - t0, 2)}), flush=True)
    del model
    torch.cuda.empty_cache()
