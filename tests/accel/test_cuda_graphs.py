"""The graphed decode (accel/cuda_graphs.py, with every kernel swapped in): replay equals the eager step,
PDL changes no result, and speculative decoding through the graphs equals plain decoding."""
import random

import pytest
import torch

from selfspec import accel
from selfspec.accel import graph_models, launch
from selfspec.accel.cuda_graphs import GraphedModel
from selfspec.draft import make_draft
from selfspec.generate import generate
from selfspec.model import AttentionWindow
from helpers import check_greedy_speculative_equals_plain, random_model


def cuda_model(position_encoding: str, num_heads: int, max_seq_len: int):
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=max_seq_len).cuda()
    model.setup_caches(max_seq_len)
    accel.use_kernels(model)
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_graphs_replay_the_eager_step(position_encoding, num_heads):
    model = cuda_model(position_encoding, num_heads, max_seq_len=600)
    graphed = GraphedModel(model, bucket=128)
    tokens = torch.randint(0, 320, (1, 300), device="cuda")
    expected = model(tokens, torch.arange(300, device="cuda"))[0]
    model(tokens[:, :100], torch.arange(100, device="cuda"))
    for pos in range(100, 290, 7):  # crosses buckets; mixes 1-token and 3-token steps
        t = 1 if pos % 2 else 3
        logits = graphed(tokens[:, pos : pos + t], torch.arange(pos, pos + t, device="cuda"), pos + t)[0]
        torch.testing.assert_close(logits, expected[pos : pos + t], atol=2e-4, rtol=2e-4)
        model(tokens[:, pos + t : pos + 7], torch.arange(pos + t, pos + 7, device="cuda"))  # fill the gap eagerly
    assert len(graphed.graphs) >= 4


def test_programmatic_dependent_launch_stays_off_where_there_is_none():
    assert launch.available(torch.device("cpu")) is False
    with launch.pdl(torch.device("cpu")) as enabled:
        assert enabled is False and launch.enabled is False


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs Hopper")
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_programmatic_dependent_launch_changes_no_result(position_encoding, num_heads):
    # The same kernels, launched to overlap their neighbours and wait on the device: bit-identical steps
    # of the FP16 target and the INT4 draft, eager and replayed from graphs captured with PDL. Each pass first
    # finds junk where it writes its keys: read before rope_and_store wrote them, they would change the result.
    model = random_model(position_encoding, num_heads=num_heads, head_dim=32, max_seq_len=300,
                         dtype=torch.float16).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32)
    accel.use_kernels(model, draft)
    tokens = torch.randint(0, 320, (1, 200), device="cuda")
    model(tokens, torch.arange(200, device="cuda"))
    caches = {id(c): c for m in (model, draft) for layer in m.model.layers for c in layer.self_attn.kv_cache.buffers()}
    results = {}
    for pdl in (False, True):
        graphed = [GraphedModel(m, bucket=64, pdl=pdl) for m in (model, draft)]
        with launch.pdl(torch.device("cuda"), pdl) as enabled:
            assert enabled == pdl
            for name, m in [("target", model), ("draft", draft), ("target graph", graphed[0]), ("draft graph", graphed[1])]:
                for t in (1, 5):
                    for cache in caches.values():  # the draft shares the target's
                        cache[:, :, 150:160] = 30.0
                    results[pdl, name, t] = m(tokens[:, 150 : 150 + t], torch.arange(150, 150 + t, device="cuda"), 150 + t).clone()
    assert launch.enabled is False  # nothing is left on after the block
    for key, logits in results.items():
        if key[0]:
            assert torch.equal(logits, results[(False, *key[1:])]), key


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_graphed_prefill_matches_eager(position_encoding, num_heads):
    model = cuda_model(position_encoding, num_heads, max_seq_len=600)
    graphed = GraphedModel(model, bucket=128, prefill_bucket=128)
    for n in (40, 200, 17, 590):  # padded to 128, 256, 128 again, and capped at the context (600)
        tokens = torch.randint(0, 320, (1, n), device="cuda")
        positions = torch.arange(n, device="cuda")
        expected = model(tokens, positions, n)[0, -1]
        logits = graphed(tokens, positions, n, last_only=True)
        assert logits.shape == (1, 1, expected.shape[-1])
        torch.testing.assert_close(logits[0, 0], expected, atol=2e-4, rtol=2e-4)
    assert sorted(graphed.prefill_graphs) == [128, 256, 600]


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_float16_speculative_with_graphs_equals_plain(position_encoding, num_heads):
    """On the GPU path (gemv_triton's linears, Triton attention, CUDA graphs) a verify pass computes each
    row as a one-token step does, so float16 speculative decoding equals plain decoding exactly."""
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=300, dtype=torch.float16).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32, lm_head="int4")
    model_g, draft_g = graph_models(model, draft, bucket=64)
    assert draft.lm_head.kernel == draft.model.layers[0].self_attn.W_pack.kernel == "triton_half2"
    check_greedy_speculative_equals_plain(model_g, draft_g, seed=1, runs=8, new_tokens=60)


@pytest.mark.gpu
@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_float16_second_choices_with_graphs_equal_plain(position_encoding, num_heads, penalty):
    """Verify passes with leaves (the draft's second choices at its drafts' positions, their keys in slots of
    their own) still give each row of a one-token step, bit for bit in float16; accepted leaves move their
    keys to their positions."""
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=300, dtype=torch.float16).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32)
    model_g, draft_g = graph_models(model, draft, bucket=64)
    accepted = check_greedy_speculative_equals_plain(model_g, draft_g, seed=5, runs=8, new_tokens=60, second_choices=True,
                                                     repetition_penalty=penalty)
    assert accepted > 0
    assert any(with_slots for _, _, with_slots in model_g.graphs)


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_float16_speculative_with_a_windowed_draft_equals_plain(position_encoding, num_heads):
    # Contexts of 250-360 positions: the draft's attention skips the cache blocks between its sinks and window.
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=400, dtype=torch.float16).cuda()
    model.setup_caches(400)
    draft = make_draft(model, group_size=32, attention_window=AttentionWindow(sinks=4, recent=32))
    model_g, draft_g = graph_models(model, draft, bucket=64)
    check_greedy_speculative_equals_plain(model_g, draft_g, seed=3, runs=4, new_tokens=60, prompt_lengths=(250, 300))


@pytest.mark.gpu
@pytest.mark.parametrize("lm_head", ["shared", "int8"])
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_speculative_with_graphs_equals_plain_float32(position_encoding, num_heads, lm_head):
    model = cuda_model(position_encoding, num_heads, max_seq_len=300)
    draft = make_draft(model, group_size=32, lm_head=lm_head)
    model_g, draft_g = graph_models(model, draft, bucket=64)
    check_greedy_speculative_equals_plain(model_g, draft_g, seed=0, runs=6, new_tokens=80, plain=model)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_frequent_vocab_head_with_graphs_equals_plain(dtype):
    model = random_model("rope", num_heads=4, max_seq_len=300, dtype=dtype).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32, head_vocab=torch.arange(0, 320, 2))  # even ids only
    model_g, draft_g = graph_models(model, draft, bucket=64)
    rng = random.Random(2)
    for _ in range(4):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(1, 100))]
        plain, _ = generate(model_g, prompt, 60)
        spec, stats = generate(model_g, prompt, 60, draft=draft_g)
        assert spec == plain and 0 < stats.accepted < stats.drafted


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_repetition_penalty_with_graphs_equals_plain_float32(position_encoding, num_heads):
    model = cuda_model(position_encoding, num_heads, max_seq_len=300)
    model_g, draft_g = graph_models(model, make_draft(model, group_size=32), bucket=64)
    rng = random.Random(2)
    for _ in range(4):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(1, 60))]
        plain, _ = generate(model, prompt, 60, repetition_penalty=1.3)
        spec, stats = generate(model_g, prompt, 60, draft=draft_g, repetition_penalty=1.3)
        assert spec == plain and stats.drafted > 0


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_speculative_sampling_with_graphs(position_encoding, num_heads):
    """Sampling through the graphs, on the device: top-k 1 is greedy decoding; a seeded CUDA generator
    repeats itself; another seed gives another answer."""
    model = cuda_model(position_encoding, num_heads, max_seq_len=300)
    draft = make_draft(model, group_size=32)
    model_g, draft_g = graph_models(model, draft, bucket=64)
    prompt = [5, 17, 250, 3, 99]
    plain, _ = generate(model, prompt, 50)
    sampled, stats = generate(model_g, prompt, 50, draft=draft_g, do_sample=True, temperature=0.7, top_k=1)
    assert sampled == plain and stats.drafted > 0

    def sample(seed):
        return generate(model_g, prompt, 50, draft=draft_g, do_sample=True, temperature=1.5, top_p=0.95,
                        generator=torch.Generator("cuda").manual_seed(seed))

    (first, stats), (again, _), (other, _) = sample(3), sample(3), sample(4)
    assert first == again and first != other
    assert stats.drafted > 0 and all(0 <= t < 320 for t in first)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_lookup_with_graphs_equals_plain(position_encoding, num_heads, dtype):
    """Prompt lookup through the graphs: its drafts reach the device by one copy from pinned memory and the
    verify pass is the same pass; with the INT4 draft continuing after a lookup run, the draft's graphs take
    several tokens; the lookup continuing the draft's drafts stages its tokens after them. Greedy (and top-k 1
    sampling) equal plain decoding, with and without a penalty."""
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=300, dtype=dtype).cuda()
    model.setup_caches(300)
    model_g, draft_g = graph_models(model, make_draft(model, group_size=32), bucket=64)
    rng = random.Random(4)
    lookup_accepted = 0
    for _ in range(4):
        phrase = [rng.randrange(320) for _ in range(rng.randrange(4, 12))]
        prompt = phrase * rng.randrange(2, 5)
        penalty = rng.choice([1.0, 0.8])
        plain, _ = generate(model_g, prompt, 60, repetition_penalty=penalty)
        for source, after, lookup_after in (("lookup", False, False), ("lookup+int4", False, False),
                                            ("lookup+int4", True, False), ("lookup+int4", False, True)):
            options = dict(draft=None if source == "lookup" else draft_g, draft_source=source, draft_after_lookup=after,
                           lookup_after_draft=lookup_after, repetition_penalty=penalty, lookup_min_ngram=1)
            spec, stats = generate(model_g, prompt, 60, **options)
            assert spec == plain
            lookup_accepted += stats.lookup_accepted
            assert generate(model_g, prompt, 60, do_sample=True, top_k=1, **options)[0] == plain
    assert lookup_accepted > 0


@pytest.mark.gpu
def test_a_verify_pass_past_the_fast_path_is_refused():
    model = cuda_model("rope", 4, max_seq_len=300)
    model_g, draft_g = graph_models(model, make_draft(model, group_size=32), bucket=64)
    assert accel.pass_limit(model_g) == accel.pass_limit(model) == accel.MAX_VERIFY_TOKENS
    last = accel.MAX_VERIFY_TOKENS - 1  # drafts that still fit with the token before them
    assert generate(model_g, [1, 2, 3], 40, draft=draft_g, max_step_draft=last)[1].drafted > 0
    for draft, source in ((draft_g, "int4"), (None, "lookup")):
        with pytest.raises(ValueError, match="max_step_draft"):
            generate(model_g, [1, 2, 3], 40, draft=draft, draft_source=source, max_step_draft=last + 1)
