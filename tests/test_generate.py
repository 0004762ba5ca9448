import io
import random

import pytest
import torch

from selfspec import accel
from selfspec.draft import make_draft
from selfspec.errors import CheckpointError
from selfspec.generate import (Answer, Buffers, GenerationStats, TextStreamer, adapt_th_stop_draft, draft_more,
                               generate)
from selfspec.lookup import NgramLookup
from selfspec.model import AttentionWindow
from selfspec.sampling import Sampling
from selfspec.tokenizer import HFTokenizer, Tokenizer
from smollm2 import smollm2_folder
from helpers import random_model

SIZES = [("rope", 4), ("alibi", 5)]  # 7B-style and 13B-style (non-power-of-two heads)


@pytest.fixture(scope="module", params=SIZES, ids=["7b-style", "13b-style"])
def model_and_draft(request):
    position_encoding, num_heads = request.param
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=160)
    draft = make_draft(model, group_size=32)
    accel.use_kernels(model, draft)  # on CPU: torch's int4 and int8 kernels for the draft
    return model, draft


def test_a_round_may_draft_past_the_gpu_pass_limit_on_cpu(model_and_draft):
    model, draft = model_and_draft
    assert accel.pass_limit(model) is None  # the limit belongs to the CUDA kernels and graphs
    prompt = [3, 1, 4, 1, 5]
    spec, stats = generate(model, prompt, 60, draft=draft, th_stop_draft=0.0, max_step_draft=accel.MAX_VERIFY_TOKENS + 4)
    assert spec == generate(model, prompt, 60)[0] and stats.drafted > accel.MAX_VERIFY_TOKENS


@pytest.mark.parametrize("options", [{}, {"second_choices": True}, {"second_choices": True, "repetition_penalty": 1.3}],
                         ids=["drafts", "second-choices", "second-choices-penalty"])
def test_speculative_greedy_equals_plain_greedy_float32(model_and_draft, options):
    model, draft = model_and_draft
    second_choices = options.get("second_choices", False)
    plain_options = {key: value for key, value in options.items() if key != "second_choices"}
    rng = random.Random(0)
    drafted = accepted = leaves = leaves_accepted = 0
    for _ in range(12):
        prompt = [rng.randrange(model.args.vocab_size) for _ in range(rng.randrange(1, 40))]
        n = rng.randrange(1, 60)
        plain, _ = generate(model, prompt, n, **plain_options)
        spec, stats = generate(
            model, prompt, n, draft=draft, th_stop_draft=rng.random(), max_step_draft=rng.randrange(1, 10),
            min_step_draft=rng.randrange(1, 4), auto_th_stop_draft=rng.random() < 0.5, **options,
        )
        assert spec == plain
        assert stats.tokens_generated == len(plain) == n
        assert stats.leaves == (stats.drafted if second_choices else 0)  # on CPU no pass limit: a leaf beside each draft
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
        leaves, leaves_accepted = leaves + stats.leaves, leaves_accepted + stats.leaves_accepted
    assert drafted > 0 and 0 < accepted < drafted  # both the accept and the reject paths ran
    if second_choices:
        assert 0 < leaves_accepted < leaves  # and a leaf taken and not


@pytest.mark.parametrize("lm_head", ["shared", "int4"])  # the fixture's drafts have the default INT8 head
def test_speculative_equals_plain_with_other_draft_heads(lm_head):
    model = random_model("rope", num_heads=4, max_seq_len=160)
    draft = make_draft(model, group_size=32, lm_head=lm_head)
    plain, _ = generate(model, [7, 99, 3], 60)
    spec, stats = generate(model, [7, 99, 3], 60, draft=draft)
    assert spec == plain and 0 < stats.accepted < stats.drafted


@pytest.mark.parametrize("position_encoding,num_heads", SIZES)
def test_speculative_equals_plain_with_a_draft_attending_through_a_small_window(position_encoding, num_heads):
    # A window that hides most of these contexts from the draft.
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=160)
    draft = make_draft(model, group_size=32, attention_window=AttentionWindow(sinks=2, recent=8))
    assert draft.attention_window == AttentionWindow(2, 8) and model.attention_window is None
    prompt = list(range(5, 45))
    plain, _ = generate(model, prompt, 80)
    spec, stats = generate(model, prompt, 80, draft=draft)
    assert spec == plain and 0 < stats.accepted < stats.drafted


def test_repetition_penalty_plain_decoding_matches_a_reference_loop():
    from transformers import RepetitionPenaltyLogitsProcessor

    model = random_model("alibi", num_heads=5, max_seq_len=160)
    prompt = [7, 99, 3, 7]
    out, _ = generate(model, prompt, 40, repetition_penalty=1.3)
    ids = list(prompt)
    for _ in range(40):  # the whole sequence through the model each time, transformers' processor, argmax
        logits = model(torch.tensor([ids]), torch.arange(len(ids)))[:, -1]
        ids.append(int(RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([ids]), logits.float()).argmax()))
    assert out == ids[len(prompt):]
    assert out != generate(model, prompt, 40)[0]  # the penalty did change the answer


@pytest.mark.parametrize("do_sample", [False, True])
def test_weights_that_overflow_are_refused_before_any_token(do_sample):
    model = random_model("rope", num_heads=4, max_seq_len=160)
    draft = make_draft(model, group_size=32)
    model.model.layers[0].mlp.down_proj.weight.data.fill_(3e38)  # finite, as a hostile checkpoint may hold
    with pytest.raises(CheckpointError, match="logits for this prompt are not finite"):
        generate(model, [7, 99, 3], 8, draft=draft, do_sample=do_sample)


def test_speculative_with_repetition_penalty_equals_plain_float32(model_and_draft):
    model, draft = model_and_draft
    rng = random.Random(3)
    accepted = 0
    for _ in range(6):
        prompt = [rng.randrange(model.args.vocab_size) for _ in range(rng.randrange(1, 30))]
        penalty = rng.choice([1.1, 1.5, 2.0])
        plain, _ = generate(model, prompt, 50, repetition_penalty=penalty)
        spec, stats = generate(model, prompt, 50, draft=draft, repetition_penalty=penalty, th_stop_draft=rng.random())
        assert spec == plain
        accepted += stats.accepted
        sampled, _ = generate(model, prompt, 50, draft=draft, repetition_penalty=penalty, do_sample=True, top_k=1)
        assert sampled == plain  # top-k 1 sampling is greedy: the penalty reaches the sampling path too
    assert accepted > 0


class PassSizes:
    """A model wrapper (as GraphedModel is one) that records how many tokens each pass takes."""

    def __init__(self, module):
        self.module, self.sizes = module, []

    def __call__(self, tokens, *args, **kwargs):
        self.sizes.append(tokens.shape[1])
        return self.module(tokens, *args, **kwargs)


def test_second_choices_fill_a_pass_up_to_its_limit(model_and_draft):
    model, draft = model_and_draft
    counted = PassSizes(model)
    prompt = list(range(3, 30))
    spec, stats = generate(counted, prompt, 80, draft=draft, second_choices=True, max_step_draft=6, th_stop_draft=0.0,
                           max_pass_tokens=10)  # as CUDA's fast path limits passes to 16
    assert spec == generate(model, prompt, 80)[0]
    # Rounds of 6 drafts (the threshold never stops the draft) take 3 leaves; [0] is the prefill.
    assert max(counted.sizes[1:]) == 10 and 0 < stats.leaves < stats.drafted
    with pytest.raises(ValueError, match=r"max_step_draft 10 needs verify passes of 11 tokens; passes here take at "
                                         r"most 10 \(max_step_draft 9\)"):
        generate(model, prompt, 8, draft=draft, max_step_draft=10, max_pass_tokens=10)


def test_second_choices_near_the_end_of_the_context():
    # Leaves need slots after a round's drafts: near the end of the cache, fewer leaves or none.
    model = random_model("alibi", num_heads=5, max_seq_len=48)
    plain, _ = generate(model, [1, 2, 3], 45)
    spec, stats = generate(model, [1, 2, 3], 45, draft=make_draft(model, 32), th_stop_draft=0.0, second_choices=True)
    assert spec == plain and len(plain) == 45 and stats.leaves > 0


# generate()'s options for each way of drafting with the lookup
LOOKUP_VARIANTS = [dict(draft_source="lookup"), dict(draft_source="lookup+int4"),
                   dict(draft_source="lookup+int4", draft_after_lookup=True),
                   dict(draft_source="lookup+int4", lookup_after_draft=True),
                   dict(draft_source="lookup+int4", draft_after_lookup=True, lookup_after_draft=True)]
LOOKUP_IDS = ["lookup", "lookup+int4", "draft-after-lookup", "lookup-after-draft", "both"]


def lookup_options(variant, draft) -> dict:
    return dict(draft=None if variant["draft_source"] == "lookup" else draft, **variant)


def repeating_prompt(rng, vocab_size):
    """A prompt that repeats a phrase, so that the lookup finds the answer's n-grams in it (the answers of
    random models also repeat themselves)."""
    phrase = [rng.randrange(vocab_size) for _ in range(rng.randrange(4, 12))]
    return [rng.randrange(vocab_size) for _ in range(rng.randrange(0, 5))] + phrase * rng.randrange(2, 4)


# A penalty under 1 favours repeated tokens, so that lookup drafts are accepted under a penalty too.
@pytest.mark.parametrize("penalty", [1.0, 1.2, 0.7])
def test_lookup_greedy_equals_plain_greedy_float32(model_and_draft, penalty):
    model, draft = model_and_draft
    rng = random.Random(5)
    totals = dict(lookup_drafted=0, lookup_accepted=0, int4_drafted=0)
    for trial in range(6):
        prompt = repeating_prompt(rng, model.args.vocab_size)
        n = rng.randrange(20, 60)
        plain, _ = generate(model, prompt, n, repetition_penalty=penalty)
        for variant in LOOKUP_VARIANTS:
            spec, stats = generate(
                model, prompt, n, repetition_penalty=penalty, max_step_draft=rng.randrange(1, 10),
                th_stop_draft=rng.random(), lookup_min_ngram=rng.choice([1, 2]), lookup_max_ngram=rng.choice([2, 4]),
                min_step_draft=rng.randrange(1, 3), **lookup_options(variant, draft),
            )
            assert spec == plain, (trial, variant)
            assert stats.tokens_generated == len(plain)
            assert stats.lookup_accepted <= stats.lookup_drafted <= stats.drafted and stats.accepted <= stats.drafted
            assert stats.lookup_steps <= stats.verify_steps and stats.lookup_accepted <= stats.accepted
            if variant["draft_source"] == "lookup":
                assert stats.drafted == stats.lookup_drafted
            totals["lookup_drafted"] += stats.lookup_drafted
            totals["lookup_accepted"] += stats.lookup_accepted
            totals["int4_drafted"] += stats.drafted - stats.lookup_drafted
    # The lookup proposed, was accepted (where the penalty allows repeating) and was rejected; the INT4
    # draft drafted in the other rounds.
    assert totals["lookup_accepted"] < totals["lookup_drafted"] and totals["int4_drafted"] > 0
    assert totals["lookup_accepted"] > 0 or penalty > 1


class ScriptedDraft:
    """A draft over a vocabulary of 16 whose greedy picks are `picks`, in turn."""

    def __init__(self, picks):
        self.picks = iter(picks)

    def __call__(self, tokens, positions, end, last_only=False):
        logits = torch.zeros(1, 1, 16)
        logits[0, 0, next(self.picks)] = 16.0
        return logits


@pytest.mark.parametrize("second_choices", [False, True])
def test_lookup_takes_over_once_the_drafts_lead_into_a_match(second_choices):
    # The context [7, 1, 2, 3, 4, 5, 9] ends in no known n-gram; after the drafts 1, 2 it ends in [1, 2], which 3
    # followed: the lookup proposes what followed, through the context's end and on through the drafts.
    context = [7, 1, 2, 3, 4, 5, 9]

    def run(pass_drafts, min_step_draft=1):
        bufs = Buffers(16, 64, torch.device("cpu"), second_choices)
        answer = Answer(context, 100, None, 1.0, 16, "cpu", None)
        lookup = NgramLookup(context, min_n=2, max_n=3)
        k, j = draft_more(ScriptedDraft([1, 2] + [8] * 6), bufs, answer, Sampling(), None, len(context), 0, 8,
                          min_step_draft, 0.0, lookup, pass_drafts)
        return k, j, bufs.tokens[1 : k + 1].tolist()

    assert run(15) == (8, 6, [1, 2, 3, 4, 5, 9, 1, 2])
    # The pass's limit cuts the lookup's tokens, and keeps a row for each second choice.
    assert run(8) == ((6, 4, [1, 2, 3, 4, 5, 9]) if second_choices else (8, 6, [1, 2, 3, 4, 5, 9, 1, 2]))
    # Looked up from step 3 on only, the [1, 2] is behind: the draft's 8s lead nowhere; it drafts to its limit.
    assert run(15, min_step_draft=3) == (8, 0, [1, 2] + [8] * 6)


def test_lookup_after_draft_with_second_choices_equals_plain(model_and_draft, monkeypatch):
    import selfspec.generate as generation

    model, draft = model_and_draft
    continued = []  # the lookup's tokens after the INT4 draft's, each round

    def recording(*args):
        k, j = draft_more(*args)
        continued.append(j)
        return k, j

    monkeypatch.setattr(generation, "draft_more", recording)
    rng = random.Random(6)
    for _ in range(6):
        prompt = repeating_prompt(rng, model.args.vocab_size)
        plain, _ = generate(model, prompt, 50)
        spec, stats = generate(model, prompt, 50, draft=draft, draft_source="lookup+int4", lookup_after_draft=True,
                               second_choices=True, lookup_min_ngram=1, th_stop_draft=rng.random())
        assert spec == plain and stats.leaves <= stats.drafted - stats.lookup_drafted
    assert any(continued)  # rounds that began with the INT4 draft and ended with the lookup


def lookup_rounds(model, prompt, n):
    """The rounds of lookup-only decoding, as lists of emitted tokens (a round of more than one token had
    lookup drafts accepted), and the output."""
    rounds = []

    class Rounds:
        def put(self, ids):
            rounds.append(list(ids))

        def end(self):
            pass

    out, _ = generate(model, prompt, n, draft_source="lookup", streamer=Rounds())
    return rounds, out


@pytest.mark.parametrize("variant", LOOKUP_VARIANTS, ids=LOOKUP_IDS)
def test_lookup_runs_cut_by_eos_and_by_the_budget(model_and_draft, variant):
    """EOS among the accepted tokens of a lookup run ends the output there, and a budget that ends inside a
    run cuts its proposal; both as plain decoding does."""
    model, draft = model_and_draft
    rng = random.Random(11)
    cases = 0
    for _ in range(80):
        prompt = repeating_prompt(rng, model.args.vocab_size)
        rounds, plain = lookup_rounds(model, prompt, 60)
        start = 0
        for r in rounds:
            if len(r) >= 3:  # lookup tokens r[0], r[1] accepted: a budget that leaves room for one or two drafts
                for cut in (start + 2, start + 3):
                    options = lookup_options(variant, draft)
                    out, stats = generate(model, prompt, cut, **options)
                    assert out == plain[:cut] and stats.tokens_generated == cut
                    if plain.index(plain[cut - 1]) == cut - 1:  # plain[cut - 1] first appears here: make it EOS
                        out, _ = generate(model, prompt, 60, eos_token_id=plain[cut - 1], **options)
                        assert out == plain[:cut]
                        cases += 1
            start += len(r)
        if cases >= 3:
            break
    assert cases >= 3


def test_lookup_alone_works_without_a_draft_and_plain_decoding_is_unchanged():
    model = random_model("rope", max_seq_len=160)
    prompt = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]
    plain, plain_stats = generate(model, prompt, 40)
    assert plain_stats.drafted == plain_stats.lookup_drafted == 0 and plain_stats.verify_steps == 39
    out, stats = generate(model, prompt, 40, draft_source="lookup")
    assert out == plain and stats.lookup_drafted == stats.drafted > 0
    assert stats.final_th_stop_draft == 0.6  # no INT4 round: the threshold never moved


def test_stop_threshold_adapts_to_int4_rounds_only(model_and_draft, monkeypatch):
    import selfspec.generate as generation

    model, draft = model_and_draft
    calls = []

    def recording(th, match_ema, accepted, drafted, max_step_draft):
        calls.append((accepted, drafted))
        return adapt_th_stop_draft(th, match_ema, accepted, drafted, max_step_draft)

    monkeypatch.setattr(generation, "adapt_th_stop_draft", recording)
    rng = random.Random(2)
    for variant in LOOKUP_VARIANTS[1:]:
        for _ in range(3):
            calls.clear()
            prompt = prompt_where_lookup_is_accepted(model, rng, 50)
            _, stats = generate(model, prompt, 50, **lookup_options(variant, draft))
            assert stats.lookup_drafted > 0 and calls
            int4_drafted, int4_accepted = stats.drafted - stats.lookup_drafted, stats.accepted - stats.lookup_accepted
            # With the draft after the lookup, rounds whose INT4 drafts the target never reached (a lookup token was
            # rejected) do not count.
            if variant.get("draft_after_lookup"):
                assert sum(d for _, d in calls) <= int4_drafted and sum(a for a, _ in calls) <= int4_accepted
            else:
                assert sum(d for _, d in calls) == int4_drafted and sum(a for a, _ in calls) == int4_accepted


def prompt_where_lookup_is_accepted(model, rng, n=40) -> list[int]:
    """A repeating prompt whose greedy answer accepts lookup drafts (random models' answers repeat the
    context only now and then)."""
    for _ in range(100):
        prompt = repeating_prompt(rng, model.args.vocab_size)
        if generate(model, prompt, n, draft_source="lookup")[1].lookup_accepted > 0:
            return prompt
    raise AssertionError("no prompt found")


def test_lookup_sampling_with_top_k_1_is_greedy(model_and_draft):
    model, draft = model_and_draft
    prompt = prompt_where_lookup_is_accepted(model, random.Random(8))
    plain, _ = generate(model, prompt, 40)
    for variant in LOOKUP_VARIANTS:
        sampled, stats = generate(model, prompt, 40, do_sample=True, temperature=0.7, top_k=1,
                                  **lookup_options(variant, draft))
        assert sampled == plain and stats.lookup_drafted > 0


def test_seeded_lookup_sampling_is_reproducible(model_and_draft):
    model, draft = model_and_draft
    prompt = prompt_where_lookup_is_accepted(model, random.Random(9))
    runs = [generate(model, prompt, 40, draft=draft, draft_source="lookup+int4", do_sample=True, temperature=0.5,
                     generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert runs[0][0] == runs[1][0]


def test_rejects_bad_draft_sources():
    model = random_model("rope", max_seq_len=64)
    with pytest.raises(ValueError, match="draft_source must be one of"):
        generate(model, [1], 5, draft_source="ngram")
    with pytest.raises(ValueError, match="draft=None"):
        generate(model, [1], 5, draft=model, draft_source="lookup")
    with pytest.raises(ValueError, match="needs the INT4 draft"):
        generate(model, [1], 5, draft_source="lookup+int4")
    with pytest.raises(ValueError, match="min_n"):
        generate(model, [1], 5, draft_source="lookup", lookup_min_ngram=0)
    with pytest.raises(ValueError, match="lookup_after_draft"):
        generate(model, [1], 5, draft=make_draft(model), lookup_after_draft=True)


def test_perfect_draft_accepts_everything():
    model = random_model("rope", max_seq_len=160)
    prompt = [5, 6, 7]
    plain, _ = generate(model, prompt, 41)
    spec, stats = generate(model, prompt, 41, draft=model, th_stop_draft=0.0, max_step_draft=4)
    assert spec == plain
    assert stats.acceptance_rate == 1.0 and stats.drafted == 32 and stats.verify_steps == 8
    assert stats.tokens_per_step == 5.0


def test_stops_at_eos_and_respects_budget(model_and_draft):
    model, draft = model_and_draft
    prompt = [3, 1, 4, 1, 5]
    plain, _ = generate(model, prompt, 30)
    eos = plain[12]
    first = plain.index(eos)
    for d in (None, draft):
        out, stats = generate(model, prompt, 30, draft=d, eos_token_id=eos)
        assert out == plain[: first + 1] and stats.tokens_generated == first + 1


def test_stream_receives_exactly_the_output(model_and_draft):
    model, draft = model_and_draft

    class Recorder:
        def __init__(self):
            self.ids, self.ended = [], False

        def put(self, ids):
            self.ids += ids

        def end(self):
            self.ended = True

    recorder = Recorder()
    out, _ = generate(model, [9, 8, 7], 25, draft=draft, streamer=recorder)
    assert recorder.ids == out and recorder.ended


STREAMED_TEXT = ("Hello there!  Two  spaces,\nnew lines\n\n and 12345 numbers. 今天天气很好，我们去公园散步吧。"
                 " 龘 mixed 中文 text 🙂 done.")


@pytest.mark.parametrize("which", ["sentencepiece", "tokenizers"])
def test_streamed_text_equals_the_full_decode(which, tiny_7b, tmp_path_factory):
    tokenizer = (Tokenizer(tiny_7b / "tokenizer.model") if which == "sentencepiece"
                 else HFTokenizer(smollm2_folder(tmp_path_factory)))
    ids = tokenizer.encode(STREAMED_TEXT * 3)
    rng = random.Random(0)
    for _ in range(3):  # rounds of 1..4 tokens, as speculative decoding emits them
        out = io.StringIO()
        streamer = TextStreamer(tokenizer, file=out)
        pos, printed = 0, []
        while pos < len(ids):
            n = rng.randint(1, 4)
            streamer.put(ids[pos : pos + n])
            pos += n
            printed.append(out.getvalue())
        streamer.end()
        assert out.getvalue() == tokenizer.decode(ids) + "\n"
        assert "\ufffd" not in "".join(printed)  # no half characters on the way
        assert len(streamer.ids) - streamer.context_start < 16  # the decode window stays short


def test_rejects_impossible_arguments():
    model = random_model("rope", max_seq_len=64)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="context"):
        generate(model, [1] * 60, 5)
    with pytest.raises(ValueError, match="th_stop_draft"):
        generate(model, [1], 5, draft=model, th_stop_draft=1.5)
    for penalty in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="repetition_penalty"):
            generate(model, [1], 5, repetition_penalty=penalty)
    with pytest.raises(ValueError, match="KV cache"):
        other = random_model("rope", max_seq_len=64)
        generate(model, [1], 5, draft=make_draft(other))
    for options in ({}, {"draft": make_draft(model), "do_sample": True}):
        with pytest.raises(ValueError, match="second_choices"):
            generate(model, [1], 5, second_choices=True, **options)


def test_runs_to_the_end_of_the_context():
    model = random_model("alibi", num_heads=5, max_seq_len=48)
    plain, _ = generate(model, [1, 2, 3], 45)
    spec, _ = generate(model, [1, 2, 3], 45, draft=make_draft(model, 32), th_stop_draft=0.0)
    assert spec == plain and len(plain) == 45


def test_sampling_with_top_k_1_is_greedy(model_and_draft):
    model, draft = model_and_draft
    plain, _ = generate(model, [2, 7, 1, 8], 30)
    sampled, _ = generate(model, [2, 7, 1, 8], 30, draft=draft, do_sample=True, temperature=0.7, top_k=1)
    assert sampled == plain


def test_seeded_sampling_is_reproducible(model_and_draft):
    model, draft = model_and_draft
    runs = [
        generate(model, [4, 4], 30, draft=draft, do_sample=True, temperature=1.3, top_p=0.9,
                 generator=torch.Generator().manual_seed(7))[0]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_speculative_equals_plain_with_a_head_over_part_of_the_vocabulary():
    model = random_model("alibi", num_heads=5, max_seq_len=160)
    ids = torch.arange(0, model.args.vocab_size, 2)  # the draft proposes even ids only
    draft = make_draft(model, group_size=32, head_vocab=ids)
    plain, _ = generate(model, [7, 99, 3], 80)
    spec, stats = generate(model, [7, 99, 3], 80, draft=draft)
    assert spec == plain and 0 < stats.accepted < stats.drafted
    assert any(t % 2 for t in plain)  # the odd ids came from the target's own picks


def test_statistics_record():
    stats = GenerationStats(tokens_generated=11, e2e_time_s=2.0, first_token_latency_s=0.5, drafted=20,
                            accepted=15, verify_steps=4, lookup_drafted=8, lookup_accepted=6, lookup_steps=2)
    d = stats.as_dict()
    assert d["acceptance_rate"] == 0.75 and d["tokens_per_step"] == 2.5
    assert (d["lookup_drafted"], d["lookup_accepted"], d["lookup_steps"]) == (8, 6, 2)
    assert d["decode_tokens_per_s"] == pytest.approx(10 / 1.5) and d["tokens_per_s"] == 5.5


def ulp(x: float, dtype) -> float:
    import math

    return 2.0 ** math.floor(math.log2(abs(x))) * torch.finfo(dtype).eps


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("position_encoding,num_heads", SIZES)
def test_half_precision_diverges_only_at_near_ties(dtype, position_encoding, num_heads):
    """The documented fp16/bf16 tolerance: speculative and plain greedy agree token for token up to the
    first position where the target's two best logits are within 4 ulps (in the model dtype); a verify
    pass over k+1 tokens rounds differently from a one-token step, so such a tie may break either way."""
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=200, dtype=dtype)
    draft = make_draft(model, group_size=32)
    rng = random.Random(1)
    identical = 0
    for _ in range(10):
        prompt = [rng.randrange(model.args.vocab_size) for _ in range(rng.randrange(1, 40))]
        plain, _ = generate(model, prompt, 60)
        spec, _ = generate(model, prompt, 60, draft=draft)
        if spec == plain:
            identical += 1
            continue
        i = next(i for i, (a, b) in enumerate(zip(plain, spec)) if a != b)
        prefix = prompt + plain[:i]
        logits = model(torch.tensor([prefix]), torch.arange(len(prefix)))[0, -1].float()
        top2 = logits.topk(2).values
        assert float(top2[0] - top2[1]) <= 4 * ulp(float(top2[0]), dtype)
    assert identical >= 5


class CountingModel:
    """The model, recording (number of tokens, first position) of each forward pass."""

    def __init__(self, module):
        self.module, self.passes = module, []

    def __call__(self, tokens, input_pos, end=None, last_only=False):
        self.passes.append((tokens.shape[1], int(input_pos[0])))
        return self.module(tokens, input_pos, end, last_only)


@pytest.mark.parametrize("speculative", [False, True], ids=["plain", "speculative"])
@pytest.mark.parametrize("sampling", [{}, {"do_sample": True, "temperature": 0.8, "top_k": 20}], ids=["greedy", "sampled"])
def test_continuing_after_cached_turns_equals_prefilling_the_conversation(model_and_draft, speculative, sampling):
    """Three turns of a conversation, each starting after the ids the earlier turns left in the KV cache and
    prefilling only its new ids, give the tokens that a prefill of the whole conversation gives (float32)."""
    model, draft = model_and_draft
    options = dict(draft=draft if speculative else None, repetition_penalty=1.2, **sampling)
    rng = random.Random(1)
    conversation, cached, turns = [], 0, []
    for turn, message_length in enumerate((30, 12, 5)):
        conversation = conversation + [rng.randrange(model.args.vocab_size) for _ in range(message_length)]
        counting = CountingModel(model)
        answer, _ = generate(counting, conversation, 20, cached_tokens=cached,
                             generator=torch.Generator().manual_seed(turn), **options)
        assert counting.passes[0] == (len(conversation) - cached, cached)  # the prefill: the new ids only
        turns.append((conversation, answer))
        conversation = conversation + answer
        cached = len(conversation) - 1  # the last answer id was emitted, never run through the model
    for turn, (prompt, answer) in enumerate(turns):  # after the whole chain, which never prefilled from 0
        from_scratch, _ = generate(model, prompt, 20, generator=torch.Generator().manual_seed(turn), **options)
        assert answer == from_scratch, turn
    with pytest.raises(ValueError, match="cached_tokens"):
        generate(model, [1, 2, 3], 4, cached_tokens=3)
