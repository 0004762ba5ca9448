"""--backend ipex-llm: the original IPEX-LLM Baichuan2 self-speculative example, on Intel GPUs.

For users who already run the IPEX-LLM stack (requirements-xpu.txt). This is not the native engine:
  * IPEX-LLM loads the checkpoint through transformers with trust_remote_code=True, so the checkpoint's
    own modeling and tokenizer code runs (the native engine never runs checkpoint code);
  * IPEX-LLM builds its own draft, and its generate() silently drops keyword arguments it does not
    know and applies the checkpoint's generation_config repetition_penalty even with do_sample=False,
    so its "greedy" output can differ from the native engine's greedy output;
  * Baichuan2's tokenization_baichuan.py calls super().__init__() before loading its SentencePiece
    model, which fails on transformers >= 4.34 ("no attribute 'sp_model'"); see requirements-xpu.txt.
Written to IPEX-LLM's documented API (its GPU Baichuan2 speculative example); not run on Intel
hardware by this project.
"""
import json
import time

import torch

from selfspec.errors import InputError

PROMPT_FORMAT = "<reserved_106> {prompt} <reserved_107>"  # as the IPEX-LLM Baichuan2 example wraps it
INSTALL_HINT = "install it with: pip install -r requirements-xpu.txt (see the comments there)"
# Options of the native engine that IPEX-LLM's path does not use; refused rather than silently ignored.
NATIVE_ONLY = ("no_speculative", "interactive", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
               "seed", "system", "raw_prompt", "max_step_draft", "group_size", "draft", "second_choices",
               "lookup_after_draft")


def check_options(args, defaults) -> None:
    """Refuse what this path cannot honour; `defaults` is the parser's Namespace for no arguments."""
    if args.device not in ("auto", "xpu"):
        raise InputError(f"--backend ipex-llm runs on Intel GPUs only: use --device xpu (or auto), "
                         f"not --device {args.device}")
    unused = [name for name in NATIVE_ONLY if getattr(args, name) != getattr(defaults, name)]
    if args.dtype not in (None, "float16"):
        unused.append("dtype")
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        raise InputError(f"--backend ipex-llm does not support {flags} (native backend only)")


def load_tokenizer(path):
    """The checkpoint's own tokenizer, as the IPEX-LLM example uses it (runs checkpoint code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    except AttributeError as e:
        if "sp_model" not in str(e):
            raise
        import transformers
        raise InputError(f"the checkpoint's tokenization_baichuan.py does not work with transformers "
                         f"{transformers.__version__} ({e}); see requirements-xpu.txt") from e


def synchronize() -> None:
    torch.xpu.synchronize()  # XPU work is asynchronous: stop the clock only when it has finished


def run_ipex_llm(args, defaults) -> dict:
    """Load, warm up, time one generation; returns the record that print_record prints."""
    check_options(args, defaults)
    try:  # imported here so that CPU installs and tests never need ipex_llm
        from ipex_llm.transformers import AutoModelForCausalLM
    except ImportError as e:
        raise InputError(f"--backend ipex-llm needs the ipex_llm package ({e}); {INSTALL_HINT}") from e
    # ipex_llm imports intel_extension_for_pytorch, which provides torch.xpu on its PyTorch 2.1 builds.
    if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise InputError("--backend ipex-llm: ipex_llm is installed but PyTorch finds no XPU device; check the "
                         "Intel GPU driver and oneAPI runtime (source /opt/intel/oneapi/setvars.sh, "
                         "or run through scripts/run_xpu.sh)")

    path = args.repo_id_or_model_path
    # speculative=True makes IPEX-LLM build the low-bit draft from the same weights; it only works with
    # load_in_low_bit="fp16" on Intel GPUs.
    model = AutoModelForCausalLM.from_pretrained(path, optimize_model=True, torch_dtype=torch.float16,
                                                 load_in_low_bit="fp16", speculative=True,
                                                 trust_remote_code=True, use_cache=True)
    model = model.to("xpu")
    tokenizer = load_tokenizer(path)

    options = dict(max_new_tokens=args.n_predict, th_stop_draft=args.th_stop_draft, do_sample=False)
    with torch.inference_mode():
        input_ids = tokenizer(PROMPT_FORMAT.format(prompt=args.prompt), return_tensors="pt").input_ids
        input_ids = input_ids.to(model.device)
        for _ in range(args.warmup):
            model.generate(input_ids, **options)
        start = time.perf_counter()
        output = model.generate(input_ids, **options)
        synchronize()
        e2e_time = time.perf_counter() - start

    token_ids = output[0, input_ids.shape[1]:].tolist()  # generate returns prompt + new tokens
    # IPEX-LLM keeps its draft statistics on the model; older or other versions may not.
    drafted, accepted = getattr(model, "n_drafted", None), getattr(model, "n_matched", None)
    return {
        "text": tokenizer.decode(token_ids, skip_special_tokens=True),
        "token_ids": token_ids,
        "prompt_tokens": input_ids.shape[1],
        "tokens_generated": model.n_token_generated,
        "e2e_time_s": e2e_time,
        "first_token_latency_s": model.first_token_time,
        "drafted": drafted,
        "accepted": accepted,
        "acceptance_rate": accepted / drafted if drafted and accepted is not None else None,
        "backend": "ipex-llm",
        "speculative": True,
        "device": "xpu",
        "dtype": "float16",
    }


def print_record(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record, ensure_ascii=False))
        return
    print(record["text"])
    print(f"Tokens generated {record['tokens_generated']}")
    print(f"E2E Generation time {record['e2e_time_s']:.4f}s")
    print(f"First token latency {record['first_token_latency_s']:.4f}s")
