"""Write a Baichuan2-7B-shaped checkpoint in the hub's layout: random weights (made on the GPU), one
pytorch_model.bin in bfloat16 like the hub's 7B, the tiny test tokenizer. For timing the CLI end to end.

    python docs/perf/h100-2026-11-25-cli-7b-shape-checkpoint.py OUT_DIR
"""
import json
import sys
import time
from pathlib import Path
import torch
ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from make_tiny_checkpoint import write_tiny_checkpoint, write_weights

out = Path(sys.argv[1])
t0 = time.perf_counter()
write_tiny_checkpoint(out, arch="7b", fmt="bin")
(out / "pytorch_model.bin").unlink()
config = json.loads((out / "config.json").read_text())
h, inter, vocab, layers = 4096, 11008, 125696, 32
config.update(hidden_size=h, intermediate_size=inter, num_attention_heads=32, num_hidden_layers=layers,
              vocab_size=vocab, max_position_embeddings=4096, model_max_length=4096)
(out / "config.json").write_text(json.dumps(config, indent=2))
gen = torch.Generator("cuda").manual_seed(0)
def linear(rows, cols):
    return torch.empty(rows, cols, device="cuda").normal_(0, cols ** -0.5, generator=gen).bfloat16().cpu()
def norm(scale=1.0):
    return (scale * (1 + 0.1 * (2 * torch.rand(h, device="cuda", generator=gen) - 1))).bfloat16().cpu()
sd = {"model.embed_tokens.weight": torch.empty(vocab, h, device="cuda").normal_(generator=gen).bfloat16().cpu()}
for i in range(layers):
    p = f"model.layers.{i}."
    sd[p + "input_layernorm.weight"] = norm()
    sd[p + "self_attn.W_pack.weight"] = linear(3 * h, h)
    sd[p + "self_attn.o_proj.weight"] = linear(h, h)
    sd[p + "post_attention_layernorm.weight"] = norm()
    sd[p + "mlp.gate_proj.weight"] = linear(inter, h)
    sd[p + "mlp.up_proj.weight"] = linear(inter, h)
    sd[p + "mlp.down_proj.weight"] = linear(h, inter)
sd["model.norm.weight"] = norm(4.0)
sd["lm_head.weight"] = linear(vocab, h)
write_weights(out, sd, "bin")
del sd
size = (out / "pytorch_model.bin").stat().st_size
print(json.dumps({"stage": "write checkpoint", "s": round(time.perf_counter() - t0, 1), "bytes": size}), flush=True)
