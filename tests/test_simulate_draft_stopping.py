"""bench/simulate_draft_stopping.py: its replay of a stopping rule must be generate() itself."""
import json

import pytest

from bench.simulate_draft_stopping import RULES, Fixed, compare_rules, draft_chains, replay, saved_chains
from selfspec.draft import make_draft
from selfspec.errors import InputError
from selfspec.generate import generate
from helpers import random_model


@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_replayed_default_rule_drafts_and_accepts_like_generate(position_encoding, num_heads):
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=200)
    draft = make_draft(model, group_size=32)
    prompt = [5, 17, 250, 3, 99, 42]
    answer, _ = generate(model, prompt, 60)
    _, stats = generate(model, prompt, 60, draft=draft)  # defaults: adaptive threshold from 0.6, at most 8
    chains = draft_chains(model, draft, prompt, answer, depth=8)
    for chain in chains:  # the next choices beside each draft, never the draft itself
        assert len(chain["alternatives"]) == 8
        assert all(len(set(a)) == 3 and t not in a for a, t in zip(chain["alternatives"], chain["tokens"]))
    cost, drafted, accepted, rounds = replay(answer, chains, RULES["adaptive 0.6 (generate's default)"],
                                             draft_step=0.4, verify_step=1.0, max_new_tokens=60)
    assert (drafted, accepted, rounds) == (stats.drafted, stats.accepted, stats.verify_steps)
    assert 0 < accepted < drafted
    assert cost == pytest.approx(0.4 * drafted + rounds)


def test_oracle_drafts_only_what_is_accepted():
    answer = list(range(10))
    right = {"tokens": [1, 2, 3, 99], "confidences": [0.9] * 4}  # from j=0: three right, then wrong
    chains = [right] + [{"tokens": [t + 1] * 4, "confidences": [0.1] * 4} for t in answer[1:]]
    # Round 1 drafts 1, 2, 3 (the wrong 99 is not drafted) and emits 4; from j = 4 each chain is right
    # once, so rounds from 4, 6 and 8 draft one token each.
    assert replay(answer, chains, None, draft_step=0.5, verify_step=1.0) == (0.5 * 6 + 4, 6, 6, 4)
    # A rule that stops after the first draft needs a round per two tokens from the start.
    always_stop = lambda: Fixed(float("inf"))  # noqa: E731
    assert replay(answer, chains, always_stop, draft_step=0.5, verify_step=1.0)[1:] == (5, 5, 5)


def test_saved_chains_replay_cut_to_fewer_drafts(tmp_path):
    answer = list(range(12))
    chains = [{"tokens": [t + 1, t + 2, 99, t + 4], "confidences": [0.9, 0.8, 0.7, 0.6]} for t in answer[:-1]]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"records": [{"prompt": "p", "answer": answer, "chains": chains}]}))
    cut = saved_chains(path, 2)
    assert cut[0]["chains"][0] == {"tokens": [1, 2], "confidences": [0.9, 0.8]}
    # Cut to two drafts, the oracle drafts both (both right) in every round; uncut, also just two (the third
    # is wrong): the same rounds either way, while a rule that never stops drafts the wrong third when it can.
    oracle = compare_rules(cut, 0.5, 1.0)["oracle"]
    assert oracle == compare_rules(saved_chains(path, 4), 0.5, 1.0)["oracle"]
    never_stop = lambda chains: replay(answer, chains, lambda: Fixed(0.0), 0.5, 1.0)  # noqa: E731
    assert never_stop(saved_chains(path, 4)[0]["chains"])[1] > never_stop(cut[0]["chains"])[1]
    with pytest.raises(InputError, match="4 drafts long"):
        saved_chains(path, 5)
