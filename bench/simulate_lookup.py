"""Ways of combining the prompt lookup with the INT4 draft, replayed exactly over recorded draft chains.

    python bench/simulate_lookup.py --chains F.json [--draft-step 0.45 ...] [--verify-step 1.04] [--out R.json]

F.json is written by `bench/simulate_draft_stopping.py --max-step-draft 8 --out F.json` (8 or more; any --prompt-set):
the target's greedy answer to each prompt, the prompt's ids, and at every position of the answer the INT4
draft's greedy chain with its top probabilities. Greedy decoding emits the target's answer whatever is
drafted, so a policy is fully described by what it proposes and what that costs; each is replayed round by
round with generate()'s logic (stopping rule, adaptive threshold, lookup index, budget):

- `int4`, `lookup+int4`: generate()'s draft sources (the replay gives generate()'s counts; tested);
- `hindsight`: where the lookup proposes, whichever of its run and an INT4 round emits more tokens per cost,
  known only after the fact: about the best a rule that picks one of the two per round could do (not a
  strict bound: the better round now can lead to worse rounds later);
- `tree`: where the lookup proposes, the INT4 draft drafts as well, and one verify pass checks both
  branches (a tree of two; the pass then takes up to 16 tokens): the round keeps the longer accepted prefix
  (also with the INT4 branch cut to --tree-drafts tokens);
- `checked`: where the lookup proposes, the INT4 draft drafts its first token; if it is the lookup's first
  token the lookup run is verified, else the INT4 draft goes on as in an INT4 round;
- `checked when missing`: as `checked`, but only while the lookup's first tokens have been missing (an EMA
  of whether each proposal's first token was the one emitted, under 0.5); else as `lookup+int4`;
- `guided`: where the lookup proposes, one INT4 draft pass over the lookup run (--guide-step, in FP16 steps)
  keeps the run as far as the draft agrees with it, adds the draft's own next token, and the draft goes on
  from there as in an INT4 round.

Costs are in plain FP16 steps: --draft-step per INT4 draft step, --verify-step per verify pass, --tree-verify-step
per pass over a tree (up to 16 tokens: 10-16 tokens cost 1.04-1.05x of a step on an H100, docs/performance.md).
Speedup = answer tokens / cost. Greedy decoding only: a tree needs another accept rule for sampling.
"""
import json
import sys
from pathlib import Path

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import check_output_file, check_positive, parser  # noqa: E402
from bench.simulate_draft_stopping import Threshold, saved_chains  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402
from selfspec.lookup import NgramLookup  # noqa: E402
from selfspec.sampling import count_accepted  # noqa: E402

POLICIES = ("int4", "lookup+int4", "hindsight", "tree", "checked", "checked when missing", "guided")
# `checked when missing`: the EMA of the lookup's first-token hits (weight of the previous value), and the level under
# which its runs are checked
HIT_EMA, HIT_FLOOR = 0.5, 0.5
MAX_TREE_TOKENS = 16  # one verify pass: the last token and both branches


def accepted(drafts: list[int], emitted: list[int]) -> int:
    """sampling.count_accepted for drafts that may run past the end of what the target emits."""
    return count_accepted(drafts[: len(emitted)], emitted)


def hindsight_int4(drafts, emitted, n_lookup, draft_step, verify_step) -> bool:
    """Whether an INT4 round proposing `drafts` emits more tokens per cost than the lookup run that accepts
    n_lookup, the target emitting `emitted` next."""
    return (accepted(drafts, emitted) + 1) / (verify_step + len(drafts) * draft_step) > (n_lookup + 1) / verify_step


def replay(ids, answer, chains, policy: str, draft_step: float, verify_step: float, guide_step: float = 0.0,
           tree_verify_step: float | None = None, max_step_draft: int = 8, max_new_tokens: int = 128,
           ngram=(2, 4), max_lookup: int | None = None, tree_drafts: int | None = None) -> dict:
    """Replay one prompt's decoding under `policy` (POLICIES): its cost in FP16 steps and counts. A verify pass
    costs verify_step, one over a tree tree_verify_step (default: verify_step). The lookup proposes up to
    max_lookup tokens a round (default: max_step_draft), the INT4 draft up to max_step_draft, in a tree's
    branch up to tree_drafts (default: as many as the pass has room for)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    lookup = NgramLookup(ids + answer[:1], *ngram) if policy != "int4" else None
    threshold = Threshold()
    j = 0  # answer[:j + 1] is emitted
    counts = dict(cost=0.0, rounds=0, drafted=0, accepted=0, lookup_rounds=0, lookup_drafted=0, lookup_accepted=0)
    hits = 1.0  # EMA of the lookup's first token being right, for `checked when missing`
    while j < len(answer) - 1:
        budget = max_new_tokens - (j + 1) - 1  # a round emits its accepted drafts and one token more
        k_max = min(max_step_draft, budget)
        proposal = lookup.propose(min(max_lookup or max_step_draft, budget)) if lookup is not None else []
        tokens, confidences = chains[j]["tokens"][:max_step_draft], chains[j]["confidences"][:max_step_draft]
        emitted = answer[j + 1 :]  # what the target emits from here, whatever is drafted
        n_lookup = accepted(proposal, emitted)
        checked = policy == "checked" or policy == "checked when missing" and hits < HIT_FLOOR
        if proposal:  # known once the round has emitted its tokens
            hits = HIT_EMA * hits + (1 - HIT_EMA) * (n_lookup > 0)
        k_int4 = threshold.drafts(confidences, k_max)  # what an INT4 round would draft
        int4_round = not proposal or checked and tokens[0] != proposal[0] or policy == "hindsight" and hindsight_int4(
            tokens[:k_int4], emitted, n_lookup, draft_step, verify_step)
        if budget < 1:  # a plain step
            n, cost, drafted = 0, 1.0, 0
        elif int4_round:
            proposal = []
            k = k_int4
            n = accepted(tokens[:k], emitted)
            cost, drafted = verify_step + k * draft_step, k
            threshold.update(n, k, max_step_draft)
        elif policy in ("lookup+int4", "hindsight", "checked", "checked when missing"):
            n = n_lookup
            cost, drafted = verify_step + (draft_step if checked else 0.0), len(proposal)
        elif policy == "tree":
            k = min(k_max, MAX_TREE_TOKENS - 1 - len(proposal), tree_drafts or k_max)  # room in the pass
            k = threshold.drafts(confidences, k) if k else 0
            n_int4 = accepted(tokens[:k], emitted)
            n = max(n_lookup, n_int4)
            cost = (verify_step if tree_verify_step is None else tree_verify_step) + k * draft_step
            drafted = len(proposal) + k
            if k:
                threshold.update(n_int4, k, max_step_draft)
        else:  # guided: the draft's pass over the run gives its tokens up to the first disagreement, and one more
            free = min(accepted(tokens, proposal) + 1, k_max)
            k = threshold.drafts(confidences, k_max, first=free)
            n = accepted(tokens[:k], emitted)
            cost, drafted = verify_step + guide_step + (k - free) * draft_step, k
        if proposal:
            counts["lookup_rounds"] += 1
            counts["lookup_drafted"] += len(proposal)
            counts["lookup_accepted"] += n_lookup
        counts["cost"] += cost
        counts["rounds"] += 1
        counts["drafted"] += drafted
        counts["accepted"] += n
        if lookup is not None:
            lookup.extend(answer[j + 1 : j + n + 2])
        j += n + 1
    return counts


def compare(records, draft_step: float, verify_step: float, guide_steps, tree_verify_step: float,
            max_step_draft: int = 8, max_lookup: int | None = None, tree_drafts=(None,)) -> dict:
    """Every policy over every record (`guided` at each of guide_steps, `tree` at each of tree_drafts): per
    prompt and overall speedups; prints a markdown table."""
    runs = {p: (p, {}) for p in POLICIES if p not in ("tree", "guided")}
    runs.update({"tree" if n is None else f"tree ({n} INT4)": ("tree", dict(tree_drafts=n)) for n in tree_drafts})
    runs.update({f"guided ({g:g})": ("guided", dict(guide_step=g)) for g in guide_steps})
    names = list(runs)
    results = {name: {"prompts": []} for name in names}
    print("| prompt | " + " | ".join(names) + " |\n| --- |" + " ---: |" * len(names))
    for record in records:
        tokens = len(record["answer"]) - 1
        row = []
        for name, (policy, options) in runs.items():
            counts = replay(record["ids"], record["answer"], record["chains"], policy, draft_step, verify_step,
                            tree_verify_step=tree_verify_step, max_step_draft=max_step_draft, max_lookup=max_lookup,
                            **options)
            counts["speedup"] = tokens / counts["cost"] if counts["cost"] else 1.0
            results[name]["prompts"].append({"prompt": record["prompt"][-60:], "tokens": tokens, **counts})
            row.append(f"{counts['speedup']:.2f}x")
        print(f"| {record['prompt'][-40:]!r} | " + " | ".join(row) + " |")
    total_tokens = sum(len(r["answer"]) - 1 for r in records)
    for name in names:
        cost = sum(p["cost"] for p in results[name]["prompts"])
        results[name]["speedup"] = total_tokens / cost
    print("| **all** | " + " | ".join(f"**{results[n]['speedup']:.2f}x**" for n in names) + " |")
    return results


def main():
    p = parser(__doc__)
    p.add_argument("--chains", type=Path, required=True, action="append",
                   help="an --out file of bench/simulate_draft_stopping.py with prompt ids (several: their prompts together)")
    p.add_argument("--draft-step", type=float, nargs="+", default=[0.45],
                   help="INT4 draft step cost in FP16 steps (several: a table each)")
    p.add_argument("--verify-step", type=float, default=1.04, help="verify pass cost in FP16 steps")
    p.add_argument("--tree-verify-step", type=float, default=1.05,
                   help="a verify pass over both branches (up to 16 tokens) in FP16 steps")
    p.add_argument("--guide-step", type=float, nargs="+", default=[0.45, 0.6, 0.9],
                   help="cost of the draft's one pass over a lookup run in FP16 steps, for `guided` (several: each)")
    p.add_argument("--tree-drafts", type=int, nargs="+", default=[1, 2],
                   help="also trees whose INT4 branch drafts at most this many tokens (several: each)")
    p.add_argument("--max-step-draft", type=int, default=8, help="INT4 drafts a round at most")
    p.add_argument("--max-lookup", type=int, help="lookup drafts a round at most (default: --max-step-draft; at most 15)")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    check_positive(args, "--draft-step", "--verify-step", "--tree-verify-step", "--guide-step", "--tree-drafts",
                   "--max-step-draft")
    check_output_file(args.out)
    if args.max_lookup is not None and not 1 <= args.max_lookup < MAX_TREE_TOKENS:
        raise InputError(f"--max-lookup must be in [1, {MAX_TREE_TOKENS - 1}], got {args.max_lookup}")
    records = []
    for path in args.chains:
        for record in saved_chains(path, args.max_step_draft):
            if "ids" not in record:
                raise InputError(f"{path} has no prompt ids: write it again with bench/simulate_draft_stopping.py")
            records.append(record)
    results = {}
    for draft_step in args.draft_step:
        print(f"\n### INT4 draft step {draft_step:g}, verify pass {args.verify_step:g}\n")
        results[f"draft step {draft_step:g}"] = compare(records, draft_step, args.verify_step, args.guide_step,
                                                         args.tree_verify_step, args.max_step_draft, args.max_lookup,
                                                         (None, *args.tree_drafts))
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}))


if __name__ == "__main__":
    sys.exit(run_main(main))
