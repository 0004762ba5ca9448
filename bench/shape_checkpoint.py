"""Write a Baichuan2-7B- or 13B-shaped checkpoint in the hub's layout for timing the command line: random
bfloat16 weights made on `--device`, the tests' small tokenizer and config files
(scripts/make_tiny_checkpoint.py), either one pytorch_model.bin as the hub's 7B ships, or shards of four
layers written one at a time (so that memory holds one shard): .bin files with pytorch_model.bin.index.json as
the hub's 13B ships, or safetensors.

    python bench/shape_checkpoint.py OUT_DIR --device cuda --format bin
    python bench/shape_checkpoint.py OUT_DIR --arch 13b --device cuda --format sharded-bin
    python bench/shape_checkpoint.py OUT_DIR --device cpu --format sharded-safetensors

--layers writes fewer layers than the shape has (a quicker, smaller file for trying the tool). OUT_DIR must be
new or empty (--force replaces it); it appears only when the whole checkpoint is written.
"""
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHAPES, VOCAB, parser  # noqa: E402
from scripts.make_tiny_checkpoint import layer_weights, write_tiny_checkpoint, write_weights  # noqa: E402
from selfspec.device import pick_device  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402
from selfspec.folder import output_folder  # noqa: E402

LAYERS_PER_SHARD = 4


def write_config(out: Path, arch: str, layers: int) -> None:
    """The tiny checkpoint's tokenizer and config files, the config at the full shape."""
    shape = SHAPES[arch]
    write_tiny_checkpoint(out, arch=arch, fmt="safetensors")
    (out / "model.safetensors").unlink()
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
                  num_attention_heads=shape["num_heads"], num_hidden_layers=layers, vocab_size=VOCAB,
                  model_max_length=4096)
    if arch == "7b":  # 13B's config has no max_position_embeddings (ALiBi)
        config["max_position_embeddings"] = 4096
    (out / "config.json").write_text(json.dumps(config, indent=2))


def shard_makers(arch: str, layers: int, device) -> list:
    """Functions that each make one shard's tensors (bfloat16, on the CPU): the embedding, four layers at a
    time, the final norm and the head."""
    h, inter = SHAPES[arch]["hidden_size"], SHAPES[arch]["intermediate_size"]
    gen = torch.Generator(device).manual_seed(0)

    def linear(rows, cols, std=None):
        return (torch.randn(rows, cols, generator=gen, device=device) * (std or cols ** -0.5)).bfloat16().cpu()

    def norm(scale=1.0):
        return (scale * (1 + 0.1 * (2 * torch.rand(h, generator=gen, device=device) - 1))).bfloat16().cpu()

    def block(first):
        return {k: v for i in range(first, min(first + LAYERS_PER_SHARD, layers))
                for k, v in layer_weights(i, h, inter, linear, norm).items()}

    return ([lambda: {"model.embed_tokens.weight": linear(VOCAB, h, 1.0)}]
            + [lambda first=first: block(first) for first in range(0, layers, LAYERS_PER_SHARD)]
            + [lambda: {"model.norm.weight": norm(4.0), "lm_head.weight": linear(VOCAB, h)}])


def write_shards(out: Path, shards: list, safetensors: bool) -> None:
    """One shard in memory at a time, and the index json that names each tensor's file."""
    weight_map, total = {}, 0
    for n, make in enumerate(shards, start=1):
        tensors = make()
        if safetensors:
            name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
            save_file(tensors, str(out / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{n:05d}-of-{len(shards):05d}.bin"
            torch.save(tensors, out / name)
        weight_map.update({k: name for k in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (out / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def main():
    p = parser(__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--arch", choices=sorted(SHAPES), default="7b")
    p.add_argument("--device", choices=["cpu", "cuda", "xpu"], default="cpu", help="where the random weights are made")
    p.add_argument("--format", choices=["bin", "sharded-bin", "sharded-safetensors"], default="sharded-safetensors")
    p.add_argument("--layers", type=int, help="decoder layers to write (default: the shape's)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty (its files are deleted)")
    args = p.parse_args()
    full = SHAPES[args.arch]["num_layers"]
    layers = full if args.layers is None else args.layers
    if not 1 <= layers <= full:
        raise InputError(f"--layers must be in [1, {full}] for the {args.arch} shape, got {layers}")
    device = pick_device(args.device)
    t0 = time.perf_counter()
    with output_folder(args.out, args.force) as out:  # appears only when complete
        write_config(out, args.arch, layers)
        shards = shard_makers(args.arch, layers, device)
        if args.format == "bin":
            write_weights(out, {k: v for make in shards for k, v in make().items()}, "bin")
        else:
            write_shards(out, shards, args.format == "sharded-safetensors")
    print(json.dumps({"stage": "write checkpoint", "s": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
