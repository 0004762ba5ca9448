"""Write a Baichuan2-7B-shaped checkpoint (random bfloat16 weights, sharded safetensors, hub key names, the
tests' small tokenizer) on the CPU, one shard at a time so that memory stays at one shard.

    python docs/perf/cpu-2026-11-25-cli-7b-shape-checkpoint.py OUT_DIR
"""
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from make_tiny_checkpoint import write_tiny_checkpoint  # noqa: E402

out = Path(sys.argv[1])
t0 = time.perf_counter()
write_tiny_checkpoint(out, arch="7b", fmt="safetensors")
(out / "model.safetensors").unlink()
h, inter, vocab, layers = 4096, 11008, 125696, 32
config = json.loads((out / "config.json").read_text())
config.update(hidden_size=h, intermediate_size=inter, num_attention_heads=32, num_hidden_layers=layers,
              vocab_size=vocab, max_position_embeddings=4096, model_max_length=4096)
(out / "config.json").write_text(json.dumps(config, indent=2))
gen = torch.Generator().manual_seed(0)


def linear(rows, cols, std=None):
    return (torch.randn(rows, cols, generator=gen) * (std or cols ** -0.5)).bfloat16()


def norm(scale=1.0):
    return (scale * (1 + 0.1 * (2 * torch.rand(h, generator=gen) - 1))).bfloat16()


def layer_group(first):
    tensors = {}
    for i in range(first, min(first + 4, layers)):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": norm(), p + "self_attn.W_pack.weight": linear(3 * h, h),
                        p + "self_attn.o_proj.weight": linear(h, h), p + "post_attention_layernorm.weight": norm(),
                        p + "mlp.gate_proj.weight": linear(inter, h), p + "mlp.up_proj.weight": linear(inter, h),
                        p + "mlp.down_proj.weight": linear(h, inter)})
    return tensors


makers = ([lambda: {"model.embed_tokens.weight": linear(vocab, h, 1.0)}]
          + [lambda first=first: layer_group(first) for first in range(0, layers, 4)]
          + [lambda: {"model.norm.weight": norm(4.0), "lm_head.weight": linear(vocab, h)}])
weight_map, total = {}, 0
for n, make in enumerate(makers, start=1):  # one shard in memory at a time
    tensors = make()
    name = f"model-{n:05d}-of-{len(makers):05d}.safetensors"
    save_file(tensors, str(out / name), metadata={"format": "pt"})
    weight_map.update({k: name for k in tensors})
    total += sum(t.numel() * t.element_size() for t in tensors.values())
    del tensors
(out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                              "weight_map": weight_map}, indent=2))
print(json.dumps({"stage": "write checkpoint", "s": round(time.perf_counter() - t0, 1), "bytes": total}))
