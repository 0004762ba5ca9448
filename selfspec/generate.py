"""Prefill, plain decoding and the self-speculative draft/verify loop, sampling and statistics, and the
device they run on.

One speculative round, with `token` the last emitted token at position `pos` (not yet in the cache):
  1. with a lookup (draft_source "lookup" or "lookup+int4"), the tokens that followed the context's
     last n-gram earlier in the context (lookup.py) are the drafts d1..dk, copied to the device at once;
     else the INT4 draft proposes d1..dk one token at a time, reading the target's cache for the
     verified prefix and writing its own entries at pos..pos+k-1;
  2. the FP16 target runs once over [token, d1..dk] at pos..pos+k, overwriting those entries;
  3. greedy: keep the longest prefix of drafts equal to the target's argmax, plus the target's next
     token; sampling: standard speculative sampling (min(1, p/q) acceptance, residual resampling).
The cache needs no rollback: the next round starts writing right after the accepted tokens, and
attention never reads past the current query position.
"""
import sys
import time
from dataclasses import asdict, dataclass

import torch

from . import InputError, accel
from .accel import topk
from .lookup import NgramLookup

# IPEX-LLM's auto_th_stop_draft: an EMA of the per-round match ratio steers the stop threshold.
MATCH_EMA = 0.5  # weight of the previous EMA value
TARGET_MATCH = 0.9  # raise the threshold (draft less) while the EMA is under this
TH_STEP = 0.01  # size of one nudge
TH_SMOOTHING = 0.9  # th = 0.9 * th + 0.1 * nudged th

# Where a round's drafts come from: the INT4 draft; the context (prompt lookup); the context when its last
# n-gram occurred before, else the INT4 draft.
DRAFT_SOURCES = ("int4", "lookup", "lookup+int4")


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    tokens_generated: int = 0
    first_token_latency_s: float = 0.0
    e2e_time_s: float = 0.0
    drafted: int = 0  # draft tokens proposed (lookup and INT4 draft together)
    accepted: int = 0  # draft tokens the target accepted
    lookup_drafted: int = 0  # of `drafted`, the tokens the prompt lookup proposed
    lookup_accepted: int = 0  # of `accepted`, the lookup's
    lookup_steps: int = 0  # verification rounds whose drafts began with a lookup proposal
    verify_steps: int = 0  # target forward passes after the prefill (one per round, or per plain step)
    final_th_stop_draft: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens emitted per target forward pass after the first token (1.0 for plain decoding)."""
        return (self.tokens_generated - 1) / self.verify_steps if self.verify_steps else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        decode_time = self.e2e_time_s - self.first_token_latency_s
        return (self.tokens_generated - 1) / decode_time if decode_time > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "acceptance_rate": self.acceptance_rate,
            "tokens_per_step": self.tokens_per_step,
            "tokens_per_s": self.tokens_generated / self.e2e_time_s if self.e2e_time_s else 0.0,
            "decode_tokens_per_s": self.decode_tokens_per_s,
        }


@dataclass
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def distribution(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Temperature, then top-k, then top-p, over the last dimension: (float32 probabilities, the token ids
        they belong to). With top-k both are [..., k], the most likely first, and the vocabulary is passed over
        once (on CUDA in accel/topk.py); exactly k are kept: of tokens that tie with the k-th, the lower ids on
        CUDA, torch.topk's choice elsewhere. Without top-k the probabilities cover the vocabulary, ids None."""
        if 0 < self.top_k < logits.shape[-1]:
            values, ids = topk.largest(logits, self.top_k)
            values = values / max(self.temperature, 1e-5)
            probs = values.softmax(-1)
            if self.top_p < 1.0:  # the top-p rule below, on the k
                probs = values.masked_fill(probs.cumsum(-1) - probs > self.top_p, float("-inf")).softmax(-1)
            return probs, ids
        logits = logits.float() / max(self.temperature, 1e-5)
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            sorted_probs = sorted_logits.softmax(-1)
            # Drop a token when the tokens ranked above it already hold top_p of the mass.
            drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) > self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits.softmax(-1), None

    def sample(self, logits: torch.Tensor, generator=None):
        """(a token drawn from logits [vocab], as a 0-d tensor on their device; the probabilities and ids it
        was drawn from, as `distribution` gives them). With top-k the draw is among the k candidates."""
        probs, ids = self.distribution(logits)
        choice = torch.multinomial(probs, 1, generator=generator)
        return (choice if ids is None else ids.gather(0, choice))[0], probs, ids

    def pick(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        """Next token for logits [vocab], as a 0-d tensor on the logits' device (no host sync)."""
        if not self.do_sample:
            return greedy_pick(logits)[0]
        return self.sample(logits, generator)[0]


def greedy_pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, its softmax probability in float32) over the last dimension of logits; the first index on
    ties, as torch.argmax. One pass over the vocabulary on CUDA (accel/topk.py)."""
    return topk.greedy(logits)


def spread(probs: torch.Tensor, ids: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Write the probabilities of the tokens `ids` (all of the vocabulary's if None) into `out` [..., vocab]
    (float32) as a distribution over the vocabulary; returns `out`."""
    if ids is None:
        return out.copy_(probs)
    # scatter_add: a row with fewer than k finite logits may list an id twice, the second time with 0.
    return out.zero_().scatter_add_(-1, ids, probs)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty on logits [..., vocab], in float32: the logits of the tokens marked
    in `seen` (bool, broadcastable) are divided by `penalty` where positive and multiplied where negative."""
    logits = logits.float()
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def seen_by_row(seen: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """The tokens each row of a verify pass over [token, d1..dk] has seen: `seen` [vocab] (the prompt and
    the emitted tokens) and, for row i, which predicts the token after d_i, also d1..di. [k+1, vocab]."""
    k = drafts.numel()
    steps = torch.arange(k + 1, device=drafts.device)
    earlier = steps[:, None] > steps[None, :k]  # row i, draft j+1: j < i
    counts = torch.zeros(k + 1, seen.shape[-1], dtype=torch.int32, device=seen.device)
    return seen | (counts.scatter_add_(1, drafts.expand(k + 1, k), earlier.int()) > 0)


def count_accepted(draft_tokens: list[int], target_tokens: list[int]) -> int:
    """Greedy acceptance: the length of the longest prefix of drafts equal to the target's argmax."""
    n = 0
    while n < len(draft_tokens) and draft_tokens[n] == target_tokens[n]:
        n += 1
    return n


def adapt_th_stop_draft(th: float, match_ema: float, accepted: int, drafted: int, max_step_draft: int):
    """IPEX-LLM's auto_th_stop_draft after one round: (new stop threshold, new match EMA). The threshold
    rises while the EMA of accepted/drafted is under TARGET_MATCH, falls when a round stopped early
    although the drafts were good, and moves smoothly."""
    match_ema = MATCH_EMA * match_ema + (1 - MATCH_EMA) * accepted / drafted
    if match_ema < TARGET_MATCH:
        nudged = th + TH_STEP
    elif drafted == max_step_draft:
        nudged = th
    else:
        nudged = th - TH_STEP
    return min(1.0, max(0.0, TH_SMOOTHING * th + (1 - TH_SMOOTHING) * nudged)), match_ema


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft_tokens: torch.Tensor, generator=None,
                       p_ids: torch.Tensor | None = None):
    """Speculative sampling on the device: p [k+1, S] target probabilities of the tokens p_ids [k+1, S] (the
    whole vocabulary if None: S = vocab) and q [k, vocab] draft probabilities (both after the same
    temperature/top-k/top-p), draft_tokens [k]. Returns 0-d tensors (number of drafts accepted n, next
    token): d_i is kept with probability min(1, p/q); the first rejected one is replaced by a sample of
    normalize(max(0, p - q)), or, if all were kept, a sample of p[k] is added. The emitted tokens are
    distributed exactly as sampling from p."""
    k = draft_tokens.numel()
    drafts = draft_tokens[:, None]
    if p_ids is None:
        p_draft = p[:k].gather(1, drafts)[:, 0]
    else:  # p is 0 outside p_ids
        p_draft = (p[:k] * (p_ids[:k] == drafts)).sum(-1)
    uniforms = torch.rand(k, generator=generator, device=p.device)
    accepted = uniforms * q.gather(1, drafts)[:, 0] < p_draft  # u < p/q without dividing by q
    n = accepted.int().cumprod(0).sum()
    # Only row n is sampled from, taken with index_select: a 0-d tensor used as p[n] would be read back to
    # the host. After k accepted drafts there is no q row: q counts as 0 and the sample is one of p[k].
    p_n = p.index_select(0, n.view(1))[0]
    q_n = q.index_select(0, n.clamp(max=k - 1).view(1))[0] * (n < k)
    if p_ids is not None:
        ids_n = p_ids.index_select(0, n.view(1))[0]
        q_n = q_n.gather(0, ids_n)  # max(0, p - q) is 0 where p is: outside p_ids
    residual = (p_n - q_n).clamp(min=0)
    residual = torch.where(residual.sum() > 0, residual, p_n)  # p == q up to rounding: sample p
    choice = torch.multinomial(residual, 1, generator=generator)
    return n, (choice if p_ids is None else ids_n.gather(0, choice))[0]


def pick_device(name: str) -> torch.device:
    """"auto" (xpu, then cuda, then cpu) or a device type that must be usable here; else an InputError
    that says what to fix."""
    available = {
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
        "cuda": torch.cuda.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(n for n in ("xpu", "cuda", "cpu") if available[n])
    if name == "xpu" and not available["xpu"]:
        # Two different fixes: a wheel without XPU support needs another PyTorch, an XPU build needs the driver.
        if not (hasattr(torch, "xpu") and torch.xpu._is_compiled()):
            raise InputError(f"device 'xpu' is not available: this PyTorch build ({torch.__version__}) has no XPU "
                             "support; install one from https://download.pytorch.org/whl/xpu, or try --device cpu")
        raise InputError("device 'xpu' is not available: PyTorch has XPU support but finds no Intel GPU; check the "
                         "GPU driver (Level Zero runtime) and access to /dev/dri (render group), or try --device cpu")
    if not available[name]:
        raise InputError(f"device {name!r} is not available in this PyTorch build or machine (try --device cpu)")
    return torch.device(name)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


class TextStreamer:
    """Prints decoded text as tokens arrive; holds back an incomplete UTF-8 character until it completes.

    Each round decodes only a window: the ids since the last printed text plus the tokens just before
    them as context (SentencePiece drops the leading space of a text's first piece, so the difference of
    two decodes of the same prefix is what the new ids add). Decoding everything each round would be
    quadratic in the answer's length."""

    def __init__(self, tokenizer, file=sys.stdout):
        self.tokenizer, self.file = tokenizer, file
        self.ids: list[int] = []
        self.context_start = 0  # first id of the decode window
        self.printed_end = 0  # ids[:printed_end] are printed

    def _unprinted_text(self) -> str:
        context = self.tokenizer.decode(self.ids[self.context_start : self.printed_end])
        return self.tokenizer.decode(self.ids[self.context_start :])[len(context) :]

    def put(self, token_ids: list[int]):
        self.ids.extend(token_ids)
        text = self._unprinted_text()
        if not text or text.endswith("\ufffd"):
            return
        self.file.write(text)
        self.file.flush()
        self.context_start, self.printed_end = self.printed_end, len(self.ids)

    def end(self):
        self.file.write(self._unprinted_text() + "\n")
        self.file.flush()


@torch.inference_mode()
def generate(
    model,
    input_ids: list[int],
    max_new_tokens: int,
    *,
    draft=None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    th_stop_draft: float = 0.6,
    auto_th_stop_draft: bool = True,
    max_step_draft: int = 8,
    min_step_draft: int = 1,
    eos_token_id: int | None = None,
    repetition_penalty: float = 1.0,
    draft_source: str = "int4",
    draft_after_lookup: bool = False,
    lookup_min_ngram: int = 2,
    lookup_max_ngram: int = 4,
    streamer=None,
    generator: torch.Generator | None = None,
    cached_tokens: int = 0,
) -> tuple[list[int], GenerationStats]:
    """Generate up to `max_new_tokens` after `input_ids`. With `draft` (see quantize.make_draft) decode
    self-speculatively, else one target step per token. `model` and `draft` may be modules or
    cuda_graphs.GraphedModel wrappers. Returns (new token ids, statistics); the ids end with
    `eos_token_id` if it was produced.

    Tokens stay on the device. The host reads back once per verification round (drafts and the
    target's tokens together), and once per draft step where the stop threshold is consulted (from
    step `min_step_draft` on). A read costs a launch gap, a wasted draft step far more: on an H100,
    consulting from the first step (IPEX-LLM waits for 3) took a real model's speedup from 1.02x to 1.16x.

    `repetition_penalty` (1: none) penalizes the prompt's and the answer's tokens as transformers does,
    before temperature, top-k and top-p and in greedy decoding too; the draft and each row of a verify pass
    count the drafts before them as seen, so speculative decoding still gives what plain decoding gives.

    `draft_source` says where drafts come from (DRAFT_SOURCES): "int4" (`draft` needed; without it, plain
    decoding), "lookup" (the context's own n-grams of lookup_min_ngram..lookup_max_ngram tokens, longest
    first; `draft` must be None) or "lookup+int4" (the lookup when it proposes, else `draft`). With
    `draft_after_lookup` the INT4 draft continues after a lookup run shorter than the round allows (one
    draft pass over the lookup tokens, then a token at a time). With sampling, a lookup token d is a
    proposal with q = one-hot(d): kept with probability p(d), else replaced by a sample of p without d.
    The adaptive stop threshold follows the INT4 draft's own tokens only.

    `cached_tokens`: the first that many of `input_ids` are in the KV cache already, at positions 0.. (a
    conversation's earlier turns: an earlier call's input_ids and all its new ids but the last); only the
    rest is prefilled. At least the last id of `input_ids` must be new.
    """
    target = getattr(model, "module", model)
    max_seq_len = target.max_seq_len
    if not input_ids:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if not 0 <= cached_tokens < len(input_ids):
        raise ValueError(f"cached_tokens must be in [0, {len(input_ids)}), got {cached_tokens}")
    if len(input_ids) + max_new_tokens > max_seq_len:
        raise ValueError(
            f"prompt ({len(input_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of {max_seq_len}"
        )
    if not 0.0 <= th_stop_draft <= 1.0:
        raise ValueError("th_stop_draft must be in [0, 1]")
    if max_step_draft < 1:
        raise ValueError("max_step_draft must be at least 1")
    if not 0 < repetition_penalty < float("inf"):
        raise ValueError("repetition_penalty must be positive and finite")
    if draft_source not in DRAFT_SOURCES:
        raise ValueError(f"draft_source must be one of {', '.join(DRAFT_SOURCES)}, got {draft_source!r}")
    if draft_source == "lookup" and draft is not None:
        raise ValueError("draft_source 'lookup' drafts from the context alone: pass draft=None")
    if draft_source == "lookup+int4" and draft is None:
        raise ValueError("draft_source 'lookup+int4' needs the INT4 draft")
    limit = accel.pass_limit(model)
    if limit is not None and (draft is not None or draft_source != "int4") and max_step_draft + 1 > limit:
        raise ValueError(f"max_step_draft {max_step_draft} needs verify passes of {max_step_draft + 1} tokens; the "
                         f"fast path of this device takes at most {limit} (max_step_draft {limit - 1})")
    if draft is not None:
        draft_module = getattr(draft, "module", draft)
        if draft_module.model.layers[0].self_attn.kv_cache is not target.model.layers[0].self_attn.kv_cache:
            raise ValueError("the draft must share the target's KV cache: build it with make_draft after setup_caches")

    device = target.model.norm.weight.device
    sampling = Sampling(do_sample, temperature, top_k, top_p)
    stats = GenerationStats(prompt_tokens=len(input_ids), final_th_stop_draft=th_stop_draft)
    match_ema = 0.0
    out: list[int] = []
    lookup = None  # with a lookup: the n-gram index of the prompt and the answer so far
    seen = None  # with a repetition penalty: the tokens of the prompt and the answer so far, bool [vocab]
    if repetition_penalty != 1.0:
        seen = torch.zeros(target.args.vocab_size, dtype=torch.bool, device=device)
        seen[torch.tensor(input_ids, device=device)] = True

    def adjust(logits, seen_mask):
        return logits if seen is None else penalize(logits, seen_mask, repetition_penalty)

    def emit(tokens: list[int]) -> bool:
        """Append tokens, cut at EOS or the budget; True when generation is finished."""
        finished = False
        for i, t in enumerate(tokens):
            if t == eos_token_id or len(out) + i + 1 == max_new_tokens:
                tokens, finished = tokens[: i + 1], True
                break
        out.extend(tokens)
        if seen is not None:
            seen[torch.tensor(tokens, device=device)] = True
        if lookup is not None:
            lookup.extend(tokens)
        if streamer is not None:
            streamer.put(tokens)
        return finished

    start = time.perf_counter()
    # Every position a pass can take, so that each pass gets a slice of it rather than a new tensor: a tensor
    # made per step is a launch on the host's path between two steps.
    positions = torch.arange(max_seq_len, device=device)
    n_prompt = len(input_ids)
    logits = model(torch.tensor([input_ids[cached_tokens:]], device=device), positions[cached_tokens:n_prompt],
                   n_prompt, last_only=True)
    if draft_source != "int4":  # indexed while the device runs the prefill
        lookup = NgramLookup(input_ids, lookup_min_ngram, lookup_max_ngram)
    # buf holds [last token, d1..dk] for the round in flight, on the device. A round never drafts more
    # tokens than are left to generate.
    draft_slots = min(max_step_draft, max_new_tokens)
    buf = torch.empty(draft_slots + 1, dtype=torch.long, device=device)
    # Lookup drafts reach buf in one copy from pinned memory, which does not wait for the device; the copy
    # has run before the staging is written again, as every round ends by reading the device.
    staging = torch.empty(draft_slots, dtype=torch.long, pin_memory=device.type == "cuda")
    staging_host = staging.numpy()
    draft_probs = None  # sampling: q [draft_slots, vocab], the drafts' proposal distributions
    if do_sample and (draft is not None or lookup is not None):
        draft_probs = torch.empty(draft_slots, logits.shape[-1], device=device)
    buf[0] = sampling.pick(adjust(logits[0, -1], seen), generator)
    token = int(buf[0])
    stats.first_token_latency_s = time.perf_counter() - start
    pos = n_prompt  # position of `token`, which is not in the cache yet
    done = emit([token])

    while not done:
        # Drafts beyond the output budget or the cache would be wasted: a round emits accepted + 1 tokens.
        k_max = min(max_step_draft, max_new_tokens - len(out) - 1, max_seq_len - pos - 1)
        proposal = lookup.propose(k_max) if lookup is not None else []
        if not proposal and (draft is None or k_max < 1):
            logits = model(buf[:1].view(1, 1), positions[pos : pos + 1], pos + 1)
            buf[0] = sampling.pick(adjust(logits[0, -1], seen), generator)
            token = int(buf[0])
            stats.verify_steps += 1
            pos += 1
            done = emit([token])
            continue

        k = m = len(proposal)  # drafts so far, of which the lookup's
        if m:
            staging_host[:m] = proposal
            buf[1 : m + 1].copy_(staging[:m], non_blocking=True)
            if do_sample:  # q = one-hot(d): accepted with probability p(d)
                draft_probs[:m].zero_().scatter_(1, buf[1 : m + 1, None], 1.0)
        if draft is not None and (m == 0 or draft_after_lookup and m < k_max):
            draft_seen = None if seen is None else seen.clone()
            if draft_seen is not None and m:
                draft_seen.index_fill_(0, buf[1 : m + 1], True)
            unread = 0  # buf[unread : k + 1] have no draft cache entries yet: one pass reads them all
            while k < k_max:
                logits = draft(buf[unread : k + 1].view(1, -1), positions[pos + unread : pos + k + 1], pos + k + 1,
                               last_only=True)[0, -1]
                unread = k + 1
                logits = adjust(logits, draft_seen)
                if do_sample:
                    buf[k + 1], q, q_ids = sampling.sample(logits, generator)
                    confidence = spread(q, q_ids, draft_probs[k]).gather(0, buf[k + 1 : k + 2])
                else:
                    buf[k + 1], confidence = greedy_pick(logits)
                if draft_seen is not None:
                    draft_seen.index_fill_(0, buf[k + 1 : k + 2], True)
                k += 1
                if min_step_draft <= k < k_max and float(confidence) < th_stop_draft:
                    break

        logits = model(buf[: k + 1].view(1, -1), positions[pos : pos + k + 1], pos + k + 1)[0]
        if seen is not None:
            logits = penalize(logits, seen_by_row(seen, buf[1 : k + 1]), repetition_penalty)
        if do_sample:
            p, p_ids = sampling.distribution(logits)
            n, next_token = speculative_accept(p, draft_probs[:k], buf[1 : k + 1], generator, p_ids)
            host = torch.cat([buf[1 : k + 1], n.view(1), next_token.view(1)]).tolist()
            draft_tokens, n, token = host[:k], host[k], host[k + 1]
        else:
            host = torch.cat([buf[1 : k + 1], greedy_pick(logits)[0]]).tolist()
            draft_tokens, target_tokens = host[:k], host[k:]
            n = count_accepted(draft_tokens, target_tokens)
            token = target_tokens[n]
        buf[0] = token
        stats.drafted += k
        stats.accepted += n
        stats.verify_steps += 1
        if m:
            stats.lookup_drafted += m
            stats.lookup_accepted += min(n, m)
            stats.lookup_steps += 1
        pos += n + 1
        done = emit(draft_tokens[:n] + [token])

        # The threshold steers the INT4 draft: only its own tokens, where the target reached them, count.
        if auto_th_stop_draft and k > m and n >= m:
            th_stop_draft, match_ema = adapt_th_stop_draft(th_stop_draft, match_ema, n - m, k - m,
                                                           max_step_draft - m)

    synchronize(device)
    stats.e2e_time_s = time.perf_counter() - start
    stats.tokens_generated = len(out)
    stats.final_th_stop_draft = th_stop_draft
    if streamer is not None:
        streamer.end()
    return out, stats
