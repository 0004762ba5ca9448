"""The choice of tokens (sampling.py): the sampler's filters against transformers' and dense references, the
greedy pick, the repetition penalty, and the accept rules (speculative sampling keeps the target's
distribution)."""
import pytest
import torch

from selfspec.sampling import (Sampling, count_accepted, draw, greedy_pick, greedy_top_two, penalize, seen_by_row,
                               speculative_accept, spread)


def test_repetition_penalty_matches_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    torch.manual_seed(0)
    scores = torch.randn(1, 50)
    scores[0, 3] = 0.0
    ids = torch.tensor([[3, 7, 7, 12, 40]])
    seen = torch.zeros(50, dtype=torch.bool)
    seen[ids[0]] = True
    for penalty in (1.05, 1.3, 0.8):
        expected = RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
        assert torch.equal(penalize(scores[0], seen, penalty), expected[0])
    drafts = torch.tensor([5, 9, 5])  # a verify pass over [token, 5, 9, 5]
    rows = seen_by_row(seen, drafts)
    assert rows.shape == (4, 50) and torch.equal(rows[0], seen)
    assert rows[1, 5] and not rows[1, 9] and rows[2, 9] and torch.equal(rows[3], rows[2])


def dense_probs(sampling: Sampling, logits: torch.Tensor) -> torch.Tensor:
    """sampling.distribution as float32 probabilities over the whole vocabulary."""
    probs, ids = sampling.distribution(logits)
    return probs if ids is None else spread(probs, ids, torch.empty(logits.shape))


def test_top_k_and_top_p_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    probs = dense_probs(Sampling(True, 1.0, top_k=2), logits)
    assert (probs[2:] == 0).all() and torch.isclose(probs.sum(), torch.tensor(1.0))
    full = logits.softmax(-1)  # [0.636, 0.234, 0.086, 0.032, 0.012]
    probs = dense_probs(Sampling(True, 1.0, top_p=0.8), logits)  # the first two reach 0.87 >= 0.8
    assert (probs[:2] > 0).all() and (probs[2:] == 0).all()
    torch.testing.assert_close(probs[:2], full[:2] / full[:2].sum())
    probs = dense_probs(Sampling(True, 1.0, top_p=0.5), logits)  # the top token alone already holds 0.64
    assert probs[0] == 1.0
    cold = dense_probs(Sampling(True, 0.1), logits)
    assert cold[0] > 0.99


def dense_reference_probs(logits, temperature, top_k, top_p):
    """transformers' warpers, over the whole vocabulary: temperature, top-k (ties with the k-th kept), top-p."""
    logits = logits.float() / temperature
    logits = logits.masked_fill(logits < logits.topk(top_k).values[..., -1:], float("-inf"))
    sorted_logits, order = logits.sort(-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    drop = (sorted_probs.cumsum(-1) - sorted_probs) > top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf")).softmax(-1)


def test_top_k_probabilities_match_the_dense_reference():
    logits = (torch.randn(3, 1000, generator=torch.Generator().manual_seed(0)) * 3).half()  # no ties at the k-th
    for temperature, top_k, top_p in [(0.3, 5, 0.85), (1.0, 50, 1.0), (0.7, 1, 0.5), (1.3, 20, 0.6)]:
        sampling = Sampling(True, temperature, top_k, top_p)
        probs = dense_probs(sampling, logits)
        torch.testing.assert_close(probs, dense_reference_probs(logits, temperature, top_k, top_p))
        token, row_probs, ids = sampling.sample(logits[0])
        row_probs = spread(row_probs, ids, torch.empty(logits.shape[-1]))
        assert token.dim() == 0 and row_probs[token] > 0 and torch.equal(row_probs, probs[0])


def test_top_k_sampling_draws_from_its_distribution():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0])
    sampling = Sampling(True, 0.8, top_k=4, top_p=0.95)
    expected = dense_probs(sampling, logits)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(logits.numel())
    for _ in range(20000):
        counts[int(sampling.pick(logits, g))] += 1
    assert counts[4:].sum() == 0 and chi_square_p_value(counts, expected) > 1e-3
    assert chi_square_p_value(counts, logits.softmax(-1)) < 1e-6  # a wrong distribution is caught


def test_draw_samples_its_weights_and_survives_broken_ones():
    weights = torch.tensor([0.5, 0.0, 2.0, 1.0, 0.25])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([draw(weights, g) for _ in range(20000)]), minlength=weights.numel())
    assert counts[1] == 0 and chi_square_p_value(counts.float(), weights / weights.sum()) > 1e-3
    assert chi_square_p_value(counts.float(), torch.full((5,), 0.2)) < 1e-6  # a wrong distribution is caught
    for broken in (torch.full((5,), float("nan")), torch.tensor([1.0, float("inf"), 0.0, float("nan"), 2.0])):
        assert 0 <= int(draw(broken, g)) < 5  # where torch.multinomial raises


def test_greedy_pick_gives_the_argmax_and_its_probability():
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, 0.0, 0.0, 0.0]], dtype=torch.float16)
    tokens, probs = greedy_pick(logits)
    assert tokens.tolist() == [1, 0]  # the first of a tie, as torch.argmax
    torch.testing.assert_close(probs, logits.float().softmax(-1).max(-1).values)
    token, prob = greedy_pick(logits[1])  # one row of logits: 0-d results
    assert token.dim() == prob.dim() == 0 and int(token) == 0
    assert int(Sampling().pick(logits[0])) == 1


def test_greedy_top_two_gives_the_argmax_and_the_next_largest():
    logits = torch.tensor([[1.0, 3.0, 3.0, -2.0], [0.5, 0.0, 0.0, 0.0], [-1.0, 2.0, 0.0, 1.5]], dtype=torch.float16)
    top_two, probs = greedy_top_two(logits)
    assert top_two.tolist() == [[1, 2], [0, 1], [1, 3]]  # ties: the lower index first
    assert torch.equal(probs, greedy_pick(logits)[1])
    top_two, prob = greedy_top_two(logits[2])  # one row of logits
    assert top_two.tolist() == [1, 3] and prob.dim() == 0


def test_count_accepted():
    target = [1, 2, 3, 4]  # the target's argmax after t, d1, d2, d3
    assert count_accepted([1, 2, 3], target) == 3
    assert count_accepted([1, 5, 3], target) == 1
    assert count_accepted([0, 2, 3], target) == 0


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit; p-value by the Wilson-Hilferty normal approximation."""
    from math import erfc, sqrt

    expected = probs * counts.sum()
    keep = expected > 0
    stat = float((((counts - expected) ** 2)[keep] / expected[keep]).sum())
    dof = int(keep.sum()) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / sqrt(2 / (9 * dof))
    return 0.5 * erfc(z / sqrt(2))


@pytest.mark.parametrize("proposal", ["int4", "lookup", "lookup+int4", "int4+lookup"])
@pytest.mark.parametrize("support", [None, 4])
def test_speculative_sampling_reproduces_the_target_distribution(support, proposal):
    """The first emitted token, and the second given the first was the draft's, follow the target's p; p
    over the whole vocabulary, or (as top-k gives it) over `support` token ids per row. Drafts sampled from
    the INT4 draft's q, or fixed lookup tokens d with q = one-hot(d) (both rows, or the first row followed
    by a sampled one, as when the draft continues after a lookup run; or a sampled first row followed by a
    lookup token that depends on it, as when the lookup continues after the draft's drafts)."""
    g = torch.Generator().manual_seed(0)
    vocab, trials = 6, 20000
    p = torch.rand(3, vocab, generator=g) ** 3
    p_ids = None
    if support is not None:  # p of 0 outside a random subset of ids per row, passed as (p over ids, ids)
        p_ids = torch.stack([torch.randperm(vocab, generator=g)[:support] for _ in range(3)])
        p = spread(p.gather(-1, p_ids), p_ids, torch.empty(3, vocab))
    p /= p.sum(-1, keepdim=True)
    q = torch.rand(2, vocab, generator=g) ** 3
    q /= q.sum(-1, keepdim=True)
    lookup_rows = {"int4": 0, "lookup": 2, "lookup+int4": 1, "int4+lookup": 0}[proposal]
    for row in range(lookup_rows):  # a lookup token the target gives some probability (never all)
        q[row] = torch.nn.functional.one_hot(p[row].argmax(), vocab).float()
    one_hot = torch.eye(vocab)
    likely = int(torch.minimum(p[0], q[0]).argmax())  # the draft token accepted most often
    first = torch.zeros(vocab)
    second_given_d1 = torch.zeros(vocab)
    for _ in range(trials):
        drafts = [int(torch.multinomial(q[0], 1, generator=g)), int(torch.multinomial(q[1], 1, generator=g))]
        q_drafts = q
        if proposal == "int4+lookup":  # the lookup's token after d0: what followed d0 in a context
            drafts[1] = int(p[1].argmax()) if drafts[0] == likely else (drafts[0] * 3 + 1) % vocab
            q_drafts = torch.stack([q[0], one_hot[drafts[1]]])
        if p_ids is None:
            n, nxt = speculative_accept(p, q_drafts, torch.tensor(drafts), generator=g)
        else:
            n, nxt = speculative_accept(p.gather(-1, p_ids), q_drafts, torch.tensor(drafts), generator=g, p_ids=p_ids)
        n, nxt = int(n), int(nxt)
        emitted = drafts[:n] + [nxt]
        first[emitted[0]] += 1
        # p[1] plays the role of the target's distribution after draft token 0.
        if n >= 1 and drafts[0] == likely:
            second_given_d1[emitted[1]] += 1
    # For a correct sampler the p-value is uniform: a bound of 1e-4 fails one seed in 10,000 (the seed here
    # gives 6e-4 for the first token with `support`, whose frequencies match p to 0.003 over 100,000 trials).
    assert chi_square_p_value(first, p[0]) > 1e-4
    # Given that draft token was accepted, the next token follows p[1] restricted to paths through draft 0.
    assert second_given_d1.sum() > 500
    assert chi_square_p_value(second_given_d1, p[1]) > 1e-4
    # And a wrong sampler is caught: the draft's own distribution (or, for a lookup token, half of it) is
    # rejected.
    assert chi_square_p_value(first, q[0] if lookup_rows == 0 else (p[0] + q[0]) / 2) < 1e-6


def test_speculative_sampling_with_a_draft_over_part_of_the_vocabulary():
    """A draft distribution that is 0 outside a few tokens (FrequentVocabHead) still gives the target's p."""
    g = torch.Generator().manual_seed(1)
    vocab, trials = 6, 20000
    p = torch.rand(2, vocab, generator=g) + 0.1
    p /= p.sum(-1, keepdim=True)
    q = torch.zeros(1, vocab)
    q[0, :3] = torch.tensor([0.5, 0.3, 0.2])
    first = torch.zeros(vocab)
    for _ in range(trials):
        draft = torch.multinomial(q[0], 1, generator=g)
        n, nxt = speculative_accept(p, q, draft, generator=g)
        first[int(draft) if int(n) else int(nxt)] += 1
    assert first[3:].sum() > 0  # tokens the draft never proposes are emitted
    assert chi_square_p_value(first, p[0]) > 1e-4
    assert chi_square_p_value(first, q[0] * 0.5 + p[0] * 0.5) < 1e-6
