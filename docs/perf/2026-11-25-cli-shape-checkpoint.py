"""Write a Baichuan2-7B- or 13B-shaped checkpoint in the hub's layout for timing the command line: random
bfloat16 weights made on `--device`, the tests' small tokenizer and config files
(scripts/make_tiny_checkpoint.py), either one pytorch_model.bin as the hub's 7B ships, or shards of four
layers written one at a time (so that memory holds one shard): .bin files with pytorch_model.bin.index.json as
the hub's 13B ships, or safetensors.

    python docs/perf/2026-11-25-cli-shape-checkpoint.py OUT_DIR --device cuda --format bin
    python docs/perf/2026-11-25-cli-shape-checkpoint.py OUT_DIR --arch 13b --device cuda --format sharded-bin
    python docs/perf/2026-11-25-cli-shape-checkpoint.py OUT_DIR --device cpu --format sharded-safetensors

(The 7B runs of 2026-11-25 used earlier copies of this script, one per format and 7B only, named
2026-11-25-cli-7b-shape-checkpoint.py; same shapes, key names and formats, other random values.)
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "scripts")]
from make_tiny_checkpoint import layer_weights, write_tiny_checkpoint, write_weights  # noqa: E402

SHAPES = {"7b": (4096, 11008, 32, 32), "13b": (5120, 13696, 40, 40)}  # hidden, intermediate, heads, layers
VOCAB = 125696

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("out", type=Path)
p.add_argument("--arch", choices=sorted(SHAPES), default="7b")
p.add_argument("--device", default="cpu")
p.add_argument("--format", choices=["bin", "sharded-bin", "sharded-safetensors"], default="sharded-safetensors")
args = p.parse_args()
H, INTER, HEADS, LAYERS = SHAPES[args.arch]
t0 = time.perf_counter()
write_tiny_checkpoint(args.out, arch=args.arch, fmt="safetensors")
(args.out / "model.safetensors").unlink()
config = json.loads((args.out / "config.json").read_text())
config.update(hidden_size=H, intermediate_size=INTER, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
              vocab_size=VOCAB, model_max_length=4096)
if args.arch == "7b":  # 13B's config has no max_position_embeddings (ALiBi)
    config["max_position_embeddings"] = 4096
(args.out / "config.json").write_text(json.dumps(config, indent=2))
gen = torch.Generator(args.device).manual_seed(0)


def linear(rows, cols, std=None):
    return (torch.randn(rows, cols, generator=gen, device=args.device) * (std or cols ** -0.5)).bfloat16().cpu()


def norm(scale=1.0):
    return (scale * (1 + 0.1 * (2 * torch.rand(H, generator=gen, device=args.device) - 1))).bfloat16().cpu()


def layers(first):
    return {k: v for i in range(first, min(first + 4, LAYERS)) for k, v in layer_weights(i, H, INTER, linear, norm).items()}


shards = ([lambda: {"model.embed_tokens.weight": linear(VOCAB, H, 1.0)}]
          + [lambda first=first: layers(first) for first in range(0, LAYERS, 4)]
          + [lambda: {"model.norm.weight": norm(4.0), "lm_head.weight": linear(VOCAB, H)}])
if args.format == "bin":
    write_weights(args.out, {k: v for make in shards for k, v in make().items()}, "bin")
else:
    weight_map, total = {}, 0
    safetensors = args.format == "sharded-safetensors"
    for n, make in enumerate(shards, start=1):  # one shard in memory at a time
        tensors = make()
        if safetensors:
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(tensors, str(args.out / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{n:05d}-of-{len(shards):05d}.bin"
            torch.save(tensors, args.out / name)
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (args.out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
print(json.dumps({"stage": "write checkpoint", "s": round(time.perf_counter() - t0, 1)}))
