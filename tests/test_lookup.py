import random

import pytest

from selfspec.lookup import NgramLookup


def brute_force_propose(tokens, max_tokens, min_n, max_n, after=()):
    """The definition, by scanning: longest suffix n-gram of tokens + after first, its most recent earlier
    occurrence in tokens that a token of tokens follows, the tokens after it in tokens + after."""
    whole = tokens + list(after)
    for n in range(min(max_n, len(whole)), min_n - 1, -1):
        suffix = whole[len(whole) - n :]
        for start in range(len(tokens) - 1, n - 1, -1):  # start: the position after the occurrence
            if tokens[start - n : start] == suffix:
                return whole[start : start + max_tokens]
    return []


def test_proposes_what_followed_the_match():
    lookup = NgramLookup([5, 6, 7, 8, 9, 1, 2, 6, 7], min_n=2, max_n=4)
    assert lookup.propose(3) == [8, 9, 1]
    assert lookup.propose(1) == [8]
    assert lookup.propose(0) == []


def test_no_match():
    lookup = NgramLookup([1, 2, 3, 4, 5], min_n=2, max_n=4)
    assert lookup.propose(8) == []
    lookup = NgramLookup([1, 2, 3, 1], min_n=2, max_n=4)  # a 1-gram matches, but min_n is 2
    assert lookup.propose(8) == []
    assert NgramLookup([1, 2, 3, 1], min_n=1, max_n=4).propose(8) == [2, 3, 1]
    assert NgramLookup([], min_n=1).propose(4) == [] and NgramLookup([7], min_n=1).propose(4) == []


def test_longest_match_first():
    # The 1-gram [3] last occurred before 9; the 3-gram [1, 2, 3] occurred before 4, earlier on.
    lookup = NgramLookup([1, 2, 3, 4, 4, 0, 3, 9, 9, 1, 2, 3], min_n=1, max_n=3)
    assert lookup.propose(2) == [4, 4]
    lookup = NgramLookup([1, 2, 3, 4, 4, 0, 3, 9, 9, 1, 2, 3], min_n=1, max_n=1)
    assert lookup.propose(2) == [9, 9]


def test_most_recent_occurrence_first():
    lookup = NgramLookup([1, 2, 10, 11, 1, 2, 20, 21, 0, 1, 2], min_n=2, max_n=2)
    assert lookup.propose(2) == [20, 21]


def test_match_running_into_the_end_returns_fewer():
    lookup = NgramLookup([4, 1, 2, 3, 1, 2], min_n=2, max_n=2)
    assert lookup.propose(8) == [3, 1, 2]


def test_overlapping_matches_never_the_suffix_itself():
    # A run of one token: the suffix [7, 7, 7]'s previous occurrence is shifted by one: one token follows.
    lookup = NgramLookup([7, 7, 7, 7], min_n=2, max_n=3)
    assert lookup.propose(8) == [7]
    lookup = NgramLookup([7, 7, 7], min_n=3, max_n=3)  # the only occurrence is the suffix itself
    assert lookup.propose(8) == []
    # A repeating pair overlapping the suffix: [1, 2, 1] occurred two tokens earlier, followed by 2, 1.
    lookup = NgramLookup([1, 2, 1, 2, 1], min_n=3, max_n=3)
    assert lookup.propose(8) == [2, 1]


def test_index_follows_appended_tokens():
    lookup = NgramLookup([1, 2, 3], min_n=2, max_n=3)
    assert lookup.propose(4) == []
    lookup.extend([9, 1, 2])
    assert lookup.propose(4) == [3, 9, 1, 2]
    lookup.extend([5])  # [2, 5] is new
    assert lookup.propose(4) == []
    lookup.extend([1, 2])  # [1, 2] last followed by 5 now
    assert lookup.propose(4) == [5, 1, 2]


def test_proposes_after_tokens_not_in_the_context_yet():
    lookup = NgramLookup([5, 6, 7, 8, 9, 1, 2], min_n=2, max_n=3)
    assert lookup.propose(4) == []
    assert lookup.propose(4, after=[6]) == []  # [2, 6] never occurred; 1-grams are not looked up
    assert lookup.propose(4, after=[6, 7]) == [8, 9, 1, 2]  # the suffix lies among the drafts
    assert NgramLookup([1, 2, 3, 4, 9, 1], min_n=2, max_n=3).propose(3, after=[2]) == [3, 4, 9]  # [1, 2] spans the end
    # A continuation running into the context's end goes on through the drafts.
    assert NgramLookup([3, 4, 3], min_n=2, max_n=2).propose(4, after=[4]) == [3, 4]
    assert NgramLookup([], min_n=1).propose(2, after=[1, 1]) == []  # nothing indexed
    assert lookup.propose(0, after=[6, 7]) == []
    assert lookup.tokens == [5, 6, 7, 8, 9, 1, 2]  # `after` is not added


def test_invalid_sizes():
    for min_n, max_n in [(0, 3), (3, 2)]:
        with pytest.raises(ValueError, match="min_n"):
            NgramLookup([1, 2], min_n=min_n, max_n=max_n)


@pytest.mark.parametrize("min_n,max_n", [(1, 1), (1, 4), (2, 4), (3, 5)])
def test_matches_a_brute_force_scan(min_n, max_n):
    rng = random.Random(min_n * 10 + max_n)
    for _ in range(30):
        lookup = NgramLookup([], min_n=min_n, max_n=max_n)
        tokens = []
        for _ in range(60):  # a small alphabet, so that n-grams recur and overlap
            chunk = [rng.randrange(4) for _ in range(rng.randrange(1, 4))]
            tokens += chunk
            lookup.extend(chunk)
            k = rng.randrange(1, 9)
            assert lookup.propose(k) == brute_force_propose(tokens, k, min_n, max_n), tokens
            after = [rng.randrange(4) for _ in range(rng.randrange(0, 6))]
            assert lookup.propose(k, after) == brute_force_propose(tokens, k, min_n, max_n, after), (tokens, after)
