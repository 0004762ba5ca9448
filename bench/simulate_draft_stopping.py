"""How much the draft's stopping rule leaves on the table: exact simulation of stopping rules over the
draft's own chains, with the step costs measured on a GPU.

    python bench/simulate_draft_stopping.py [--model DIR] [--draft-step 0.41] [--verify-step 1.03] [--out F.json]
    python bench/simulate_draft_stopping.py --chains F.json [--max-step-draft N] [--draft-step ...] [--verify-step ...]

For every position j of the target's greedy answer (tokens up to j emitted, the target's KV cache before
it), the draft proposes its greedy chain of --max-step-draft tokens with their top probabilities, exactly
as generate() would in a round starting there. Any stopping rule that looks at those probabilities can then
be replayed without running a model again: a round costs k draft steps (--draft-step, in FP16 steps) plus
one verification (--verify-step) and emits the accepted drafts plus one token. The oracle drafts exactly
the tokens the target will accept: the bound for any rule. --chains replays the chains an earlier --out file
holds, with other step costs or cut to fewer drafts per round, without running the model. Default model: SmolLM2-135M-Instruct
(scripts/convert_gguf.py), float32 on CPU, the prompts of bench/measure_acceptance.py.
"""
import functools
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import check_output_file, check_positive, model_folder, parser  # noqa: E402
from bench.measure_acceptance import PROMPT_SETS, default_max_seq_len  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.folder import read_json  # noqa: E402
from selfspec.generate import adapt_th_stop_draft, generate  # noqa: E402
from selfspec.draft import LM_HEADS, make_draft  # noqa: E402


ALTERNATIVES = 3  # the draft's choices after its own that a chain records, for verify passes that check them too


@torch.inference_mode()
def draft_chains(model, draft, ids: list[int], answer: list[int], depth: int) -> list[dict]:
    """chains[j]: the draft's greedy tokens, their probabilities and the draft's next ALTERNATIVES choices after
    each (its second, third, ...) for a round whose last emitted token is answer[j], reading the target's cache
    before it (as in generate: the draft writes its own entries)."""
    seq, n = ids + answer[:-1], len(ids)
    model(torch.tensor([seq]), torch.arange(len(seq)))  # the target's KV everywhere
    chains = []
    for j in range(len(answer) - 1):
        token, chain = answer[j], {"tokens": [], "confidences": [], "alternatives": []}
        for i in range(depth):
            pos = n + j + i
            probs = draft(torch.tensor([[token]]), torch.tensor([pos]), pos + 1)[0, -1].float().softmax(-1)
            confidence, token = (float(v) for v in probs.max(-1))
            token = int(token)
            chain["tokens"].append(token)
            chain["confidences"].append(confidence)
            ranked = [int(t) for t in probs.topk(ALTERNATIVES + 1).indices if int(t) != token]
            chain["alternatives"].append(ranked[:ALTERNATIVES])
        chains.append(chain)
        end = min(n + j + depth, len(seq))
        if end > n + j:  # put the target's entries back where the draft wrote
            model(torch.tensor([seq[n + j : end]]), torch.arange(n + j, end), end)
    return chains


class Rule:
    """A stopping rule over the draft's top probabilities: it stops the draft once `stops(the probabilities of the
    drafts so far)`, and sees each round's outcome in `update`."""

    def stops(self, confidences: list[float]) -> bool:
        raise NotImplementedError

    def update(self, accepted: int, drafted: int, max_step_draft: int) -> None:
        pass

    def drafts(self, confidences: list[float], k_max: int, first: int = 1) -> int:
        """How many of the chain's tokens the draft proposes, up to k_max, when the first `first` come without
        consulting the rule (at least one: generate() consults it from the first draft on)."""
        k = max(1, first)
        while k < k_max and not self.stops(confidences[:k]):
            k += 1
        return min(k, k_max)


class Fixed(Rule):
    """Stops once the last draft's probability is under th."""

    def __init__(self, th: float):
        self.th = th

    def stops(self, confidences):
        return confidences[-1] < self.th


class Threshold(Fixed):
    """generate()'s rule: Fixed's, with a threshold that adapts after every round."""

    def __init__(self, th: float = 0.6):
        super().__init__(th)
        self.ema = 0.0

    def update(self, accepted, drafted, max_step_draft):
        self.th, self.ema = adapt_th_stop_draft(self.th, self.ema, accepted, drafted, max_step_draft)


class Product(Rule):
    """Stops once the product of the probabilities (the chain's chance of being right, as the draft sees it) is
    under th."""

    def __init__(self, th: float):
        self.th = th

    def stops(self, confidences):
        return math.prod(confidences) < self.th


def replay(answer, chains, make_rule, draft_step, verify_step, max_new_tokens=128):
    """(FP16-step cost, drafted, accepted, rounds) of decoding `answer` with the rule `make_rule()` (None: the
    oracle), the round logic of generate()."""
    rule = make_rule() if make_rule is not None else None
    j = cost = drafted = accepted = rounds = 0
    while j < len(answer) - 1:
        k_max = min(len(chains[j]["tokens"]), max_new_tokens - (j + 1) - 1)
        if k_max < 1:  # generate() takes a plain step
            cost, rounds, j = cost + 1, rounds + 1, j + 1
            continue
        tokens, confidences = chains[j]["tokens"], chains[j]["confidences"]
        right = 0
        while right < k_max and j + 1 + right < len(answer) and tokens[right] == answer[j + 1 + right]:
            right += 1
        if rule is None and right == 0:  # the oracle does not draft at all: one plain step
            cost, rounds, j = cost + 1, rounds + 1, j + 1
            continue
        k = right if rule is None else rule.drafts(confidences, k_max)
        n = min(k, right)
        cost += k * draft_step + verify_step
        drafted, accepted, rounds, j = drafted + k, accepted + n, rounds + 1, j + n + 1
        if rule is not None:
            rule.update(n, k, len(tokens))
    return cost, drafted, accepted, rounds


RULES = {"oracle": None, "adaptive 0.6 (generate's default)": Threshold}
RULES.update({f"fixed {t}": functools.partial(Fixed, t) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)})
RULES.update({f"product {t}": functools.partial(Product, t) for t in (0.2, 0.3, 0.4, 0.5, 0.6)})


def compare_rules(records, draft_step: float, verify_step: float) -> dict:
    """Replay every rule over every prompt's chains; print a markdown table, return the figures."""
    print("| rule | speedup over plain | acceptance | tokens/round |\n| --- | ---: | ---: | ---: |")
    results = {}
    tokens = sum(len(r["answer"]) - 1 for r in records)
    for name, make_rule in RULES.items():
        totals = [replay(r["answer"], r["chains"], make_rule, draft_step, verify_step) for r in records]
        cost, drafted, accepted, rounds = (sum(t[i] for t in totals) for i in range(4))
        results[name] = {"speedup": tokens / cost, "acceptance": accepted / drafted, "tokens_per_round": tokens / rounds}
        print(f"| {name} | {tokens / cost:.2f}x | {accepted / drafted:.1%} | {tokens / rounds:.2f} |")
    return results


def _ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _well_formed(record) -> bool:
    """A record as collect_chains writes it: the answer's ids, a chain of drafts after each of its tokens (ids,
    and a probability each), the prompt and, since the lookup studies, its ids."""
    def chain(c) -> bool:
        return (isinstance(c, dict) and all(isinstance(v, list) for v in c.values()) and _ids(c.get("tokens"))
                and len(c.get("confidences", [])) == len(c["tokens"])
                and all(isinstance(p, (int, float)) and 0 <= p <= 1 for p in c["confidences"]))
    return (isinstance(record, dict) and _ids(record.get("answer")) and isinstance(record.get("chains"), list)
            and len(record["chains"]) >= len(record["answer"]) - 1 and all(map(chain, record["chains"]))
            and isinstance(record.get("prompt", ""), str) and _ids(record.get("ids", [])))


def saved_chains(path: Path, depth: int) -> list[dict]:
    """The records of an earlier --out file, each chain cut to `depth` drafts."""
    records = read_json(path).get("records")
    if not isinstance(records, list) or not records or not all(map(_well_formed, records)):
        raise InputError(f"{path} holds no chains (not written by this script's --out?)")
    saved = min((len(c["tokens"]) for r in records for c in r["chains"]), default=0)
    if depth > saved:
        raise InputError(f"the chains in {path} are {saved} drafts long; --max-step-draft {depth} asks for more")
    cut = lambda c: {key: values[:depth] for key, values in c.items()}  # noqa: E731
    return [dict(r, chains=[cut(c) for c in r["chains"]]) for r in records]


def collect_chains(args) -> list[dict]:
    """The target's greedy answer to each prompt and the draft's chain at every position of it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model_folder(args.model, tmp)
        max_seq_len = default_max_seq_len(folder, args.max_seq_len)
        ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, torch.device("cpu"), max_seq_len)
    draft = make_draft(model, group_size=64, lm_head=args.draft_lm_head)
    records = []
    for prompt in PROMPT_SETS[args.prompt_set]:
        # Room for the answer and the draft chains read past its last token.
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=max_seq_len - 128 - args.max_step_draft)
        answer, _ = generate(model, ids, 128, eos_token_id=ckpt.eos_token_id)
        records.append({"prompt": prompt, "ids": ids, "answer": answer,
                        "chains": draft_chains(model, draft, ids, answer, args.max_step_draft)})
    return records


def main():
    p = parser(__doc__)
    p.add_argument("--model", type=Path, help="Llama or Baichuan2 checkpoint folder (default: converted SmolLM2)")
    p.add_argument("--chains", type=Path, help="replay the chains of an earlier --out file instead of running a model")
    p.add_argument("--draft-step", type=float, default=0.41, help="draft step cost in FP16 steps")
    p.add_argument("--verify-step", type=float, default=1.03, help="verification cost in FP16 steps")
    p.add_argument("--max-step-draft", type=int, default=8, help="drafts per round at most: the chains' length")
    p.add_argument("--draft-lm-head", choices=LM_HEADS, default="int8")
    p.add_argument("--max-seq-len", type=int, help="KV cache length (default: 2048, or the model's context if shorter)")
    p.add_argument("--prompt-set", choices=sorted(PROMPT_SETS), default="default",
                   help="the prompts of bench/measure_acceptance.py's --prompt-set")
    p.add_argument("--out", type=Path, help="write the chains and results as JSON")
    args = p.parse_args()
    check_positive(args, "--draft-step", "--verify-step", "--max-step-draft")
    check_output_file(args.out)
    records = saved_chains(args.chains, args.max_step_draft) if args.chains else collect_chains(args)
    results = compare_rules(records, args.draft_step, args.verify_step)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                        "records": records}))


if __name__ == "__main__":
    sys.exit(run_main(main))
