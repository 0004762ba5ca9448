"""Prefill, plain decoding and the self-speculative draft/verify loop, and their statistics (the choice of
tokens and the accept rules: sampling.py).

One speculative round, with `token` the last emitted token at position `pos` (not yet in the cache):
  1. with a lookup (draft_source "lookup" or "lookup+int4"), the tokens that followed the context's
     last n-gram earlier in the context (lookup.py) are the drafts d1..dk, copied to the device at once;
     else the INT4 draft proposes d1..dk one token at a time, reading the target's cache for the
     verified prefix and writing its own entries at pos..pos+k-1 (with `lookup_after_draft`, until the
     context followed by its drafts ends in an n-gram the lookup knows: the lookup's tokens follow);
  2. the FP16 target runs once over [token, d1..dk] at pos..pos+k, overwriting those entries;
  3. greedy: keep the longest prefix of drafts equal to the target's argmax, plus the target's next
     token; sampling: standard speculative sampling (min(1, p/q) acceptance, residual resampling).
With `second_choices` (greedy, INT4 drafts) the pass of step 2 also carries leaves: the draft's second
choice l_i beside each draft d_i, at d_i's position, attending to the tokens before it and to itself
(model.Transformer.forward's `slots`). Where the target rejects d_i for l_i, the leaf's row gives the token
after l_i too: one more token that round, and the leaf's key and value move to its position in the cache.
The cache needs no rollback: the next round starts writing right after the accepted tokens, and
attention never reads past the current query position.
"""
import sys
import time
from dataclasses import asdict, dataclass

import torch

from . import accel
from .device import synchronize
from .errors import CheckpointError
from .lookup import NgramLookup
from .sampling import (REPETITION_PENALTY_RANGE, Sampling, count_accepted, greedy_pick, greedy_top_two, penalize,
                       seen_by_row, speculative_accept, spread)

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
    lookup_steps: int = 0  # verification rounds with lookup drafts
    leaves: int = 0  # second choices of the INT4 draft verified beside its drafts (second_choices)
    leaves_accepted: int = 0  # of those, the ones the target chose, each with the target's token after it
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
    lookup_after_draft: bool = False,
    lookup_min_ngram: int = 2,
    lookup_max_ngram: int = 4,
    second_choices: bool = False,
    max_pass_tokens: int | None = None,
    streamer=None,
    generator: torch.Generator | None = None,
    cached_tokens: int = 0,
) -> tuple[list[int], GenerationStats]:
    """Generate up to `max_new_tokens` after `input_ids`. With `draft` (see draft.make_draft) decode
    self-speculatively, else one target step per token. `model` and `draft` may be modules or
    accel.GraphedModel wrappers (accel.apply). Returns (new token ids, statistics); the ids end with
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
    draft pass over the lookup tokens, then a token at a time). With `lookup_after_draft`, in a round the INT4
    draft begins ("lookup+int4"), the host reads each draft with its confidence and looks up the context
    followed by the drafts so far: once the lookup proposes, its tokens follow the drafts (as many as a
    lookup round takes, within the pass's token limit) and drafting stops. With sampling, a lookup token d is a
    proposal with q = one-hot(d): kept with probability p(d), else replaced by a sample of p without d.
    The adaptive stop threshold follows the INT4 draft's own tokens only.

    `second_choices` (greedy decoding with the INT4 draft): each round of the INT4 draft's own drafts also
    verifies the draft's second choice beside each draft, as far as the pass's token limit allows (module
    docstring); the output stays plain decoding's.

    `cached_tokens`: the first that many of `input_ids` are in the KV cache already, at positions 0.. (a
    conversation's earlier turns: an earlier call's input_ids and all its new ids but the last); only the
    rest is prefilled. At least the last id of `input_ids` must be new.

    On CUDA's fast path (accel.pass_limit) a verify pass takes at most accel.MAX_VERIFY_TOKENS tokens, so a
    larger `max_step_draft` is a ValueError there rather than a slower path. `max_pass_tokens` sets such a
    limit where the device has none (or a lower one), so that a CPU run drafts as CUDA's fast path does.
    Logits of the prompt that are not finite (weights that overflow in the model's dtype) are a CheckpointError.
    """
    target = getattr(model, "module", model)
    # tokens a verify pass may take (None: any number)
    pass_limit = min((n for n in (accel.pass_limit(model), max_pass_tokens) if n is not None), default=None)
    check_arguments(model, draft, input_ids, max_new_tokens, cached_tokens, th_stop_draft, max_step_draft,
                    repetition_penalty, draft_source, second_choices, do_sample, lookup_after_draft, pass_limit)
    device = target.model.norm.weight.device
    sampling = Sampling(do_sample, temperature, top_k, top_p)
    stats = GenerationStats(prompt_tokens=len(input_ids), final_th_stop_draft=th_stop_draft)
    answer = Answer(input_ids, max_new_tokens, eos_token_id, repetition_penalty, target.args.vocab_size, device,
                    streamer)
    match_ema = 0.0

    start = time.perf_counter()
    # A round drafts at most max_step_draft tokens (and as many lookup tokens after them with lookup_after_draft),
    # never more than are left to generate.
    bufs = Buffers(min((1 + lookup_after_draft) * max_step_draft, max_new_tokens), target.max_seq_len, device,
                   second_choices)
    n_prompt = len(input_ids)
    logits = model(torch.tensor([input_ids[cached_tokens:]], device=device), bufs.positions[cached_tokens:n_prompt],
                   n_prompt, last_only=True)
    if draft_source != "int4":  # indexed while the device runs the prefill
        answer.lookup = NgramLookup(input_ids, lookup_min_ngram, lookup_max_ngram)
    if do_sample and (draft is not None or answer.lookup is not None):
        bufs.draft_probs = torch.empty(bufs.staging.numel(), logits.shape[-1], device=device)
    first = answer.adjust(logits[0, -1], answer.seen)
    if not torch.isfinite(first).all():  # weights or settings that overflow: refused before any token is emitted
        raise CheckpointError(f"the model's logits for this prompt are not finite (NaN or infinity): its weights or "
                              f"config.json overflow in {target.model.norm.weight.dtype}")
    bufs.tokens[0] = sampling.pick(first, generator)
    token = int(bufs.tokens[0])
    stats.first_token_latency_s = time.perf_counter() - start
    pos = n_prompt  # position of `token`, which is not in the cache yet
    done = answer.add([token])

    while not done:
        # Drafts beyond the output budget or the cache would be wasted: a round emits accepted + 1 tokens.
        room = min(max_new_tokens - len(answer.ids) - 1, target.max_seq_len - pos - 1)
        k_max = min(max_step_draft, room)
        proposal = answer.lookup.propose(k_max) if answer.lookup is not None else []
        if not proposal and (draft is None or k_max < 1):
            logits = model(bufs.tokens[:1].view(1, 1), bufs.positions[pos : pos + 1], pos + 1)
            bufs.tokens[0] = sampling.pick(answer.adjust(logits[0, -1], answer.seen), generator)
            token = int(bufs.tokens[0])
            stats.verify_steps += 1
            pos += 1
            done = answer.add([token])
            continue

        k = m = len(proposal)  # drafts so far, of which the lookup's
        j = 0  # of the drafts, the lookup's after the INT4 draft's (lookup_after_draft)
        if m:
            bufs.stage(proposal, do_sample)
        if draft is not None and (m == 0 or draft_after_lookup and m < k_max):
            after_draft = answer.lookup if lookup_after_draft and m == 0 else None
            k, j = draft_more(draft, bufs, answer, sampling, generator, pos, m, k_max, min_step_draft, th_stop_draft,
                              after_draft, room if pass_limit is None else min(room, pass_limit - 1))
        # Leaves beside the INT4 draft's drafts, as many as the pass's token limit and the cache leave room for.
        leaves = 0
        if bufs.seconds is not None and m == 0:
            leaves = min(k - j, (pass_limit or 2 * k + 1) - k - 1, target.max_seq_len - pos - k - 1)
        draft_tokens, n, token, leaf = verify(model, bufs, answer, sampling, generator, pos, k, leaves)
        bufs.tokens[0] = token
        stats.drafted += k
        stats.accepted += n
        stats.verify_steps += 1
        stats.leaves += leaves
        if m or j:  # the lookup's drafts lead the round (m) or follow the INT4 draft's (j), never both
            stats.lookup_drafted += m + j
            stats.lookup_accepted += min(n, m) + max(n - (k - j), 0)
            stats.lookup_steps += 1
        emitted = draft_tokens[:n] + [token]
        if leaf is not None:  # the target chose the leaf beside d_{n+1}: its key and value go to its position
            target.copy_cache_entry(pos + k + 1 + n, pos + n + 1)
            stats.leaves_accepted += 1
            emitted = draft_tokens[:n] + [leaf, token]
        pos += len(emitted)
        done = answer.add(emitted)

        # The threshold steers the INT4 draft: only its own tokens, where the target reached them, count.
        own = k - m - j
        if auto_th_stop_draft and own > 0 and n >= m:
            th_stop_draft, match_ema = adapt_th_stop_draft(th_stop_draft, match_ema, min(n - m, own), own,
                                                           max_step_draft - m)

    synchronize(device)
    stats.e2e_time_s = time.perf_counter() - start
    stats.tokens_generated = len(answer.ids)
    stats.final_th_stop_draft = th_stop_draft
    if streamer is not None:
        streamer.end()
    return answer.ids, stats


def check_arguments(model, draft, input_ids, max_new_tokens, cached_tokens, th_stop_draft, max_step_draft,
                    repetition_penalty, draft_source, second_choices=False, do_sample=False, lookup_after_draft=False,
                    pass_limit=None):
    """generate()'s ValueErrors for arguments it cannot honour."""
    target = getattr(model, "module", model)
    if not input_ids:
        raise ValueError("the prompt is empty")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if not 0 <= cached_tokens < len(input_ids):
        raise ValueError(f"cached_tokens must be in [0, {len(input_ids)}), got {cached_tokens}")
    if len(input_ids) + max_new_tokens > target.max_seq_len:
        raise ValueError(f"prompt ({len(input_ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                         f"{target.max_seq_len}")
    if not 0.0 <= th_stop_draft <= 1.0:
        raise ValueError("th_stop_draft must be in [0, 1]")
    if max_step_draft < 1:
        raise ValueError("max_step_draft must be at least 1")
    low, high = REPETITION_PENALTY_RANGE
    if not low <= repetition_penalty <= high:
        raise ValueError(f"repetition_penalty must be in [{low}, {high:g}], got {repetition_penalty}")
    if draft_source not in DRAFT_SOURCES:
        raise ValueError(f"draft_source must be one of {', '.join(DRAFT_SOURCES)}, got {draft_source!r}")
    if draft_source == "lookup" and draft is not None:
        raise ValueError("draft_source 'lookup' drafts from the context alone: pass draft=None")
    if draft_source == "lookup+int4" and draft is None:
        raise ValueError("draft_source 'lookup+int4' needs the INT4 draft")
    if lookup_after_draft and draft_source != "lookup+int4":
        raise ValueError("lookup_after_draft continues the INT4 draft's drafts with the lookup's: it needs "
                         "draft_source 'lookup+int4'")
    if second_choices and (do_sample or draft is None):
        raise ValueError("second_choices verifies the INT4 draft's greedy drafts: it needs the draft and "
                         "do_sample=False")
    if pass_limit is not None and (draft is not None or draft_source != "int4") and max_step_draft + 1 > pass_limit:
        raise ValueError(f"max_step_draft {max_step_draft} needs verify passes of {max_step_draft + 1} tokens; "
                         f"passes here take at most {pass_limit} (max_step_draft {pass_limit - 1})")
    if draft is not None:
        draft_module = getattr(draft, "module", draft)
        if draft_module.model.layers[0].self_attn.kv_cache is not target.model.layers[0].self_attn.kv_cache:
            raise ValueError("the draft must share the target's KV cache: build it with make_draft after setup_caches")


class Answer:
    """The tokens emitted so far, and what follows them: the repetition penalty's record of the tokens seen,
    the lookup's n-gram index (`lookup`, with a lookup), the streamer."""

    def __init__(self, input_ids, max_new_tokens: int, eos_token_id, penalty: float, vocab_size: int, device,
                 streamer):
        self.ids: list[int] = []
        self.max_new_tokens, self.eos_token_id, self.penalty, self.streamer = max_new_tokens, eos_token_id, penalty, streamer
        self.lookup: NgramLookup | None = None
        self.seen = None  # with a repetition penalty: the tokens of the prompt and the answer so far, bool [vocab]
        if penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(input_ids, device=device)] = True

    def adjust(self, logits, seen):
        """The logits with the repetition penalty over the tokens `seen`, if there is a penalty."""
        return logits if self.seen is None else penalize(logits, seen, self.penalty)

    def add(self, tokens: list[int]) -> bool:
        """Append tokens, cut at EOS or the budget; True when generation is finished."""
        finished = False
        for i, t in enumerate(tokens):
            if t == self.eos_token_id or len(self.ids) + i + 1 == self.max_new_tokens:
                tokens, finished = tokens[: i + 1], True
                break
        self.ids.extend(tokens)
        if self.seen is not None:
            self.seen[torch.tensor(tokens, device=self.seen.device)] = True
        if self.lookup is not None:
            self.lookup.extend(tokens)
        if self.streamer is not None:
            self.streamer.put(tokens)
        return finished


class Buffers:
    """The device tensors a generation reuses, so that no step makes a new one: a tensor made per step is a
    launch on the host's path between two steps."""

    def __init__(self, draft_slots: int, max_seq_len: int, device, second_choices: bool = False):
        self.positions = torch.arange(max_seq_len, device=device)  # each pass takes a slice
        # [last token, d1..dk], and with second choices the leaves l1..lL after them
        self.tokens = torch.empty((2 if second_choices else 1) * draft_slots + 1, dtype=torch.long, device=device)
        self.seconds = torch.empty(draft_slots, dtype=torch.long, device=device) if second_choices else None
        self.leaf_positions = torch.empty_like(self.tokens) if second_choices else None  # a pass's [p..p+k, p+1..p+L]
        # Lookup drafts reach `tokens` in one copy from pinned memory, which does not wait for the device; the
        # copy has run before the staging is written again, as every round ends by reading the device.
        self.staging = torch.empty(draft_slots, dtype=torch.long, pin_memory=device.type == "cuda")
        self.staging_host = self.staging.numpy()
        self.draft_probs = None  # sampling: q [draft_slots, vocab], the drafts' proposal distributions

    def stage(self, proposal: list[int], do_sample: bool, first: int = 0):
        """The lookup's drafts into tokens[first + 1:], after `first` drafts; with sampling q = one-hot(d):
        accepted with probability p(d)."""
        m = len(proposal)
        drafts = slice(first + 1, first + m + 1)
        self.staging_host[:m] = proposal
        self.tokens[drafts].copy_(self.staging[:m], non_blocking=True)
        if do_sample:
            self.draft_probs[first : first + m].zero_().scatter_(1, self.tokens[drafts, None], 1.0)


def draft_more(draft, bufs: Buffers, answer: Answer, sampling: Sampling, generator, pos: int, k: int, k_max: int,
               min_step_draft: int, th_stop_draft: float, lookup: NgramLookup | None = None,
               pass_drafts: int = 0) -> tuple[int, int]:
    """The INT4 draft proposes tokens after the k in bufs.tokens[1:k+1], one at a time, until k_max or until
    its confidence falls under th_stop_draft (from step min_step_draft on). With `lookup`, from step
    min_step_draft on the host also reads the drafts and looks up the context followed by them: once the
    lookup proposes, up to k_max of its tokens follow (the pass taking at most `pass_drafts` drafts, and
    leaving a row for each second choice) and drafting stops. Returns (drafts, of which the lookup's)."""
    tokens, positions = bufs.tokens, bufs.positions
    draft_seen = None if answer.seen is None else answer.seen.clone()
    if draft_seen is not None and k:
        draft_seen.index_fill_(0, tokens[1 : k + 1], True)
    unread = 0  # tokens[unread : k + 1] have no draft cache entries yet: one pass reads them all
    read = []  # with `lookup`: the drafts read back to the host so far, tokens[1 : len(read) + 1]
    while k < k_max:
        logits = draft(tokens[unread : k + 1].view(1, -1), positions[pos + unread : pos + k + 1], pos + k + 1,
                       last_only=True)[0, -1]
        unread = k + 1
        logits = answer.adjust(logits, draft_seen)
        if sampling.do_sample:
            tokens[k + 1], q, q_ids = sampling.sample(logits, generator)
            confidence = spread(q, q_ids, bufs.draft_probs[k]).gather(0, tokens[k + 1 : k + 2])
        elif bufs.seconds is not None:
            top_two, confidence = greedy_top_two(logits)
            tokens[k + 1], bufs.seconds[k] = top_two
        else:
            tokens[k + 1], confidence = greedy_pick(logits)
        if draft_seen is not None:
            draft_seen.index_fill_(0, tokens[k + 1 : k + 2], True)
        k += 1
        if lookup is not None and min_step_draft <= k:
            # the drafts not read yet and the confidence, in one read
            *new, confidence = torch.cat((tokens[len(read) + 1 : k + 1].double(), confidence.view(1).double())).tolist()
            read += map(int, new)
            leaf_rows = k if bufs.seconds is not None else 0
            proposal = lookup.propose(min(k_max, pass_drafts - k - leaf_rows), after=read)
            if proposal:
                bufs.stage(proposal, sampling.do_sample, first=k)
                return k + len(proposal), len(proposal)
        if min_step_draft <= k < k_max and float(confidence) < th_stop_draft:
            break
    return k, 0


def verify(model, bufs: Buffers, answer: Answer, sampling: Sampling, generator, pos: int, k: int, leaves: int = 0):
    """The target's pass over [token, d1..dk] and, greedy, the leaves l1..l_leaves beside the first drafts:
    (the drafts as ints, how many it accepts, its next token, the accepted leaf or None). An accepted leaf
    l_{n+1} comes after the n accepted drafts, and the next token after it; its key and value are still at
    slot pos + k + 1 + n of the cache."""
    tokens, positions = bufs.tokens, bufs.positions
    if leaves:
        tokens[k + 1 : k + 1 + leaves] = bufs.seconds[:leaves]
        pass_pos = bufs.leaf_positions[: k + 1 + leaves]
        pass_pos[: k + 1] = positions[pos : pos + k + 1]
        pass_pos[k + 1 :] = positions[pos + 1 : pos + 1 + leaves]
        logits = model(tokens[: k + 1 + leaves].view(1, -1), pass_pos, pos + k + 1 + leaves,
                       slots=positions[pos : pos + k + 1 + leaves])[0]
    else:
        logits = model(tokens[: k + 1].view(1, -1), positions[pos : pos + k + 1], pos + k + 1)[0]
    if answer.seen is not None:
        seen = seen_by_row(answer.seen, tokens[1 : k + 1])
        if leaves:  # the row of l_i has seen d1..d(i-1) and l_i
            leaf_seen = seen[:leaves].scatter(1, tokens[k + 1 : k + 1 + leaves, None], True)
            seen = torch.cat([seen, leaf_seen])
        logits = penalize(logits, seen, answer.penalty)
    if sampling.do_sample:
        p, p_ids = sampling.distribution(logits)
        n, next_token = speculative_accept(p, bufs.draft_probs[:k], tokens[1 : k + 1], generator, p_ids)
        host = torch.cat([tokens[1 : k + 1], n.view(1), next_token.view(1)]).tolist()
        return host[:k], host[k], host[k + 1], None
    host = torch.cat([tokens[1 : k + 1 + leaves], greedy_pick(logits)[0]]).tolist()
    draft_tokens, leaf_tokens = host[:k], host[k : k + leaves]
    target_tokens, after_leaves = host[k + leaves : 2 * k + leaves + 1], host[2 * k + leaves + 1 :]
    n = count_accepted(draft_tokens, target_tokens)
    if n < leaves and leaf_tokens[n] == target_tokens[n]:
        return draft_tokens, n, after_leaves[n], leaf_tokens[n]
    return draft_tokens, n, target_tokens[n], None
