"""What a verify pass could gain by checking the INT4 draft's second choice beside each of its drafts (a tree of
the chain and one leaf per draft: 2k + 1 tokens, at most 15 with k = 7): where the target rejects draft i, a leaf
holding the draft's second choice there that equals the target's token gives the target's next token too, one
token more in that round. Replayed over the draft's chains along the target's greedy answers with generate()'s
stopping rule (SmolLM2-135M-Instruct, CPU, float32, the first 5 prompts of bench/measure_acceptance.py), both passes
costed alike (verify 1.04 FP16 steps for 9-16 tokens) at draft steps of 0.38 (H100) and 0.45 (H200).

    python docs/perf/cpu-2026-12-07-draft-alternatives.py > OUT.json
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

DEPTH = 8


def replay(answer, chains, k_limit: int, leaves: bool):
    """(rounds, draft steps, rejections, rejections whose leaf was right) decoding `answer` with generate()'s rule."""
    rule = Threshold()
    j = rounds = steps = rejections = saved = 0
    while j < len(answer) - 1:
        chain = chains[j]
        k_max = min(k_limit, 128 - (j + 1) - 1)
        if k_max < 1:
            rounds, j = rounds + 1, j + 1
            continue
        right = 0
        while right < k_max and j + 1 + right < len(answer) and chain["tokens"][right] == answer[j + 1 + right]:
            right += 1
        k = rule.drafts(chain["confidences"], k_max)
        n = min(k, right)
        emitted = n + 1
        if n < k and j + 1 + n < len(answer):
            rejections += 1
            if leaves and chain["alternatives"][n][0] == answer[j + 1 + n] and j + 2 + n < len(answer):
                saved, emitted = saved + 1, n + 2
        rule.update(n, k, DEPTH)
        rounds, steps, j = rounds + 1, steps + k, j + emitted
    return rounds, steps, rejections, saved


@torch.inference_mode()
def main():
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, model, tokenizer = load_checkpoint(str(model_folder(None, tmp)), torch.float32, torch.device("cpu"), 1024)
    draft = make_draft(model)
    records = []
    for prompt in PROMPTS[:5]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=1024 - 128 - DEPTH)
        answer = generate(model, ids, 128, eos_token_id=ckpt.eos_token_id)[0]
        records.append({"answer": answer, "chains": draft_chains(model, draft, ids, answer, DEPTH)})
        print(f"{len(records)} prompts", file=sys.stderr, flush=True)
    tokens = sum(len(r["answer"]) - 1 for r in records)
    results = {}
    for k_limit in (7, 8):
        for leaves in (False, True):
            totals = [replay(r["answer"], r["chains"], k_limit, leaves) for r in records]
            rounds, steps, rejections, saved = (sum(t[i] for t in totals) for i in range(4))
            results[f"{k_limit} drafts{', leaves' if leaves else ''}"] = {
                "tokens_per_round": tokens / rounds, "rejections": rejections, "leaf_right": saved,
                **{f"speedup_at_draft_{c}": tokens / (steps * c + rounds * 1.04) for c in (0.38, 0.45)}}
    print(json.dumps({"tokens": tokens, "results": results}, indent=1))


if __name__ == "__main__":
    main()
