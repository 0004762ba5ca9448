"""Baichuan2-Chat with self-speculative decoding: an INT4 copy of the weights drafts, FP16 verifies.

    python speculative.py --repo-id-or-model-path baichuan-inc/Baichuan2-7B-Chat --prompt "..." --n-predict 128
"""
import argparse
import json
import sys

import torch

from selfspec import InputError, run_main
from selfspec.checkpoint import SAMPLING_DEFAULTS, load_checkpoint, sampling_errors
from selfspec.cuda_graphs import graph_models
from selfspec.generate import DRAFT_SOURCES, TextStreamer, generate, pick_device
from selfspec.quantize import make_draft

DEFAULT_PROMPT = (
    "京杭大运河北起北京，南到杭州，全长约一千七百九十七公里，是世界上开凿最早、规模最大的运河之一。"
    "它的历史可以追溯到春秋时期吴国开凿的邗沟，隋朝以洛阳为中心把各段河道连成体系，"
    "元朝又截弯取直，使船只不必绕道洛阳便能从杭州直达大都。"
    "在铁路出现以前，运河是南粮北运的主要通道，沿岸的扬州、淮安、济宁等城市因漕运而兴盛。"
    "清朝后期，黄河改道和海运的兴起使运河的地位逐渐下降，部分河段淤塞废弃。"
    "二零一四年，中国大运河被列入世界文化遗产名录；"
    "如今，江苏和浙江境内的河段仍在通航，每年承担着大量煤炭、建材等货物的运输。"
    "请根据上面的材料回答：大运河在历史上为什么重要，后来又为什么衰落？"
)
DEFAULT_DRAFT = "lookup+int4"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id-or-model-path", default="baichuan-inc/Baichuan2-7B-Chat",
                   help="local checkpoint folder, or a hub id resolved through the huggingface_hub cache "
                        "(default: %(default)s)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the user's message (default: a Chinese passage and a question)")
    p.add_argument("--n-predict", type=int, default=128, help="maximum number of tokens to generate (default: %(default)s)")
    p.add_argument("--th-stop-draft", "--th_stop_draft", type=float, default=0.6,
                   help="stop drafting when the draft's top probability falls below this; adapts while running "
                        "(default: %(default)s)")
    p.add_argument("--max-step-draft", type=int, default=8, help="most tokens drafted per verification (default: %(default)s)")
    p.add_argument("--device", choices=["auto", "cuda", "xpu", "cpu"], default="auto",
                   help="auto (the default) picks xpu, then cuda, then cpu")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                   help="default: float16 on GPUs, bfloat16 on CPU")
    p.add_argument("--no-speculative", action="store_true", help="plain decoding with the same engine")
    p.add_argument("--draft", choices=DRAFT_SOURCES,
                   help=f"where drafts come from: int4 (the INT4 copy of the weights), lookup (tokens that followed the "
                        f"context's last few tokens earlier in the prompt or the answer), lookup+int4 (the lookup when it "
                        f"finds a match, else the INT4 draft) (default: {DEFAULT_DRAFT})")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float,
                   help="with --do-sample (default: the checkpoint's generation_config.json, else 1)")
    p.add_argument("--top-k", type=int, help="with --do-sample; 0 disables top-k (default: the checkpoint's, else 0)")
    p.add_argument("--top-p", type=float, help="with --do-sample; 1 disables top-p (default: the checkpoint's, else 1)")
    p.add_argument("--repetition-penalty", type=float,
                   help="penalize the prompt's and the answer's tokens as transformers does, greedy or sampling "
                        "(default: none; Baichuan2-Chat's generation_config.json asks for 1.05)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--system", default="", help="system text placed before the chat")
    p.add_argument("--raw-prompt", action="store_true", help="tokenize the prompt as is, without the chat format")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations before the timed one (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128], help="INT4 draft group size (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object on the last stdout line instead")
    p.add_argument("--backend", choices=["native", "ipex-llm"], default="native",
                   help="native (the default): this engine, which never runs code from the checkpoint; ipex-llm: the original "
                        "IPEX-LLM example on Intel GPUs (pip install -r requirements-xpu.txt), which loads the "
                        "checkpoint with trust_remote_code=True, i.e. runs the checkpoint's own Python code")

    def one_line_error(message):  # argparse prints usage too; bad input gets one line
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = one_line_error
    return p.parse_args(argv)


def check_args(args):
    if not args.prompt.strip():
        raise InputError("--prompt is empty")
    if args.n_predict <= 0:
        raise InputError(f"--n-predict must be positive, got {args.n_predict}")
    if not 0.0 <= args.th_stop_draft <= 1.0:
        raise InputError(f"--th-stop-draft must be in [0, 1], got {args.th_stop_draft}")
    if args.max_step_draft < 1:
        raise InputError(f"--max-step-draft must be at least 1, got {args.max_step_draft}")
    given = {name: getattr(args, name) for name in SAMPLING_DEFAULTS if getattr(args, name) is not None}
    errors = sampling_errors(**given)  # ["top_p must be in (0, 1] (1: off), got 0.0"]: the flag's name first
    if errors:
        raise InputError("--" + errors[0].replace("_", "-", 1))
    if args.repetition_penalty is not None and not 0 < args.repetition_penalty < float("inf"):
        raise InputError(f"--repetition-penalty must be positive and finite, got {args.repetition_penalty}")
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise InputError(f"--seed must be in [0, 2**64), got {args.seed}")
    if args.warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {args.warmup}")
    for flag, text in (("--prompt", args.prompt), ("--system", args.system)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
            raise InputError(f"{flag} is not valid UTF-8 text") from None
    if not args.do_sample and given:
        print("warning: --temperature, --top-k and --top-p apply only with --do-sample", file=sys.stderr)
    if args.raw_prompt and args.system:
        print("warning: --system is not used with --raw-prompt", file=sys.stderr)
    if args.no_speculative and args.draft is not None:
        print("warning: --draft is not used with --no-speculative", file=sys.stderr)


def main(argv=None) -> int:
    args = parse_args(argv)

    def run_explaining_out_of_memory():
        try:
            return run(args)
        except torch.OutOfMemoryError as e:  # the check before loading only refuses what can never fit
            reason = ". ".join(str(e).split(". ")[:3])  # "CUDA out of memory. Tried to allocate ... is free"
            hint = "" if args.no_speculative else "; --no-speculative leaves out the INT4 draft"
            raise InputError(f"{reason}. Another process may be using the device{hint}.") from None

    return run_main(run_explaining_out_of_memory)  # one `error:` line and status 2 for bad input, and so on


def run(args) -> int:
    check_args(args)
    if args.backend == "ipex-llm":  # imported here: only this path needs the ipex_llm package
        from selfspec.ipex_llm_backend import print_record, run_ipex_llm
        print_record(run_ipex_llm(args, defaults=parse_args([])), args.json)
        return 0
    device = pick_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cpu" else "float16"))
    draft_source = None if args.no_speculative else args.draft or DEFAULT_DRAFT
    uses_int4 = draft_source in ("int4", "lookup+int4")
    ckpt, model, tokenizer = load_checkpoint(args.repo_id_or_model_path, dtype, device,
                                             draft_group_size=args.group_size if uses_int4 else None)
    context = model.max_seq_len
    if args.n_predict >= context:
        raise InputError(f"--n-predict {args.n_predict} leaves no room for the prompt in the context of {context}")
    room = context - args.n_predict
    # The user's message must fit whole (in the chat format); only the system text may be cut to make room.
    needed = len(tokenizer.encode(args.prompt) if args.raw_prompt else
                 ckpt.chat_ids(tokenizer, args.prompt, max_input_tokens=sys.maxsize)[0])
    if needed > room:
        raise InputError(f"--n-predict {args.n_predict} leaves room for {room} prompt tokens in the context of "
                         f"{context}, and the prompt needs {needed}: shorten the prompt or lower --n-predict")
    if args.raw_prompt:
        input_ids, truncated = tokenizer.encode(args.prompt), False
    else:
        input_ids, truncated = ckpt.chat_ids(tokenizer, args.prompt, system=args.system, max_input_tokens=room)
    if truncated:
        print(f"warning: prompt truncated from the left to {len(input_ids)} tokens to leave room for "
              f"{args.n_predict} new tokens", file=sys.stderr)

    repetition_penalty = args.repetition_penalty or 1.0
    sampling = {}
    if args.do_sample:  # flags first, then the checkpoint's generation_config.json
        sampling = ckpt.sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        if ckpt.repetition_penalty not in (None, 1.0) and args.repetition_penalty is None:
            print(f"warning: the checkpoint's repetition_penalty {ckpt.repetition_penalty} is not applied "
                  f"(--repetition-penalty {ckpt.repetition_penalty} applies it)", file=sys.stderr)
    draft = make_draft(model, group_size=args.group_size) if uses_int4 else None
    if device.type == "cuda":  # replay decode steps as CUDA graphs (captured during the warm-up)
        model, draft = graph_models(model, draft)
    options = dict(
        draft=draft, draft_source=draft_source or "int4", do_sample=args.do_sample, **sampling,
        repetition_penalty=repetition_penalty, th_stop_draft=args.th_stop_draft, max_step_draft=args.max_step_draft,
        eos_token_id=ckpt.eos_token_id,
    )

    def seeded():  # a fresh generator per run: the timed run samples the same whatever --warmup is
        return torch.Generator(device).manual_seed(args.seed) if args.seed is not None else None

    for _ in range(args.warmup):
        generate(model, input_ids, args.n_predict, generator=seeded(), **options)
    streamer = None if args.json else TextStreamer(tokenizer)
    output_ids, stats = generate(model, input_ids, args.n_predict, streamer=streamer, generator=seeded(), **options)

    answer_ids = [t for t in output_ids if t != ckpt.eos_token_id]
    if args.json:
        record = {"text": tokenizer.decode(answer_ids), "token_ids": output_ids, **stats.as_dict(),
                  "speculative": draft_source is not None, "draft_source": draft_source, "sampling": sampling or None,
                  "repetition_penalty": repetition_penalty, "device": device.type,
                  "dtype": str(dtype).removeprefix("torch.")}
        print(json.dumps(record, ensure_ascii=False))
        return 0
    print(f"Tokens generated {stats.tokens_generated}")
    print(f"E2E Generation time {stats.e2e_time_s:.4f}s")
    print(f"First token latency {stats.first_token_latency_s:.4f}s")
    if draft_source is not None:
        print(f"Draft tokens proposed {stats.drafted}")
        print(f"Draft tokens accepted {stats.accepted}")
        print(f"Acceptance rate {stats.acceptance_rate:.2%}")
        print(f"Verification steps {stats.verify_steps}")
        print(f"Tokens per verification step {stats.tokens_per_step:.2f}")
    print(f"Decode speed {stats.decode_tokens_per_s:.2f} tokens/s")
    if draft_source in ("lookup", "lookup+int4"):  # where the drafts above came from
        print(f"Lookup tokens proposed {stats.lookup_drafted}")
        print(f"Lookup tokens accepted {stats.lookup_accepted}")
        print(f"Lookup verification steps {stats.lookup_steps}")
    if draft_source == "lookup+int4":
        print(f"INT4 draft tokens proposed {stats.drafted - stats.lookup_drafted}")
        print(f"INT4 draft tokens accepted {stats.accepted - stats.lookup_accepted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
