"""Embed a small Llama checkpoint exactly into a larger Llama shape (default: Baichuan2-7B's).

    python scripts/make_proxy.py SRC_DIR OUT_DIR [--dtype float16]

The proxy costs per step what a model of the larger shape costs, and its outputs are the small
model's: logits on the real vocabulary equal the original's (up to float rounding), padded vocabulary
rows never win. So a trained small model stands in for weights we cannot download, with realistic draft
acceptance. `embed_llama` works on tensors on any device, so a GPU benchmark can build the proxy in place.

How each part is embedded (d -> D hidden, hd -> HD head width, m = HD / hd):
- hidden: real channels stay at [0, d); the others are zero in every weight that reads or writes them.
  Groups along the input dimension therefore stay aligned, and an INT4 draft of the proxy quantizes
  the real weights exactly as it would the original's.
- RMSNorm averages over D instead of d: weights scale by sqrt(d / D) and eps becomes
  (d * eps - sum a^2) / D, so w * x / rms(x) is unchanged (a: the constants of the spare channels below).
- heads: original head h is proxy head h. RoPE (NeoX) rotates dim pair (i, i + hd/2) at frequency
  theta^(-2i/hd); proxy pair (m*i, HD/2 + m*i) turns at theta^(-2*m*i/HD), the same number, so Q/K dims
  i -> m*i and hd/2 + i -> HD/2 + m*i. Q rows are multiplied by sqrt(m): scores are divided by sqrt(HD),
  not sqrt(hd). V dims and o_proj columns take the first hd dims of each proxy head.
- grouped KV heads: proxy KV head j holds the original KV head of the query heads that read it; heads
  beyond the original's have zero weights and zero o_proj columns, so they contribute nothing.
- layers beyond the original's are zero: o_proj and down_proj zero make them exact identities.
- MLP: real rows/columns at [0, intermediate), the rest zero.
- vocabulary: padded rows must never win under greedy or top-k, so their logits must be below every
  real logit, for any input. Every embedding row holds a small constant a in each spare hidden channel
  (none reads or writes them); the norms see their squares, which the eps above absorbs exactly. After
  the final norm (weight gamma there) the spare channels hold gamma * a / rms' > 0; padded head rows are
  -beta there and zero elsewhere; real head rows are zero there, so real logits are untouched.
  Bounds: |real logit| <= M * sqrt(d), M the largest norm of a head row times the final norm weight
  (||x / rms|| <= sqrt(d)). The padded logit is -beta * gamma * sqrt(spare * sum a^2) / rms', and rms'
  is bounded because every sublayer reads a normalized input and so adds a bounded vector to the
  residual stream (`residual_bound`: loose, ~1e7 for SmolLM2, but rigorous). beta * gamma is twice
  what puts every padded logit below every real one; the factor 2 also covers float rounding and an
  INT4 draft's slightly different weights. Spreading the constant over all spare channels and splitting
  beta * gamma evenly keeps the weights inside float16's range (padded logits may overflow to -inf in
  float16, which is harmless: they only have to lose). The proxy's head is untied from its embeddings.
"""
import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfspec.config import MAX_SIZES, load_config, model_args_from_config  # noqa: E402
from selfspec.errors import InputError, one_line_usage_errors, run_main  # noqa: E402
from selfspec.folder import checkpoint_file, output_folder  # noqa: E402
from selfspec.memory import machine_memory_bytes  # noqa: E402
from selfspec.weights import _read_weight_file, find_weight_files  # noqa: E402

BAICHUAN2_7B_SHAPE = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                          intermediate_size=11008, vocab_size=125696)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json")
MARGIN = 2.0


class ProxyError(InputError, ValueError):
    """A checkpoint or target shape embed_llama cannot use: one `error:` line from the CLI."""


def read_llama(folder, device="cpu") -> tuple[dict, dict]:
    """(state dict with hub key names, config) of a Llama checkpoint folder; a tied head is filled in."""
    folder = Path(folder)
    config = load_config(folder)
    state = {k: t.to(device) for path in find_weight_files(folder) for k, t in _read_weight_file(path)
             if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state, config


def _spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value, from the smaller Gram matrix (a few times faster than an SVD)."""
    w = w.double()
    gram = w @ w.T if w.shape[0] < w.shape[1] else w.T @ w
    return float(torch.linalg.eigvalsh(gram)[-1].clamp(min=0)) ** 0.5


def residual_bound(state: dict, config: dict) -> float:
    """An upper bound on ||x|| of the residual stream at the final norm, for any input.

    Every sublayer reads an RMS-normalized input n with ||n|| <= max|w_norm| * sqrt(d). Attention
    mixes values convexly per head: ||out|| <= ||W_o|| * sqrt(heads) * ||W_v|| * ||n||. The MLP's
    |silu(g) * u| <= |g| * |u|, so ||out|| <= ||W_down|| * max_row||W_gate|| * ||n|| * ||W_up|| * ||n||.
    """
    d, heads = config["hidden_size"], config["num_attention_heads"]
    bound = float(state["model.embed_tokens.weight"].double().norm(dim=1).max())
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n_attn = float(state[p + "input_layernorm.weight"].double().abs().max()) * math.sqrt(d)
        n_mlp = float(state[p + "post_attention_layernorm.weight"].double().abs().max()) * math.sqrt(d)
        bound += (_spectral_norm(state[p + "self_attn.o_proj.weight"]) * math.sqrt(heads)
                  * _spectral_norm(state[p + "self_attn.v_proj.weight"]) * n_attn)
        gate_rows = float(state[p + "mlp.gate_proj.weight"].double().norm(dim=1).max())
        bound += (_spectral_norm(state[p + "mlp.down_proj.weight"]) * gate_rows * n_mlp
                  * _spectral_norm(state[p + "mlp.up_proj.weight"]) * n_mlp)
    return bound


def _check(config: dict, shape: dict) -> None:
    from selfspec.config import checkpoint_arch

    if checkpoint_arch(config) != "llama":
        raise ProxyError("embed_llama needs a Llama checkpoint")
    model_args_from_config(config)  # refuses Llama variants the engine does not run (biases, RoPE scaling)
    small = dict(config, num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]))
    for key, value in shape.items():
        if value < small[key]:
            raise ProxyError(f"target {key} {value} is smaller than the original's {small[key]}")
    hd = config["hidden_size"] // config["num_attention_heads"]
    HD, rest = divmod(shape["hidden_size"], shape["num_attention_heads"])
    if rest or HD % hd or shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ProxyError(f"target head width {shape['hidden_size']}/{shape['num_attention_heads']} must be a whole "
                         f"multiple of the original's {hd}, and the heads a multiple of the KV heads")
    if shape["vocab_size"] > config["vocab_size"] and shape["hidden_size"] <= config["hidden_size"]:
        raise ProxyError("padding the vocabulary needs one spare hidden channel")


@torch.no_grad()
def embed_llama(state: dict, config: dict, target_shape: dict, dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """(state dict, config) of a Llama model of `target_shape` (keys as BAICHUAN2_7B_SHAPE) that computes
    what (state, config) computes; see the module docstring. Tensors are made on the input's device, in
    `dtype` (default: the input's)."""
    _check(config, target_shape)
    d, L, H = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    K, I, V = config.get("num_key_value_heads", H), config["intermediate_size"], config["vocab_size"]
    D, L2, H2, K2, I2, V2 = (target_shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "num_key_value_heads", "intermediate_size", "vocab_size"))
    hd, HD = d // H, D // H2
    m = HD // hd
    eps = config.get("rms_norm_eps", 1e-6)
    embed = state["model.embed_tokens.weight"]
    device, dtype = embed.device, dtype or embed.dtype
    head = state.get("lm_head.weight", embed)

    def zeros(*shape):
        return torch.zeros(shape, device=device, dtype=dtype)

    # Where the dims of an original Q/K head go in a proxy head (RoPE frequencies coincide, see above).
    half = torch.arange(hd // 2, device=device)
    qk_dims = torch.cat((m * half, HD // 2 + m * half))
    # The original KV head each proxy KV head must hold: the one of the query heads that read it.
    kv_source = {}
    for h in range(H):
        j, g = h // (H2 // K2), h // (H // K)
        if kv_source.setdefault(j, g) != g:
            raise ValueError(f"query heads of different original KV groups would share proxy KV head {j}")

    norm_scale = math.sqrt(d / D)
    pad_vocab = V2 > V
    spare = D - d  # hidden channels that carry the constant when the vocabulary is padded
    total_a2 = d * eps / 2 if pad_vocab else 0.0  # sum of the constants' squares, absorbed by eps

    def norm(w):
        out = zeros(D)
        out[:d] = w * norm_scale
        return out

    out = {}
    for i in range(L2):
        p = f"model.layers.{i}."
        q, k, v, o = zeros(H2 * HD, D), zeros(K2 * HD, D), zeros(K2 * HD, D), zeros(D, H2 * HD)
        gate, up, down = zeros(I2, D), zeros(I2, D), zeros(D, I2)
        w_in, w_post = zeros(D), zeros(D)
        if i < L:
            src = {n: state[p + n + ".weight"].to(dtype) for n in (
                "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")}
            # Scaled before the cast to `dtype`: one rounding, not two.
            src["self_attn.q_proj"] = (state[p + "self_attn.q_proj.weight"] * math.sqrt(m)).to(dtype)
            for h in range(H):
                q[h * HD + qk_dims, :d] = src["self_attn.q_proj"][h * hd : (h + 1) * hd]
                o[:d, h * HD : h * HD + hd] = src["self_attn.o_proj"][:, h * hd : (h + 1) * hd]
            for j, g in kv_source.items():
                k[j * HD + qk_dims, :d] = src["self_attn.k_proj"][g * hd : (g + 1) * hd]
                v[j * HD : j * HD + hd, :d] = src["self_attn.v_proj"][g * hd : (g + 1) * hd]
            gate[:I, :d], up[:I, :d], down[:d, :I] = src["mlp.gate_proj"], src["mlp.up_proj"], src["mlp.down_proj"]
            w_in, w_post = norm(src["input_layernorm"]), norm(src["post_attention_layernorm"])
        out.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": o, p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": down, p + "input_layernorm.weight": w_in,
            p + "post_attention_layernorm.weight": w_post,
        })

    new_embed, new_head, final = zeros(V2, D), zeros(V2, D), norm(state["model.norm.weight"].to(dtype))
    new_embed[:V, :d], new_head[:V, :d] = embed.to(dtype), head.to(dtype)
    if pad_vocab:
        new_embed[:, d:] = math.sqrt(total_a2 / spare)
        # Padded logit = -beta * gamma * sqrt(spare * total_a2) / rms', rms'^2 = (||x||^2 + d * eps) / D;
        # real logits >= -M * sqrt(d). Spreading the constant over all spare channels gains sqrt(spare),
        # and splitting beta * gamma evenly keeps both far inside float16's range.
        M = float((head.double() * state["model.norm.weight"].double()).norm(dim=1).max())
        X = residual_bound(state, config)
        beta_gamma = MARGIN * M * math.sqrt(d) * math.sqrt(X * X + d * eps) / math.sqrt(spare * total_a2 * D)
        beta = gamma = math.sqrt(beta_gamma)
        # The largest normalized spare value, gamma * a / rms', is at ||x|| = 0 (rms'^2 = d * eps / D).
        largest = max(beta, gamma * math.sqrt(total_a2 / spare) / math.sqrt(d * eps / D))
        if largest > torch.finfo(dtype).max / 4:
            raise ValueError(f"padded vocabulary rows need weights of {largest:.3g}, too large for {dtype}")
        final[d:] = gamma
        new_head[V:, d:] = -beta
    out.update({"model.embed_tokens.weight": new_embed, "lm_head.weight": new_head, "model.norm.weight": final})

    new_config = {k: v for k, v in config.items() if k not in ("_name_or_path", "_model_name_or_path")}
    new_config.update(target_shape, head_dim=HD, tie_word_embeddings=False, rms_norm_eps=(d * eps - total_a2) / D,
                      architectures=["LlamaForCausalLM"], model_type="llama",
                      dtype=str(dtype).removeprefix("torch."))
    new_config.pop("torch_dtype", None)
    return out, new_config


def main():
    p = one_line_usage_errors(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("src", type=Path, help="Llama checkpoint folder (e.g. from scripts/convert_gguf.py)")
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    for key, value in BAICHUAN2_7B_SHAPE.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=value)
    p.add_argument("--force", action="store_true", help="replace OUT if it is not empty (its files are deleted)")
    args = p.parse_args()
    shape = {key: getattr(args, key) for key in BAICHUAN2_7B_SHAPE}
    for key, value in shape.items():
        if not 1 <= value <= MAX_SIZES[key]:
            raise InputError(f"--{key.replace('_', '-')} must be in [1, {MAX_SIZES[key]:,}], got {value}")
    h = shape["hidden_size"]  # the weights, held in memory whole before they are written
    weights = (2 * shape["vocab_size"] * h + shape["num_hidden_layers"] * h * (4 * h + 3 * shape["intermediate_size"]))
    weights *= getattr(torch, args.dtype).itemsize
    ram = machine_memory_bytes()
    if ram is not None and weights > ram:
        raise InputError(f"a proxy of this shape holds {weights / 2**30:,.1f} GiB of weights, more than this machine's "
                         f"{ram / 2**30:.1f} GiB of memory")
    if not args.src.exists():  # load_config's "has no config.json" would hide the typo
        raise InputError(f"checkpoint folder {args.src} does not exist")
    from safetensors.torch import save_file

    with output_folder(args.out, args.force) as out:  # appears only when complete
        state, config = read_llama(args.src)
        state, config = embed_llama(state, config, shape, dtype=getattr(torch, args.dtype))
        state = {k: t.contiguous() for k, t in state.items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            path = checkpoint_file(args.src, name, required=False)
            if path is not None:
                shutil.copy(path, out / name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
