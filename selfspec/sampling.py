"""Choosing tokens from logits: the sampler (temperature, top-k, top-p), the greedy pick, the repetition
penalty, and the rules by which the target accepts a round's drafts (greedy prefix match; speculative
sampling, which keeps the target's distribution exactly).
"""
from dataclasses import dataclass

import torch

from .accel import topk


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
        choice = draw(probs, generator)
        return (choice if ids is None else ids.gather(0, choice))[0], probs, ids

    def pick(self, logits: torch.Tensor, generator=None) -> torch.Tensor:
        """Next token for logits [vocab], as a 0-d tensor on the logits' device (no host sync)."""
        if not self.do_sample:
            return greedy_pick(logits)[0]
        return self.sample(logits, generator)[0]


def draw(weights: torch.Tensor, generator=None) -> torch.Tensor:
    """An index i of weights [n] (>= 0, not all 0) drawn with probability weights[i] / sum(weights), as a tensor
    [1] on their device, with no host sync: torch.multinomial's draw. Weights that are NaN or infinite, as those
    of a checkpoint whose logits overflow, count as 0 and 1 (all 0: uniform), so the draw gives some index as
    greedy decoding does, where torch.multinomial fails (on CUDA with a device assert); generate() refuses a
    prompt whose logits overflow."""
    valid = torch.nan_to_num(weights.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp_(min=0.0)
    valid = torch.where(valid.sum() > 0, valid, 1.0)
    return torch.multinomial(valid, 1, generator=generator)


def greedy_pick(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, its softmax probability in float32) over the last dimension of logits; the first index on
    ties, as torch.argmax. One pass over the vocabulary on CUDA (accel/topk.py)."""
    return topk.greedy(logits)


def greedy_top_two(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the argmax, as greedy_pick's, and the second largest logit's index: [..., 2]; the argmax's softmax
    probability in float32)."""
    return topk.greedy_two(logits)


def spread(probs: torch.Tensor, ids: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """Write the probabilities of the tokens `ids` (all of the vocabulary's if None) into `out` [..., vocab]
    (float32) as a distribution over the vocabulary; returns `out`."""
    if ids is None:
        return out.copy_(probs)
    # scatter_add: a row with fewer than k finite logits may list an id twice, the second time with 0.
    return out.zero_().scatter_add_(-1, ids, probs)


# Repetition penalties used in practice lie near 1; far below this range a penalized logit overflows float32.
REPETITION_PENALTY_RANGE = (0.01, 100.0)


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
    choice = draw(residual, generator)
    return n, (choice if p_ids is None else ids_n.gather(0, choice))[0]
