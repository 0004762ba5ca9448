"""Run llama.cpp's tools as benchmark peers and read their numbers from what they print.

The binaries come from bench/peers/build_llamacpp.sh (CUDA: bench/peers/build-cuda/bin). Every run is
greedy (--temp 0) with all layers on the GPU (-ngl 99) and flash attention on, and gives a row with the same
fields as our rows where llama.cpp reports them: tokens generated, first-token latency (prompt eval time),
decode tokens/s and ms/token, and for speculative and lookup runs, drafted/accepted tokens and tokens per
round. Each run also records the peak GPU memory it took (nvidia-smi, where there is one).
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

PEERS = Path(__file__).resolve().parent
BUILD_DIRS = (PEERS / "build-cuda" / "bin", PEERS / "build" / "bin", PEERS / "build-quick" / "bin")
TOOLS = ("llama-bench", "llama-completion", "llama-speculative-simple", "llama-lookup", "llama-quantize")
COMMON_FLAGS = ["-ngl", "99", "-fa", "on", "--temp", "0", "--seed", "0"]
# Draft settings tried besides llama.cpp's defaults: its server's former defaults (16 drafts, stop below
# p 0.75) and our CLI's (8 drafts, stop below 0.6).
DRAFT_SETTINGS = {
    "default": [],
    "n_max16_p0.75": ["--spec-draft-n-max", "16", "--spec-draft-p-min", "0.75"],
    "n_max8_p0.6": ["--spec-draft-n-max", "8", "--spec-draft-p-min", "0.6"],
}


class LlamaCppError(RuntimeError):
    """A llama.cpp tool failed or printed no timings; the message carries the end of its output."""


def find_bin_dir(bin_dir=None) -> Path | None:
    """The folder holding llama.cpp's tools (the given one, else the first build that has them all), or None."""
    for d in [Path(bin_dir)] if bin_dir else BUILD_DIRS:
        if all((d / t).is_file() for t in TOOLS):
            return d
    return None


def missing_note(bin_dir=None) -> str:
    where = bin_dir or " or ".join(str(d.relative_to(PEERS.parents[1])) for d in BUILD_DIRS)
    return (f"llama.cpp rows skipped: its tools ({', '.join(TOOLS)}) are not in {where}; build them with "
            "bench/peers/fetch_llamacpp.sh and bench/peers/build_llamacpp.sh --cuda")


_FLOAT = r"([0-9.]+(?:e[-+]?[0-9]+)?)"


def parse_perf(text: str) -> dict:
    """Timings of llama-completion (llama_perf_context_print): prompt eval and eval lines.

    `prompt eval time = 12.34 ms / 20 tokens (...)` and `eval time = 56.78 ms / 31 runs (...)`."""
    prompt = re.search(rf"prompt eval time\s*=\s*{_FLOAT} ms\s*/\s*(\d+) tokens", text)
    decode = re.search(rf"(?<!prompt )eval time\s*=\s*{_FLOAT} ms\s*/\s*(\d+) runs", text)
    if not prompt or not decode:
        raise LlamaCppError("no llama_perf_context_print timings in the output:\n" + text[-1500:])
    runs, decode_ms = int(decode.group(2)), float(decode.group(1))
    # The first token comes out of the prompt eval; each further token is one eval run.
    return {"prompt_tokens": int(prompt.group(2)), "first_token_latency_s": float(prompt.group(1)) / 1e3,
            "tokens_generated": runs + 1, "decode_time_s": decode_ms / 1e3,
            "decode_tokens_per_s": runs / (decode_ms / 1e3) if runs else 0.0,
            "ms_per_token": decode_ms / runs if runs else 0.0}


def parse_speculative(text: str) -> dict:
    """Summary of llama-speculative-simple and llama-lookup: `encoded N tokens in X seconds`, `decoded N
    tokens in X seconds`, `n_drafted = N`, `n_accept = N`. Their "encoded" time is the prompt but its last
    token, whose evaluation (which yields the first new token) is part of the decoding time; so first-token
    latency here is slightly low and decode tokens/s slightly low against llama-completion's.

    Each round of both tools emits its accepted drafts and one token of the target's, so rounds = decoded -
    accepted. The target's timings (its context's perf lines, which count every batch of more than one token
    as "prompt eval") less the prompt's encoding give the time the decoding spent in the target model; the
    rest went to drafting (llama-speculative-simple: the draft model, which also re-reads each verified batch)
    and the host."""
    enc = re.search(rf"encoded\s+(\d+) tokens in\s+{_FLOAT} seconds", text)
    dec = re.search(rf"decoded\s+(\d+) tokens in\s+{_FLOAT} seconds", text)
    drafted = re.search(r"n_drafted\s*=\s*(\d+)", text)
    accepted = re.search(r"n_accept\s*=\s*(\d+)", text)
    if not (enc and dec and drafted and accepted):
        raise LlamaCppError("no speculative summary (encoded/decoded/n_drafted/n_accept) in the output:\n" + text[-1500:])
    n, secs = int(dec.group(1)), float(dec.group(2))
    row = {"prompt_tokens": int(enc.group(1)), "first_token_latency_s": float(enc.group(2)),
           "tokens_generated": n, "decode_time_s": secs, "decode_tokens_per_s": n / secs if secs else 0.0,
           "ms_per_token": secs / n * 1e3 if n else 0.0,
           "drafted": int(drafted.group(1)), "accepted": int(accepted.group(1))}
    row["acceptance_rate"] = row["accepted"] / row["drafted"] if row["drafted"] else 0.0
    row["rounds"] = n - row["accepted"]
    row["tokens_per_round"] = n / row["rounds"] if row["rounds"] > 0 else None
    target = _target_eval_s(text)
    if target is not None:
        row["target_time_s"] = max(0.0, target - row["first_token_latency_s"])
    return row


def _target_eval_s(text: str) -> float | None:
    """Seconds in the target model's evaluations (prompt eval + eval lines of its perf print), or None."""
    prompt = re.search(rf"prompt eval time\s*=\s*{_FLOAT} ms", text)
    decode = re.search(rf"(?<!prompt )eval time\s*=\s*{_FLOAT} ms", text)
    if not prompt or not decode:
        return None
    return (float(prompt.group(1)) + float(decode.group(1))) / 1e3


def parse_bench_json(text: str) -> list[dict]:
    """llama-bench -o json: one record per test, with n_prompt, n_gen, n_depth, avg_ts (tokens/s), avg_ns."""
    start = text.find("[")
    if start < 0:
        raise LlamaCppError("no JSON array in llama-bench's output:\n" + text[-1500:])
    records = json.loads(text[start:text.rindex("]") + 1])
    return [{k: r[k] for k in ("n_prompt", "n_gen", "n_depth", "avg_ts", "stddev_ts", "avg_ns", "type_k", "flash_attn",
                               "model_type", "build_commit") if k in r} for r in records]


class GpuMemoryPeak:
    """The most GPU memory in use while the block runs, beyond what was in use when it began: nvidia-smi
    samples every 50 ms in the background (`gib` stays None without nvidia-smi or a sample). It counts
    the whole device, so whatever else holds memory must hold it steady meanwhile."""

    def __enter__(self):
        self.gib, self._smi = None, None
        if shutil.which("nvidia-smi"):
            self._smi = subprocess.Popen(["nvidia-smi", "--id=0", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                          "-lms", "50"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._first = self._smi.stdout.readline()  # the baseline, before the block starts
        return self

    def __exit__(self, *exc):
        if self._smi is not None:
            self._smi.terminate()
            samples = [int(line) for line in (self._first + self._smi.communicate()[0]).split() if line.isdigit()]
            if samples:
                self.gib = (max(samples) - samples[0]) / 1024
        return False


def run_tool(bin_dir: Path, tool: str, args: list[str], timeout: float = 300) -> tuple[str, str, float | None]:
    """(stdout, stderr, peak GPU memory in GiB or None) of one tool run; LlamaCppError when it fails or times
    out."""
    cmd = [str(Path(bin_dir) / tool), *args]
    try:
        with GpuMemoryPeak() as memory:
            done = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LlamaCppError(f"{tool} ran past {timeout:.0f} s") from None
    if done.returncode != 0:
        raise LlamaCppError(f"{tool} exited {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}")
    return done.stdout, done.stderr, memory.gib


def generation_text(stdout: str) -> str:
    """The generated text llama-completion prints with --no-display-prompt: its stdout is the text, then
    " [end of text]\n" if it stopped at EOS, then "\n\n"."""
    return stdout.removesuffix("\n\n").removesuffix(" [end of text]\n")


def completion(bin_dir, model, prompt: str, n_predict: int, ctx: int, extra=()) -> tuple[dict, str]:
    """Plain greedy decoding of a prompt (special tokens parsed, no chat template added): (row, text)."""
    out, err, memory = run_tool(bin_dir, "llama-completion", [
        "-m", str(model), "-p", prompt, "-n", str(n_predict), "-c", str(ctx), "-no-cnv", "--no-display-prompt",
        *COMMON_FLAGS, *extra])
    return {**parse_perf(out + "\n" + err), "peak_gpu_memory_gib": memory}, generation_text(out)


def speculative(bin_dir, model, draft, prompt: str, n_predict: int, ctx: int, settings=()) -> dict:
    """Speculative decoding with a draft model (llama-speculative-simple)."""
    out, err, memory = run_tool(bin_dir, "llama-speculative-simple", [
        "-m", str(model), "-md", str(draft), "--spec-type", "draft-simple", "-ngld", "99", "-p", prompt, "-n",
        str(n_predict), "-c", str(ctx), *COMMON_FLAGS, *settings])
    return {**parse_speculative(out + "\n" + err), "peak_gpu_memory_gib": memory}


def lookup(bin_dir, model, prompt: str, n_predict: int, ctx: int, n_draft: int = 8) -> dict:
    """N-gram lookup decoding: drafts from n-grams of the prompt and the text so far (llama-lookup)."""
    out, err, memory = run_tool(bin_dir, "llama-lookup", [
        "-m", str(model), "-p", prompt, "-n", str(n_predict), "-c", str(ctx), "--spec-draft-n-max", str(n_draft),
        *COMMON_FLAGS])
    return {**parse_speculative(out + "\n" + err), "peak_gpu_memory_gib": memory}


def bench(bin_dir, model, prompt_tokens: int, new_tokens: int, repetitions: int = 3) -> dict:
    """llama-bench: prefill of prompt_tokens, and decoding of new_tokens after a context of prompt_tokens."""
    common = ["-m", str(model), "-ngl", "99", "-fa", "1", "-r", str(repetitions), "-o", "json"]
    pp = parse_bench_json(run_tool(bin_dir, "llama-bench", [*common, "-p", str(prompt_tokens), "-n", "0"])[0])[0]
    out, _, memory = run_tool(bin_dir, "llama-bench", [*common, "-p", "0", "-n", str(new_tokens), "-d", str(prompt_tokens)])
    tg = parse_bench_json(out)[0]
    return {"prompt_tokens": prompt_tokens, "tokens_generated": new_tokens,
            "first_token_latency_s": prompt_tokens / pp["avg_ts"], "decode_tokens_per_s": tg["avg_ts"],
            "ms_per_token": 1e3 / tg["avg_ts"], "peak_gpu_memory_gib": memory, "llama_bench": [pp, tg]}


def quantize(bin_dir, src, dst, qtype: str = "Q4_0") -> Path:
    """A copy of a GGUF model in another type (Q4_0 for the draft, F32/F16 to dequantize)."""
    run_tool(bin_dir, "llama-quantize", ["--allow-requantize", str(src), str(dst), qtype], timeout=900)
    return Path(dst)
