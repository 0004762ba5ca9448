"""How much more a verify pass gains from the draft's third and fourth choices as leaves, beside the second
choices that generate(second_choices=True) verifies: the pass's spare rows (16 tokens on CUDA's fast path, a round
of k drafts leaving 15 - k) filled rank by rank, each rank beside the first drafts first. Replayed over the draft's
chains along the target's greedy answers with generate()'s stopping rule (SmolLM2-135M-Instruct, CPU, float32, the
first 5 prompts of bench/measure_acceptance.py, up to 8 drafts), every pass costed alike (verify 1.04 FP16 steps) at a
draft step of 0.38 (H100).

    python docs/perf/cpu-2026-12-07-leaf-ranks.py > OUT.json
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.harness import model_folder  # noqa: E402
from bench.measure_acceptance import PROMPTS  # noqa: E402
from bench.simulate_draft_stopping import Threshold, draft_chains  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.generate import generate  # noqa: E402

DEPTH, NEW_TOKENS, PASS_LIMIT = 8, 128, 16


def replay(answer, chains, ranks: int):
    """(rounds, draft steps, leaves taken by rank) decoding `answer` with generate()'s rule and leaves of the
    draft's choices 2..ranks."""
    rule = Threshold()
    j = rounds = steps = 0
    taken = [0] * (ranks - 1)
    while j < len(answer) - 1:
        chain = chains[j]
        k_max = min(DEPTH, NEW_TOKENS - (j + 1) - 1)
        if k_max < 1:
            rounds, j = rounds + 1, j + 1
            continue
        right = 0
        while right < k_max and j + 1 + right < len(answer) and chain["tokens"][right] == answer[j + 1 + right]:
            right += 1
        k = rule.drafts(chain["confidences"], k_max)
        n = min(k, right)
        emitted = n + 1
        if n < k and j + 2 + n < len(answer):
            room = PASS_LIMIT - 1 - k
            for rank in range(ranks - 1):  # the leaf of this rank beside d_(n+1) is row rank * k + n + 1 of the spare ones
                if rank * k + n + 1 <= room and chain["alternatives"][n][rank] == answer[j + 1 + n]:
                    taken[rank] += 1
                    emitted = n + 2
                    break
        rule.update(n, k, DEPTH)
        rounds, steps, j = rounds + 1, steps + k, j + emitted
    return rounds, steps, taken


@torch.inference_mode()
def main():
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, model, tokenizer = load_checkpoint(str(model_folder(None, tmp)), torch.float32, torch.device("cpu"), 1024)
    draft = make_draft(model)
    records = []
    for prompt in PROMPTS[:5]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=1024 - NEW_TOKENS - DEPTH)
        answer = generate(model, ids, NEW_TOKENS, eos_token_id=ckpt.eos_token_id)[0]
        records.append({"answer": answer, "chains": draft_chains(model, draft, ids, answer, DEPTH)})
        print(f"{len(records)} prompts", file=sys.stderr, flush=True)
    tokens = sum(len(r["answer"]) - 1 for r in records)
    results = {}
    for ranks in (1, 2, 3, 4):
        totals = [replay(r["answer"], r["chains"], ranks) for r in records]
        rounds, steps = sum(t[0] for t in totals), sum(t[1] for t in totals)
        taken = [sum(t[2][i] for t in totals) for i in range(ranks - 1)]
        results[f"choices up to rank {ranks}"] = {"tokens_per_round": tokens / rounds, "leaves_taken_by_rank": taken,
                                                  "speedup_at_draft_0.38": tokens / (steps * 0.38 + rounds * 1.04)}
    print(json.dumps({"device": "CPU, 2 cores, float32", "torch": torch.__version__, "date": "2026-12-07",
                      "command": "python docs/perf/cpu-2026-12-07-leaf-ranks.py > OUT.json", "tokens": tokens,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
