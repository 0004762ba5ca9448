"""GPU paths: loading onto the GPU, the Triton GEMV kernels (INT4, INT8, 16-bit), CUDA graphs, and lossless
decoding through them.

Skipped without CUDA, except the kernel's logic, which also runs under Triton's CPU interpreter when
Triton is installed (a subprocess, since the interpreter is chosen when Triton is imported)."""
import random

import pytest
import torch

from selfspec import accel
from selfspec.accel import gemv, int4, launch
from selfspec.accel import graph_models
from selfspec.accel.cuda_graphs import GraphedModel
from selfspec.checkpoint import device_copier, load_model
from selfspec.generate import generate
from selfspec.model import Linear
from selfspec.draft import Int4MLP, draft_bytes, make_draft
from selfspec.quantize import (
    CLIP_RATIOS, Int4Linear, Int8Linear, dequantize_int4, pack_half2_words, quantize_int4, weight_bytes,
)
from helpers import random_model, run_in_triton_interpreter

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def cuda_model(position_encoding: str, num_heads: int, max_seq_len: int):
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=max_seq_len).cuda()
    model.setup_caches(max_seq_len)
    accel.use_kernels(model)
    return model


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_device_copier_matches_tensor_to(dtype):
    to_gpu = device_copier("cuda", torch.float16, slice_bytes=1000)  # most tensors pass in several slices
    torch.manual_seed(0)
    tensors = [torch.randn(n, dtype=dtype) for n in (0, 1, 250, 499, 500, 501, 4321)]
    tensors += [torch.randn(37, 64, dtype=dtype).T, torch.randn(8, 8, device="cuda", dtype=dtype)]
    copies = [to_gpu(t) for t in tensors]  # queued one after the other, both buffers in use
    for tensor, copy in zip(tensors, copies):
        assert copy.device.type == "cuda" and copy.dtype == torch.float16 and copy.shape == tensor.shape
        assert torch.equal(copy, tensor.to(device="cuda", dtype=torch.float16))


@cuda
@pytest.mark.parametrize("shape,group_size", [((1024, 4096), 64), ((512, 11008), 64), ((300, 512), 32), ((64, 256), 128)])
def test_draft_quantization_on_the_gpu_matches_torch_on_cpu(shape, group_size):
    torch.manual_seed(0)
    w = (torch.randn(shape) * shape[1] ** -0.5).half()
    w[::97, ::89] *= 20  # outliers, so that clipping matters
    q, s = int4.quantize_groups(w.cuda(), group_size, CLIP_RATIOS)  # the Triton kernel
    q_ref, s_ref = quantize_int4(w, group_size)  # torch's version
    # Only the squared errors' summation order differs: a group may choose another ratio where two give
    # the same error to float32 rounding, nowhere else.
    differ = (s.cpu() != s_ref)
    assert differ.float().mean() < 1e-3
    groups = w.float().view(shape[0], -1, group_size)

    def error(q, s):
        return ((groups - q.cpu().view_as(groups).float() * s.cpu()[..., None]) ** 2).sum(-1)

    torch.testing.assert_close(error(q, s)[differ], error(q_ref, s_ref)[differ], rtol=1e-5, atol=0)
    assert torch.equal(q.cpu().view_as(groups)[~differ], q_ref.view_as(groups)[~differ])


@cuda
@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b_sharded"])
def test_loading_onto_the_gpu_gives_the_weights_loaded_on_cpu(request, fixture):
    folder = request.getfixturevalue(fixture)
    on_cpu = load_model(folder, torch.float16, "cpu").state_dict()
    on_gpu = load_model(folder, torch.float16, "cuda").state_dict()
    assert on_gpu.keys() == on_cpu.keys()
    for key, tensor in on_gpu.items():
        assert tensor.is_cuda and tensor.dtype == on_cpu[key].dtype, key
        if key == "lm_head.weight":  # normalized after loading, on each device with its own rounding
            torch.testing.assert_close(tensor.cpu(), on_cpu[key], atol=1e-3, rtol=0)
        else:
            assert torch.equal(tensor.cpu(), on_cpu[key]), key

INTERPRETER_CHECK = """
import torch
from selfspec.accel.int4 import int4_matmul
from selfspec.quantize import dequantize_int4, pack_nibbles, quantize_int4
torch.manual_seed(0)
for n, k, m, g, blocks in [(24, 192, 1, 64, (8, 2)), (40, 320, 3, 32, (16, 4)), (16, 1056, 1, 32, (4, 8))]:
    w = torch.randn(n, k)
    q, s = quantize_int4(w, g)
    x = torch.randn(m, k)
    y = int4_matmul(x, pack_nibbles(q, g), s, g, blocks)
    ref = x @ dequantize_int4(q, s).T
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, g, err)
from selfspec.accel.int8 import int8_matmul
for n, k, m, blocks in [(24, 192, 1, (8, 64)), (37, 320, 3, (4, 128)), (16, 1000, 2, (16, 256))]:
    q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    s = torch.rand(n) / 127
    x = torch.randn(m, k)
    y = int8_matmul(x, q, s, blocks)
    ref = x @ (q.float() * s[:, None]).T
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, err)
from selfspec.accel.gemv import matmul
for n, k, m, blocks in [(24, 192, 1, (16, 64)), (37, 320, 1, (32, 128)), (5, 1000, 1, (16, 256)),
                        (40, 192, 9, (32, 64)), (37, 320, 16, (16, 128)), (5, 1000, 2, (16, 256))]:
    w = torch.randn(n, k)
    x = torch.randn(1, m, k)
    y = matmul(x, w, blocks)
    ref = x @ w.T
    assert y.shape == (1, m, n), y.shape
    err = float((y - ref).norm() / ref.norm())
    assert err < 1e-5, (n, k, m, err)
from selfspec.accel.int4 import quantize_groups
from selfspec.quantize import CLIP_RATIOS
for n, k, g in [(24, 192, 64), (40, 320, 32), (3, 128, 128)]:
    w = torch.randn(n, k)
    w[0, 5] = 30.0  # an outlier: a clipped scale wins for its group
    q, s = quantize_groups(w, g, CLIP_RATIOS)
    q_ref, s_ref = quantize_int4(w, g)  # on CPU: torch's version
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref), (n, k, g)
    ratios_chosen = (s / (w.view(n, -1, g).abs().amax(-1) / 7)).round(decimals=4).unique()
    assert len(ratios_chosen) >= 2, ratios_chosen  # the search did choose between ratios
print("ok")
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the compiled kernel is tested instead")
def test_triton_kernel_logic_in_the_interpreter():
    pytest.importorskip("triton")
    run_in_triton_interpreter(INTERPRETER_CHECK)


@cuda
@pytest.mark.parametrize("m", [1, 2, 9])
@pytest.mark.parametrize("n,k", [(4096, 4096), (11008, 4096), (4096, 11008), (1000, 320)])
@pytest.mark.parametrize("dtype,kernel", [(torch.float16, "triton_half2"), (torch.bfloat16, "triton")])
def test_triton_int4_matches_dequantized_matmul(n, k, m, dtype, kernel):
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    layer = Int4Linear(w, 64)
    accel.use_kernels(layer)
    assert layer.kernel == kernel
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    q, s = quantize_int4(w, layer.group_size)
    ref = x.float() @ dequantize_int4(q, s.to(dtype).float()).T
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    # f16x2 sums of four products in float16, then float32; bfloat16 output rounding is coarser
    assert float((y.float() - ref).norm() / ref.norm()) < (2e-3 if dtype == torch.float16 else 8e-3)


@cuda
@pytest.mark.parametrize("config", range(len(getattr(int4, "HALF2_CONFIGS", []))))
@pytest.mark.parametrize("n,k,glu", [(4096, 4096, False), (4096, 11008, False), (22016, 4096, True), (1000, 320, False),
                                     (200, 320, True)])
def test_every_half2_configuration_matches_dequantized_matmul(config, n, k, glu):
    # The autotuner picks one configuration per shape, so each way of summing (per iteration, per word), with
    # and without masks (whole tiles or not), is checked here directly.
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    q, s = quantize_int4(w, 64)
    x = torch.randn(3, k, device="cuda", dtype=torch.float16)
    ref = x.float() @ dequantize_int4(q, s.half().float()).T
    if glu:
        ref = torch.nn.functional.silu(ref[:, 0::2]) * ref[:, 1::2]
    y = int4.int4_matmul_half2(x, pack_half2_words(q), s.half(), 64, glu=glu, config=int4.HALF2_CONFIGS[config])
    assert y.shape == ref.shape and float((y.float() - ref).norm() / ref.norm()) < 2e-3


@cuda
@pytest.mark.parametrize("m", [1, 2, 9, 16])
@pytest.mark.parametrize("n,k", [(12288, 4096), (4096, 11008), (13696, 5120), (5120, 13696), (1000, 320), (7, 100)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_linear_serves_decode_sizes_and_matches_float32(n, k, m, dtype):
    layer = Linear(k, n).to("cuda", dtype)
    x = torch.randn(1, m, k, device="cuda", dtype=dtype)
    assert not gemv.serves(layer.weight.float())  # float32 stays with cuBLAS
    accel.use_kernels(layer)
    assert isinstance(layer, gemv.GemvLinear)
    prefill = torch.randn(1, 17, k, device="cuda", dtype=dtype)  # past MAX_VERIFY_TOKENS: cuBLAS
    assert torch.equal(layer(prefill), torch.nn.functional.linear(prefill, layer.weight))
    y = layer(x)
    ref = torch.nn.functional.linear(x.float(), layer.weight.float())
    assert y.dtype == dtype and y.shape == (1, m, n)
    for i in range(m):  # each row as a one-token call computes: bit for bit
        assert torch.equal(layer(x[:, i : i + 1]), y[:, i : i + 1]), i
    # float32 sums; the output rounding to 16 bits is the error left
    assert float((y.float() - ref).norm() / ref.norm()) < (1e-3 if dtype == torch.float16 else 6e-3)


@cuda
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("n,k", [(125696, 4096), (125696, 5120), (1000, 320)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_int8_matches_dequantized_matmul(n, k, m, dtype):
    layer = Int8Linear(torch.nn.functional.normalize(torch.randn(n, k, device="cuda"), dim=1).to(dtype))
    accel.use_kernels(layer)
    assert layer.kernel == "triton"
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    ref = x.float() @ (layer.q.float() * layer.scales.float()[:, None]).T
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    assert float((y.float() - ref).norm() / ref.norm()) < (1e-3 if dtype == torch.float16 else 8e-3)


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_draft_mlp_applies_silu_in_the_gate_up_kernel(dtype):
    model = random_model("rope", num_heads=8, head_dim=32, intermediate_size=688, dtype=dtype).cuda()
    mlp = model.model.layers[0].mlp
    fused = Int4MLP(mlp, 64)
    accel.use_kernels(fused)
    assert fused.gate_up_proj.kernel == ("triton_half2" if dtype == torch.float16 else "triton")
    gate, up, down = (Int4Linear(lin.weight, 64) for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    for layer in (gate, up, down):
        accel.use_kernels(layer)
    for m in (1, 3):
        x = torch.randn(1, m, 256, device="cuda", dtype=dtype)
        hidden = torch.nn.functional.silu(gate(x).float()) * up(x).float()
        got = fused.gate_up_proj(x)
        assert got.shape == (1, m, 688) and got.dtype == dtype
        assert float((got.float() - hidden).norm() / hidden.norm()) < 1e-2
        expected = down(hidden.to(dtype)).float()
        assert float((fused(x).float() - expected).norm() / expected.norm()) < 1e-2


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_draft_bytes_on_the_gpu(dtype):
    model = random_model("rope", num_heads=8, head_dim=16, intermediate_size=256, dtype=dtype).cuda()
    draft = make_draft(model, group_size=64)
    accel.use_kernels(model, draft)
    assert {m.kernel for m in draft.modules() if isinstance(m, Int4Linear)} == {
        "triton_half2" if dtype == torch.float16 else "triton"}
    assert draft_bytes(model.args, dtype, 64) == weight_bytes(draft, quantized_only=True)


@cuda
@pytest.mark.parametrize("scale", [1e-3, 300.0])
def test_half2_kernel_keeps_small_and_large_activations(scale):
    # The f16x2 products are (n - 8) / 16 * x: no overflow inside for |x| in the hundreds (outputs near 10^4),
    # no flush of small x.
    w = torch.randn(512, 1024, device="cuda", dtype=torch.float16)
    layer = Int4Linear(w, 64)
    accel.use_kernels(layer)
    x = torch.randn(3, 1024, device="cuda", dtype=torch.float16) * scale
    q, s = quantize_int4(w, 64)
    ref = x.float() @ dequantize_int4(q, s.half().float()).T
    y = layer(x).float()
    assert torch.isfinite(y).all() and float((y - ref).norm() / ref.norm()) < 2e-3


@cuda
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


@cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0), reason="needs Hopper")
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_programmatic_dependent_launch_changes_no_result(position_encoding, num_heads):
    # The same kernels, launched to overlap their neighbours and wait on the device: bit-identical steps
    # of the FP16 target and the INT4 draft, eager and replayed from graphs captured with PDL.
    model = random_model(position_encoding, num_heads=num_heads, head_dim=32, max_seq_len=300,
                         dtype=torch.float16).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32)
    accel.use_kernels(model, draft)
    tokens = torch.randint(0, 320, (1, 200), device="cuda")
    model(tokens, torch.arange(200, device="cuda"))
    results = {}
    for pdl in (False, True):
        graphed = [GraphedModel(m, bucket=64, pdl=pdl) for m in (model, draft)]
        with launch.pdl(torch.device("cuda"), pdl) as enabled:
            assert enabled == pdl
            for name, m in [("target", model), ("draft", draft), ("target graph", graphed[0]), ("draft graph", graphed[1])]:
                for t in (1, 5):
                    results[pdl, name, t] = m(tokens[:, 150 : 150 + t], torch.arange(150, 150 + t, device="cuda"), 150 + t).clone()
    assert launch.enabled is False  # nothing is left on after the block
    for key, logits in results.items():
        if key[0]:
            assert torch.equal(logits, results[(False, *key[1:])]), key


@cuda
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


@cuda
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_float16_speculative_with_graphs_equals_plain(position_encoding, num_heads):
    """On the GPU path (gemv_triton's linears, Triton attention, CUDA graphs) a verify pass computes each
    row as a one-token step does, so float16 speculative decoding equals plain decoding exactly."""
    model = random_model(position_encoding, num_heads=num_heads, max_seq_len=300, dtype=torch.float16).cuda()
    model.setup_caches(300)
    draft = make_draft(model, group_size=32, lm_head="int4")
    model_g, draft_g = graph_models(model, draft, bucket=64)
    assert draft.lm_head.kernel == draft.model.layers[0].self_attn.W_pack.kernel == "triton_half2"
    rng = random.Random(1)
    for _ in range(8):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(1, 100))]
        plain, _ = generate(model_g, prompt, 60)
        spec, stats = generate(model_g, prompt, 60, draft=draft_g, th_stop_draft=rng.random())
        assert spec == plain and stats.drafted > 0


@cuda
@pytest.mark.parametrize("lm_head", ["shared", "int8"])
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_speculative_with_graphs_equals_plain_float32(position_encoding, num_heads, lm_head):
    model = cuda_model(position_encoding, num_heads, max_seq_len=300)
    draft = make_draft(model, group_size=32, lm_head=lm_head)
    model_g, draft_g = graph_models(model, draft, bucket=64)
    rng = random.Random(0)
    for _ in range(6):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(1, 100))]
        plain, _ = generate(model, prompt, 80)
        spec, stats = generate(model_g, prompt, 80, draft=draft_g, th_stop_draft=rng.random())
        assert spec == plain and stats.drafted > 0


@cuda
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


@cuda
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


@cuda
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


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
def test_lookup_with_graphs_equals_plain(position_encoding, num_heads, dtype):
    """Prompt lookup through the graphs: its drafts reach the device by one copy from pinned memory and the
    verify pass is the same pass; with the INT4 draft continuing after a lookup run, the draft's graphs take
    several tokens. Greedy (and top-k 1 sampling) equal plain decoding, with and without a penalty."""
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
        for source, after in (("lookup", False), ("lookup+int4", False), ("lookup+int4", True)):
            options = dict(draft=None if source == "lookup" else draft_g, draft_source=source, draft_after_lookup=after,
                           repetition_penalty=penalty, lookup_min_ngram=1)
            spec, stats = generate(model_g, prompt, 60, **options)
            assert spec == plain
            lookup_accepted += stats.lookup_accepted
            assert generate(model_g, prompt, 60, do_sample=True, top_k=1, **options)[0] == plain
    assert lookup_accepted > 0


@cuda
def test_a_verify_pass_past_the_fast_path_is_refused():
    model = cuda_model("rope", 4, max_seq_len=300)
    model_g, draft_g = graph_models(model, make_draft(model, group_size=32), bucket=64)
    assert accel.pass_limit(model_g) == accel.pass_limit(model) == accel.MAX_VERIFY_TOKENS
    last = accel.MAX_VERIFY_TOKENS - 1  # drafts that still fit with the token before them
    assert generate(model_g, [1, 2, 3], 40, draft=draft_g, max_step_draft=last)[1].drafted > 0
    for draft, source in ((draft_g, "int4"), (None, "lookup")):
        with pytest.raises(ValueError, match="max_step_draft"):
            generate(model_g, [1, 2, 3], 40, draft=draft, draft_source=source, max_step_draft=last + 1)
