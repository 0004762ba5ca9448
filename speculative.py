"""Baichuan2-Chat with self-speculative decoding: an INT4 copy of the weights drafts, FP16 verifies.

    python speculative.py --repo-id-or-model-path baichuan-inc/Baichuan2-7B-Chat --prompt "..." --n-predict 128
    python speculative.py --repo-id-or-model-path CKPT --prompt-file passage.txt
    python speculative.py --repo-id-or-model-path CKPT --interactive      # a chat in the terminal

Decoding is self-speculative on GPUs and plain on CPU, where verifying several tokens costs about as
many one-token steps as the drafts save; --speculative and --no-speculative choose.
"""
import argparse
import json
import os
import signal
import sys

# Importing torch takes seconds: Ctrl-C during it ends the program as Ctrl-C later does (run_main), with one
# line and status 130 rather than a traceback from inside the import.
signal.signal(signal.SIGINT, lambda *_: (print("interrupted", file=sys.stderr), os._exit(130)))
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from selfspec import __version__, accel  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.config import SAMPLING_DEFAULTS, SAMPLING_RULES, sampling_errors  # noqa: E402
from selfspec.device import pick_device  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.errors import InputError, one_line_usage_errors, run_main  # noqa: E402
from selfspec.folder import read_bounded  # noqa: E402
from selfspec.generate import DRAFT_SOURCES, TextStreamer, generate  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)

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
PROMPT_FILE_MAX_BYTES = 16 << 20  # far more text than any context holds; a larger file (or /dev/zero) is a mistake
END_OF_CHAT = "/exit"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id-or-model-path", default="baichuan-inc/Baichuan2-7B-Chat",
                   help="local checkpoint folder, or a hub id resolved through the huggingface_hub cache "
                        "(default: %(default)s)")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="the user's message; - reads it from stdin (default: a Chinese passage and a "
                                         "question; with --interactive, none: the chat starts with a line from stdin)")
    prompt.add_argument("--prompt-file", metavar="PATH", help="read the user's message from this UTF-8 text file")
    p.add_argument("--interactive", action="store_true",
                   help="chat in the terminal: each line on stdin is a message, answered as it streams, with the "
                        f"statistics after each answer; an empty line, {END_OF_CHAT} or end of input ends it. The "
                        "conversation stays in the KV cache (each turn prefills only its new tokens); when the context "
                        "fills up, the oldest turns are dropped")
    p.add_argument("--n-predict", type=int, default=128, help="maximum number of tokens to generate (default: %(default)s)")
    p.add_argument("--th-stop-draft", "--th_stop_draft", type=float, default=0.6,
                   help="stop drafting when the draft's top probability falls below this; adapts while running "
                        "(default: %(default)s)")
    p.add_argument("--max-step-draft", type=int, default=8, help="most tokens drafted per verification (default: %(default)s)")
    p.add_argument("--device", choices=["auto", "cuda", "xpu", "cpu"], default="auto",
                   help="auto (the default) picks xpu, then cuda, then cpu")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                   help="default: float16 on GPUs, bfloat16 on CPU")
    speculation = p.add_mutually_exclusive_group()
    speculation.add_argument("--speculative", action="store_true",
                             help="decode self-speculatively (the default on GPUs)")
    speculation.add_argument("--no-speculative", action="store_true",
                             help="plain decoding with the same engine (the default on CPU)")
    p.add_argument("--draft", choices=DRAFT_SOURCES,
                   help=f"where drafts come from: int4 (the INT4 copy of the weights), lookup (tokens that followed the "
                        f"context's last few tokens earlier in the prompt or the answer), lookup+int4 (the lookup when it "
                        f"finds a match, else the INT4 draft) (default: {DEFAULT_DRAFT}; given on CPU, it implies --speculative)")
    p.add_argument("--second-choices", action=argparse.BooleanOptionalAction,
                   help="greedy decoding with the INT4 draft: each verification also checks the draft's second choice "
                        "beside each draft, which gives one more token where the target chose it (default: on where "
                        "it applies)")
    p.add_argument("--lookup-after-draft", action=argparse.BooleanOptionalAction,
                   help="with --draft lookup+int4: once the INT4 draft's drafts end in a few tokens that stand earlier "
                        "in the context, what followed them there is verified after them in the same pass (default: "
                        "on where it applies)")
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
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--backend", choices=["native", "ipex-llm"], default="native",
                   help="native (the default): this engine, which never runs code from the checkpoint; ipex-llm: the original "
                        "IPEX-LLM example on Intel GPUs (pip install -r requirements-xpu.txt), which loads the "
                        "checkpoint with trust_remote_code=True, i.e. runs the checkpoint's own Python code")
    return one_line_usage_errors(p).parse_args(argv)


def read_prompt(args) -> tuple[str | None, str]:
    """(the prompt text, the flag it came from, for messages): --prompt, --prompt - (stdin) or --prompt-file;
    None when none was given."""
    if args.prompt_file is None and args.prompt != "-":
        return args.prompt, "--prompt"
    flag = "--prompt -" if args.prompt_file is None else f"--prompt-file {args.prompt_file}"
    try:
        if args.prompt_file is None:
            data = sys.stdin.buffer.read(PROMPT_FILE_MAX_BYTES + 1)
        else:
            data = read_bounded(args.prompt_file, PROMPT_FILE_MAX_BYTES)  # a fifo without a writer reads as empty
    except OSError as err:
        raise InputError(f"cannot read {flag}: {err.strerror}") from None
    if len(data) > PROMPT_FILE_MAX_BYTES:
        raise InputError(f"{flag} holds more than {PROMPT_FILE_MAX_BYTES >> 20} MiB of text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{flag} is not valid UTF-8 text") from None
    return text.rstrip("\r\n"), flag  # a file's or echo's final newline is not part of the message


def check_args(args):
    if (args.interactive or args.prompt == "-") and sys.stdin is None:  # started with stdin closed (`<&-`)
        raise InputError(f"{'--interactive' if args.interactive else '--prompt -'} reads stdin, which is closed")
    if args.interactive and args.prompt == "-":
        raise InputError("--interactive reads the conversation from stdin; give the first message with --prompt "
                         "TEXT or --prompt-file PATH instead of --prompt -")
    if args.interactive and args.raw_prompt:
        raise InputError("--interactive needs the chat format; it does not work with --raw-prompt")
    args.prompt, prompt_flag = read_prompt(args)
    if args.prompt is None and not args.interactive:
        args.prompt = DEFAULT_PROMPT
    if args.prompt is not None and not args.prompt.strip():
        raise InputError(f"{prompt_flag} is empty")
    if args.n_predict <= 0:
        raise InputError(f"--n-predict must be positive, got {args.n_predict}")
    if not 0.0 <= args.th_stop_draft <= 1.0:
        raise InputError(f"--th-stop-draft must be in [0, 1], got {args.th_stop_draft}")
    if args.max_step_draft < 1:
        raise InputError(f"--max-step-draft must be at least 1, got {args.max_step_draft}")
    given = {name: getattr(args, name) for name in SAMPLING_RULES if getattr(args, name) is not None}
    errors = sampling_errors(**given)  # ["top_p must be in (0, 1] (1: off), got 0.0"]: the flag's name first
    if errors:
        raise InputError("--" + errors[0].replace("_", "-", 1))
    if args.seed is not None and not 0 <= args.seed < 2**64:
        raise InputError(f"--seed must be in [0, 2**64), got {args.seed}")
    if not 0 <= args.warmup <= 100:  # more only spends time: nothing is measured of them
        raise InputError(f"--warmup must be in [0, 100], got {args.warmup}")
    for flag, text in ((prompt_flag, args.prompt or ""), ("--system", args.system)):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as lone surrogates
            raise InputError(f"{flag} is not valid UTF-8 text") from None
    if not args.do_sample and any(name in given for name in SAMPLING_DEFAULTS):
        print("warning: --temperature, --top-k and --top-p apply only with --do-sample", file=sys.stderr)
    if args.raw_prompt and args.system:
        print("warning: --system is not used with --raw-prompt", file=sys.stderr)
    if args.no_speculative and args.draft is not None:
        print("warning: --draft is not used with --no-speculative", file=sys.stderr)


def main(argv=None) -> int:
    def run_explaining_out_of_memory():
        args = parse_args(argv)  # in here too: --help into a full disk is a write error like any other
        try:
            return run(args)
        except torch.OutOfMemoryError as e:  # the check before loading only refuses what can never fit
            reason = ". ".join(str(e).split(". ")[:3])  # "CUDA out of memory. Tried to allocate ... is free"
            hint = "; --no-speculative leaves out the INT4 draft" if args.speculative else ""
            raise InputError(f"{reason}. Another process may be using the device{hint}.") from None

    return run_main(run_explaining_out_of_memory)  # one `error:` line and status 2 for bad input, and so on


def run(args) -> int:
    check_args(args)
    if args.backend == "ipex-llm":  # imported here: only this path needs the ipex_llm package
        from backends.ipex_llm import print_record, run_ipex_llm
        print_record(run_ipex_llm(args, defaults=parse_args([])), args.json)
        return 0
    device = pick_device(args.device)
    # On CPU a verify pass over k+1 tokens costs about k+1 one-token steps (arithmetic-bound), so plain
    # decoding is the faster default there (README, docs/performance.md). Kept on args for main()'s
    # out-of-memory hint.
    args.speculative = args.speculative or (not args.no_speculative and (device.type != "cpu" or args.draft is not None))
    draft_source = (args.draft or DEFAULT_DRAFT) if args.speculative else None
    uses_int4 = draft_source in ("int4", "lookup+int4")
    applies = uses_int4 and not args.do_sample
    if args.second_choices and not applies:
        raise InputError("--second-choices checks the INT4 draft's greedy drafts: it needs speculative decoding with "
                         "--draft int4 or lookup+int4, without --do-sample")
    second_choices = applies if args.second_choices is None else args.second_choices
    if args.lookup_after_draft and draft_source != "lookup+int4":
        raise InputError("--lookup-after-draft continues the INT4 draft's drafts with the lookup's: it needs "
                         "speculative decoding with --draft lookup+int4")
    lookup_after_draft = draft_source == "lookup+int4" and args.lookup_after_draft is not False
    if draft_source and device.type == "cuda" and args.max_step_draft + 1 > accel.MAX_VERIFY_TOKENS:
        raise InputError(f"--max-step-draft {args.max_step_draft} is more than the CUDA path verifies in one pass: "
                         f"at most {accel.MAX_VERIFY_TOKENS - 1}")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cpu" else "float16"))
    ckpt, model, tokenizer = load_checkpoint(args.repo_id_or_model_path, dtype, device,
                                             draft_group_size=args.group_size if uses_int4 else None)
    context = model.max_seq_len
    if args.n_predict >= context:
        raise InputError(f"--n-predict {args.n_predict} leaves no room for the prompt in the context of {context}")
    room = context - args.n_predict
    if args.prompt is not None:  # the user's message must fit whole (in the chat format); the system text may be cut
        needed = len(tokenizer.encode(args.prompt) if args.raw_prompt else
                     ckpt.chat_ids(tokenizer, args.prompt, max_input_tokens=sys.maxsize)[0])
        if needed > room:
            raise InputError(f"--n-predict {args.n_predict} leaves room for {room} prompt tokens in the context of "
                             f"{context}, and the prompt needs {needed}: shorten the prompt or lower --n-predict")

    repetition_penalty = args.repetition_penalty or 1.0
    sampling = {}
    if args.do_sample:  # flags first, then the checkpoint's generation_config.json
        sampling = ckpt.sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        if ckpt.repetition_penalty not in (None, 1.0) and args.repetition_penalty is None:
            usable = not sampling_errors(repetition_penalty=ckpt.repetition_penalty)
            print(f"warning: the checkpoint's repetition_penalty {ckpt.repetition_penalty} is not applied"
                  + (f" (--repetition-penalty {ckpt.repetition_penalty} applies it)" if usable else ""), file=sys.stderr)
    draft = build_draft(model, args.group_size, quiet=args.json) if uses_int4 else None
    # The device's kernels; on CUDA decode steps replay as CUDA graphs (captured during the warm-up).
    model, draft = accel.apply(model, draft)
    options = dict(
        draft=draft, draft_source=draft_source or "int4", do_sample=args.do_sample, **sampling,
        repetition_penalty=repetition_penalty, th_stop_draft=args.th_stop_draft, max_step_draft=args.max_step_draft,
        eos_token_id=ckpt.eos_token_id, second_choices=second_choices, lookup_after_draft=lookup_after_draft,
    )
    fields = {"speculative": draft_source is not None, "draft_source": draft_source,
              "second_choices": second_choices, "lookup_after_draft": lookup_after_draft, "sampling": sampling or None,
              "repetition_penalty": repetition_penalty, "device": device.type,
              "dtype": str(dtype).removeprefix("torch.")}

    def seeded():  # a fresh generator per run: the timed run samples the same whatever --warmup is
        return torch.Generator(device).manual_seed(args.seed) if args.seed is not None else None

    if args.interactive:
        return chat(args, ckpt, model, tokenizer, options, fields, seeded())

    if args.raw_prompt:
        input_ids, truncated = tokenizer.encode(args.prompt), False
        if not input_ids:
            raise InputError("the prompt gives no tokens with this checkpoint's tokenizer")
    else:
        input_ids, truncated = ckpt.chat_ids(tokenizer, args.prompt, system=args.system, max_input_tokens=room)
    if truncated:
        print(f"warning: the prompt was cut from the left, the system text first, to {len(input_ids)} tokens to "
              f"leave room for {args.n_predict} new tokens", file=sys.stderr)

    for _ in range(args.warmup):
        generate(model, input_ids, args.n_predict, generator=seeded(), **options)
    streamer = None if args.json else TextStreamer(tokenizer)
    output_ids, stats = generate(model, input_ids, args.n_predict, streamer=streamer, generator=seeded(), **options)
    answer = tokenizer.decode([t for t in output_ids if t != ckpt.eos_token_id])
    print_result(args, answer, output_ids, stats, fields)
    return 0


def build_draft(model, group_size: int, quiet: bool):
    """make_draft, with a progress bar on stderr when it takes more than a moment (minutes for a 7B model on
    CPU); none with --json or when stderr is not a terminal."""
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    with tqdm(total=total, desc="building the INT4 draft", unit=" weights", unit_scale=True, delay=1.0,
              file=sys.stderr, disable=True if quiet else None, leave=False) as bar:
        return make_draft(model, group_size=group_size, on_weight=lambda weight: bar.update(weight.numel()))


def print_result(args, answer: str, output_ids: list[int], stats, fields: dict):
    """The statistics lines after the streamed answer, or with --json one JSON object on one line."""
    if args.json:
        record = {"text": answer, "token_ids": output_ids, **stats.as_dict(), **fields}
        print(json.dumps(record, ensure_ascii=False), flush=True)
        return
    print(f"Tokens generated {stats.tokens_generated}")
    print(f"E2E Generation time {stats.e2e_time_s:.4f}s")
    print(f"First token latency {stats.first_token_latency_s:.4f}s")
    if fields["speculative"]:
        print(f"Draft tokens proposed {stats.drafted}")
        print(f"Draft tokens accepted {stats.accepted}")
        print(f"Acceptance rate {stats.acceptance_rate:.2%}")
        print(f"Verification steps {stats.verify_steps}")
        print(f"Tokens per verification step {stats.tokens_per_step:.2f}")
    print(f"Decode speed {stats.decode_tokens_per_s:.2f} tokens/s")
    source = fields["draft_source"]
    if source in ("lookup", "lookup+int4"):  # where the drafts above came from
        print(f"Lookup tokens proposed {stats.lookup_drafted}")
        print(f"Lookup tokens accepted {stats.lookup_accepted}")
        print(f"Lookup verification steps {stats.lookup_steps}")
    if source == "lookup+int4":
        print(f"INT4 draft tokens proposed {stats.drafted - stats.lookup_drafted}")
        print(f"INT4 draft tokens accepted {stats.accepted - stats.lookup_accepted}")
    if fields["second_choices"]:
        print(f"Second choices verified {stats.leaves}")
        print(f"Second choices accepted {stats.leaves_accepted}")
    sys.stdout.flush()


def read_message() -> str | None:
    """The user's next message: one line of stdin; None at the end of the chat (end of input, an empty line
    or END_OF_CHAT)."""
    if sys.stdin.isatty():
        print("> ", end="", file=sys.stderr, flush=True)
    try:
        line = sys.stdin.buffer.readline(PROMPT_FILE_MAX_BYTES + 1)  # bounded: /dev/zero has no line end
    except OSError as err:
        raise InputError(f"cannot read stdin: {err.strerror}") from None
    if len(line) > PROMPT_FILE_MAX_BYTES:
        raise InputError(f"a line on stdin holds more than {PROMPT_FILE_MAX_BYTES >> 20} MiB of text")
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InputError("a line on stdin is not valid UTF-8 text") from None
    return None if text.strip() in ("", END_OF_CHAT) else text


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def chat(args, ckpt, model, tokenizer, options: dict, fields: dict, generator) -> int:
    """--interactive: a multi-turn chat on stdin/stdout that keeps the conversation in the KV cache.

    Each turn builds the whole conversation's ids in the chat format and prefills only those after the
    longest prefix the cache holds already (the earlier turns, unless re-tokenizing an answer gives other
    ids). When the conversation no longer leaves room for --n-predict new tokens, its oldest turns are
    dropped; the ids then change from the start and the cache is prefilled again."""
    budget = model.max_seq_len - args.n_predict  # most ids of a turn's input
    if sys.stdin.isatty():
        print(f"Chat with the model; an empty line or {END_OF_CHAT} ends it.", file=sys.stderr)
    for _ in range(args.warmup):  # a short one: on CUDA it captures the first graphs before the user waits
        greeting, _ = ckpt.chat_ids(tokenizer, "Hello", system=args.system, max_input_tokens=budget)
        generate(model, greeting, min(args.n_predict, 16), **options)
    messages: list[dict] = []  # the conversation in the context: user and assistant messages, alternating
    cached: list[int] = []  # the ids whose keys and values the KV cache holds, from position 0
    message = args.prompt  # --prompt or --prompt-file opens the chat
    while True:
        if message is None:
            message = read_message()
            if message is None:
                return 0
        messages.append({"role": "user", "content": message})
        message = None
        input_ids, truncated = ckpt.chat_ids(tokenizer, messages, system=args.system, max_input_tokens=budget)
        dropped = 0
        while truncated and len(messages) > 1:  # drop the oldest turn: a user message and its answer
            messages, dropped = messages[2:], dropped + 1
            input_ids, truncated = ckpt.chat_ids(tokenizer, messages, system=args.system, max_input_tokens=budget)
        if dropped:
            print(f"warning: dropped the {dropped} oldest turn(s) of the conversation to leave room for "
                  f"{args.n_predict} new tokens", file=sys.stderr)
        if truncated:
            print(f"warning: the conversation was cut from the left, the system text first, to {len(input_ids)} "
                  f"tokens to leave room for {args.n_predict} new tokens", file=sys.stderr)
        reused = common_prefix_length(cached, input_ids[:-1])  # at least one id must be new
        streamer = None if args.json else TextStreamer(tokenizer)
        output_ids, stats = generate(model, input_ids, args.n_predict, cached_tokens=reused, streamer=streamer,
                                     generator=generator, **options)
        cached = input_ids + output_ids[:-1]  # the last id was emitted but never run through the model
        answer = tokenizer.decode([t for t in output_ids if t != ckpt.eos_token_id])
        messages.append({"role": "assistant", "content": answer})
        print_result(args, answer, output_ids, stats, fields)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # stdout closed early (`| head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting does not flush into it
        sys.exit(1)
