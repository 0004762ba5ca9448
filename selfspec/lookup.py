"""Prompt lookup: drafts taken from the context itself.

Answers often repeat what already stands in the context: a question about a passage quotes it, lists and
code repeat their own phrases. The last few tokens of the context (prompt + answer so far) are looked up
among its earlier n-grams, and the tokens that followed the most recent earlier occurrence are proposed
as drafts, for free: no model runs, the verification pass decides as it does for the INT4 draft's tokens.

The index is kept up to date as tokens arrive (one dict entry per n-gram size and token), so a proposal
is a handful of dict lookups whatever the context's length; all of it is host code, no device work.
"""


class NgramLookup:
    """An index of the context's n-grams (sizes min_n..max_n), each mapped to the position of the token
    that followed its most recent occurrence.

    An n-gram enters the index only once a token follows it, so the context's own suffix is never its
    own match: its most recent *earlier* occurrence is what `propose` finds, even when the two overlap
    (in a run of one repeated token the suffix's previous occurrence is shifted by one, and proposes
    the one token after it)."""

    def __init__(self, tokens=(), min_n: int = 2, max_n: int = 4):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        # n-gram (a tuple; sizes cannot collide) -> position of the token after its most recent occurrence
        self.follower: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens) -> None:
        """Append tokens to the context: the n-grams just before each new token now have it as follower."""
        for token in tokens:
            end = len(self.tokens)  # the new token's position
            self.tokens.append(int(token))
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.follower[tuple(self.tokens[end - n : end])] = end

    def propose(self, max_tokens: int, after=()) -> list[int]:
        """Up to max_tokens tokens that followed the longest suffix n-gram's most recent earlier occurrence
        (longest n first); fewer where that occurrence's continuation runs into the end of the context;
        [] when no suffix n-gram occurred before.

        `after`: tokens not in the context yet (the INT4 draft's drafts) taken as following it: the suffix
        may end among them, and a continuation running into the context's end goes on through them. Only
        the context's own n-grams are looked up."""
        if max_tokens < 1:
            return []
        after = list(after)
        tail = self.tokens[max(0, len(self.tokens) - self.max_n) :] + after  # all that a suffix n-gram can span
        for n in range(min(self.max_n, len(tail)), self.min_n - 1, -1):
            start = self.follower.get(tuple(tail[len(tail) - n :]))
            if start is not None:
                run = self.tokens[start : start + max_tokens]
                return run + after[: max_tokens - len(run)]
        return []
