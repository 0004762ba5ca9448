"""bench/simulate_lookup.py: its replay of generate()'s draft sources must be generate() itself, and the
other policies must propose and cost what they say."""
import pytest

from bench.simulate_draft_stopping import draft_chains
from bench.simulate_lookup import accepted, replay
from selfspec.draft import make_draft
from selfspec.generate import generate
from helpers import random_model


# The policies that are generate()'s draft sources. (The checked policies replayed generate's check_lookup of
# 51d9b6b exactly, tested there; that option was taken out again: it did not pay, docs/performance.md.)
@pytest.mark.parametrize("policy", ["int4", "lookup+int4"])
def test_replay_counts_like_generate(policy):
    model = random_model(max_seq_len=220)
    draft = make_draft(model, group_size=32)
    prompt = [71, 48, 316, 128, 272] * 6  # repeats: the lookup has matches
    answer, _ = generate(model, prompt, 80)
    _, stats = generate(model, prompt, 80, draft=draft, draft_source=policy)
    chains = draft_chains(model, draft, prompt, answer, depth=8)
    counts = replay(prompt, answer, chains, policy, draft_step=0.4, verify_step=1.0, max_new_tokens=80)
    assert (counts["drafted"], counts["accepted"], counts["rounds"]) == (stats.drafted, stats.accepted,
                                                                          stats.verify_steps)
    assert (counts["lookup_drafted"], counts["lookup_accepted"], counts["lookup_rounds"]) == (
        stats.lookup_drafted, stats.lookup_accepted, stats.lookup_steps)
    int4_drafted = stats.drafted - stats.lookup_drafted
    assert counts["cost"] == pytest.approx(0.4 * int4_drafted + stats.verify_steps)
    if policy != "int4":
        assert stats.lookup_steps > 0 and int4_drafted > 0  # both kinds of round took place


def chain(tokens):
    return {"tokens": tokens + [0] * (8 - len(tokens)), "confidences": [0.9] * 8}


# After answer[0] = 2 the context [7, 1, 2, 3, 4, 5, 6, 1, 2] ends with the bigram 1, 2 seen earlier: at j = 0 the
# lookup proposes what followed it there, 3, 4, 5, 6.
PROMPT = [7, 1, 2, 3, 4, 5, 6, 1]
ANSWER = [2, 3, 4, 9, 10, 11]  # the target accepts the lookup's 3, 4 and emits 9


def test_policies_on_one_round():
    # At j = 0 the INT4 draft's chain is right for three tokens (3, 4, 9), then wrong; later chains are wrong.
    chains = [chain([3, 4, 9, 0])] + [chain([99]) for _ in ANSWER[1:]]
    costs = dict(draft_step=0.5, verify_step=1.0, max_new_tokens=6)

    def first_round(policy, **extra):
        return replay(PROMPT, ANSWER, chains, policy, **costs, **extra)

    # lookup+int4: the lookup's 3, 4, 5, 6 (k_max = min(8, 6 - 1 - 1) = 4); 3, 4 accepted, then 9 emitted.
    lookup = first_round("lookup+int4")
    assert (lookup["lookup_drafted"], lookup["lookup_accepted"]) == (4, 2)
    # hindsight: the lookup's round (3 tokens for a verify pass) beats the INT4 draft's (4 tokens for a pass and
    # four draft steps), so it is taken.
    assert first_round("hindsight") == lookup
    # tree: both branches; the INT4 branch is accepted further (3, 4, 9), so the first round emits 4 tokens.
    tree = first_round("tree", tree_verify_step=1.25)
    assert tree["rounds"] < lookup["rounds"]
    # A tree whose INT4 branch drafts one token (3) accepts no more than the lookup (3, 4), for a draft step more.
    tree_1 = first_round("tree", tree_verify_step=1.0, tree_drafts=1)
    assert tree_1["rounds"] == lookup["rounds"] and tree_1["cost"] == pytest.approx(lookup["cost"] + 0.5)
    # checked: the draft's first token (3) agrees with the lookup's: the lookup run is verified, at a draft step more.
    checked = first_round("checked")
    assert checked["rounds"] == lookup["rounds"] and checked["cost"] == pytest.approx(lookup["cost"] + 0.5)
    # checked when missing: the lookup has not missed yet, so its run is verified unchecked.
    assert first_round("checked when missing") == lookup
    # guided: the draft agrees with 3, 4, then proposes its own 9: the round emits what the tree's does.
    guided = first_round("guided", guide_step=0.25)
    assert guided["rounds"] == tree["rounds"]
    with pytest.raises(ValueError, match="policy"):
        first_round("both")


def test_checked_when_missing_checks_only_after_misses():
    # Every bigram the answer repeats from the prompt was followed there by another token (90, 91, 92): the
    # lookup proposes at j = 0, 3 and 6 and misses each time; the INT4 draft is always wrong, and unsure: it
    # drafts one token a round.
    ids = [10, 11, 90, 12, 13, 91, 14, 15, 92, 10]
    answer = [11, 80, 12, 13, 81, 14, 15, 82, 83, 84]
    chains = [{"tokens": [99] * 8, "confidences": [0.1] * 8} for _ in answer[1:]]
    costs = dict(draft_step=0.5, verify_step=1.0, max_new_tokens=len(answer))
    unchecked = replay(ids, answer, chains, "lookup+int4", **costs)
    assert unchecked["lookup_rounds"] == 3 and unchecked["lookup_accepted"] == 0
    # After two misses (EMA 1 -> 0.5 -> 0.25) the third proposal is checked: the draft's 99 is not its 92, and
    # the round is the INT4 draft's.
    missing = replay(ids, answer, chains, "checked when missing", **costs)
    assert missing["lookup_rounds"] == 2 and missing["rounds"] == unchecked["rounds"]
    assert missing["cost"] == pytest.approx(unchecked["cost"] + 0.5)


def test_drafts_past_the_end_of_the_answer():
    assert accepted([1, 2, 3], [1, 2]) == 2 and accepted([1, 5, 3], [1, 2]) == 1 and accepted([4], []) == 0
