"""The Triton attention (accel/attention.py: decode-sized passes, ALiBi prefills) against PyTorch's SDPA
over the same cache.

On CUDA the kernels run compiled, and a one-token call must reproduce each row of a multi-token call
exactly (float32). Without CUDA their logic runs under Triton's CPU interpreter (helpers.kernel_tests),
where numpy's matmul is not row-exact, so rows are compared with a tolerance there."""
import pytest
import torch
import torch.nn.functional as F

from selfspec import accel
from selfspec.accel.launch import MAX_VERIFY_TOKENS
from selfspec.model import AttentionWindow, alibi_slopes, apply_rope
from helpers import kernel_tests, random_model

# heads, kv heads, head_dim, cache length, new tokens, first position, ALiBi
CASES = [(4, 4, 32, 200, 1, 70, False), (4, 2, 16, 300, 5, 130, False), (5, 5, 32, 256, 9, 190, True),
         (4, 4, 32, 256, 3, 0, True), (2, 2, 64, 512, 16, 400, False)]
# The draft's window, (sinks, recent) over a case like those above: the first query's window (it reaches furthest
# back) starting in the sinks' block, in the next, blocks further on (blocks skipped); sinks filling a block.
WINDOW_CASES = [((4, 64), CASES[1]), ((4, 20), CASES[2]), ((4, 20), CASES[4]), ((3, 40), (4, 2, 32, 1024, 3, 700, True)),
                ((128, 200), CASES[4]), ((1, 1), CASES[2]), ((2, 300), CASES[0])]
PREFILL_CASES = [(5, 5, 32, 300, 200, 0, True), (4, 2, 16, 300, 37, 50, False), (4, 4, 64, 512, 300, 100, True)]


def reference(qkv, pos, kc, vc, H, KVH, D, rope, slopes, end):
    """RoPE, cache writes and SDPA the eager way; returns (q [1, H, T, D], y [T, H * D])."""
    T = qkv.shape[0]
    q, k, v = (part.view(T, -1, D).transpose(0, 1)[None] for part in qkv.split([H * D, KVH * D, KVH * D], -1))
    if rope is not None:
        q, k = apply_rope(q, k, rope[0][pos], rope[1][pos])
    kc.index_copy_(2, pos, k)
    vc.index_copy_(2, pos, v)
    return q, reference_attention(q, kc, vc, pos, slopes, end)


def reference_attention(q, kc, vc, pos, slopes, end, window=None):
    """SDPA of q [1, H, T, D] at positions pos over the cache [0, end), causal by position, with the ALiBi
    bias and an AttentionWindow's hidden keys as an explicit mask; returns [T, H * D]."""
    H, T, D = q.shape[1:]
    key_pos = torch.arange(end, device=pos.device)[None, :]
    offset = key_pos - pos[:, None]
    hidden = offset > 0
    if window is not None:
        hidden |= (key_pos >= window.sinks) & (offset <= -window.recent)
    bias = slopes[:, None, None] * offset.float() if slopes is not None else torch.zeros(H, T, end, device=pos.device)
    bias = bias.masked_fill(hidden, float("-inf"))[None]
    y = F.scaled_dot_product_attention(q, kc[:, :, :end], vc[:, :, :end], attn_mask=bias, enable_gqa=H != kc.shape[1])
    return y[0].transpose(0, 1).reshape(T, H * D)


def check_kernels(device: str):
    exact_rows = device == "cuda"  # numpy's matmul in the interpreter is not row-exact
    from selfspec.accel.attention import decode_attention, prefill_attention, rope_and_store

    torch.manual_seed(0)
    for H, KVH, D, S, T, start, alibi in CASES:
        kc, vc = torch.randn(2, 1, KVH, S, D, device=device)
        qkv = torch.randn(T, (H + 2 * KVH) * D, device=device)
        pos = torch.arange(start, start + T, device=device)
        angles = torch.outer(torch.arange(S, device=device).float(),
                             1.0 / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)).repeat(1, 2)
        rope = None if alibi else (angles.cos(), angles.sin())
        slopes = alibi_slopes(H).to(device) if alibi else None
        end = min(S, start + T + 100)  # a graph bucket may reach past the live cache
        kc2, vc2 = kc.clone(), vc.clone()
        q = rope_and_store(qkv, pos, rope, kc2, vc2, H, KVH)
        q_ref, y_ref = reference(qkv, pos, kc, vc, H, KVH, D, rope, slopes, end)
        torch.testing.assert_close(kc2, kc, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(vc2, vc, atol=0, rtol=0)
        torch.testing.assert_close(q, q_ref[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
        y = decode_attention(q, kc2, vc2, pos, end, slopes)
        torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
        for t in range(T):  # what a one-token step at that position computes
            row = decode_attention(q[t : t + 1].contiguous(), kc2, vc2, pos[t : t + 1], end, slopes)[0]
            if exact_rows:
                assert torch.equal(row, y[t]), (H, T, t)
            else:
                torch.testing.assert_close(row, y[t], atol=1e-6, rtol=1e-6)
    # A verify pass with leaves: [token, d1..dk, l1..lL] at positions [p..p+k, p+1..p+L] and slots p..p+k+L. Each
    # row is what a one-token step at its position gives over the same cache with its own key and value there.
    for H, KVH, D, S, T, start, alibi in CASES[1:4]:
        k = T - 1
        leaves = min(k, MAX_VERIFY_TOKENS - T)
        kc, vc = torch.randn(2, 1, KVH, S, D, device=device)
        qkv = torch.randn(T + leaves, (H + 2 * KVH) * D, device=device)
        pos = torch.cat([torch.arange(start, start + T), torch.arange(start + 1, start + 1 + leaves)]).to(device)
        slots = torch.arange(start, start + T + leaves, device=device)
        angles = torch.outer(torch.arange(S, device=device).float(),
                             1.0 / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)).repeat(1, 2)
        rope = None if alibi else (angles.cos(), angles.sin())
        slopes = alibi_slopes(H).to(device) if alibi else None
        end = min(S, start + T + leaves + 100)
        q = rope_and_store(qkv, pos, rope, kc, vc, H, KVH, slots)
        y = decode_attention(q, kc, vc, pos, end, slopes, slots=slots)
        for t in range(T + leaves):
            kc_step, vc_step = kc.clone(), vc.clone()
            q_step = rope_and_store(qkv[t : t + 1], pos[t : t + 1], rope, kc_step, vc_step, H, KVH)
            assert torch.equal(q_step[0], q[t])
            row = decode_attention(q_step, kc_step, vc_step, pos[t : t + 1], end, slopes)[0]
            expected = reference_attention(q_step.transpose(0, 1)[None], kc_step, vc_step, pos[t : t + 1], slopes, end)
            torch.testing.assert_close(row, expected[0], atol=1e-5, rtol=1e-5)
            if exact_rows:
                assert torch.equal(row, y[t]), (H, T, t)
            else:
                torch.testing.assert_close(row, y[t], atol=1e-6, rtol=1e-6)
    # The draft's attention window: the blocks it skips and the keys it masks.
    for (sinks, recent), (H, KVH, D, S, T, start, alibi) in WINDOW_CASES:
        window = AttentionWindow(sinks, recent)
        kc, vc = torch.randn(2, 1, KVH, S, D, device=device)
        q = torch.randn(T, H, D, device=device)
        pos = torch.arange(start, start + T, device=device)
        slopes = alibi_slopes(H).to(device) if alibi else None
        end = min(S, start + T + 100)
        expected = reference_attention(q.transpose(0, 1)[None], kc, vc, pos, slopes, end, window)
        y = decode_attention(q, kc, vc, pos, end, slopes, window)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
        for t in range(T):
            row = decode_attention(q[t : t + 1].contiguous(), kc, vc, pos[t : t + 1], end, slopes, window)[0]
            if exact_rows:
                assert torch.equal(row, y[t]), (sinks, recent, t)
            else:
                torch.testing.assert_close(row, y[t], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="at most 128 sinks"):
        decode_attention(q, kc, vc, pos, end, slopes, AttentionWindow(129, 8))
    # A prefill's rotation and cache writes (16 tokens per program, the last block part-filled).
    H, KVH, D, S, T = 4, 2, 16, 512, 300
    kc, vc = torch.randn(2, 1, KVH, S, D, device=device)
    qkv = torch.randn(T, (H + 2 * KVH) * D, device=device)
    pos = torch.arange(T, device=device)
    angles = torch.outer(torch.arange(S, device=device).float(),
                         1.0 / 10000 ** (torch.arange(0, D, 2, device=device).float() / D)).repeat(1, 2)
    kc2, vc2 = kc.clone(), vc.clone()
    q = rope_and_store(qkv, pos, (angles.cos(), angles.sin()), kc2, vc2, H, KVH)
    q_ref, _ = reference(qkv, pos, kc, vc, H, KVH, D, (angles.cos(), angles.sin()), None, T)
    torch.testing.assert_close(q, q_ref[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kc2, kc, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vc2, vc, atol=0, rtol=0)
    # The prefill kernel (ALiBi models' prefills): any number of tokens, from position 0 or later, a last
    # block of query rows part-filled, grouped-query attention.
    for H, KVH, D, S, T, start, alibi in PREFILL_CASES:
        kc, vc = torch.randn(2, 1, KVH, S, D, device=device)
        q = torch.randn(T, H, D, device=device)
        pos = torch.arange(start, start + T, device=device)
        slopes = alibi_slopes(H).to(device) if alibi else None
        expected = reference_attention(q.transpose(0, 1)[None], kc, vc, pos, slopes, start + T)
        blocks = None if device == "cuda" else (64, 32)  # the interpreter cannot autotune
        torch.testing.assert_close(prefill_attention(q, kc, vc, pos, slopes, blocks), expected, atol=1e-5, rtol=1e-5)


test_compiled_kernels_match_sdpa_and_rows_are_exact, test_kernel_logic_in_the_interpreter = kernel_tests(
    __name__, check_kernels)


@pytest.mark.gpu
@pytest.mark.parametrize("position_encoding,num_heads", [("rope", 4), ("alibi", 5)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
@pytest.mark.parametrize("window", [None, AttentionWindow(sinks=4, recent=40)])
def test_model_steps_match_the_sdpa_path(position_encoding, num_heads, dtype, tol, window):
    # The plain model (SDPA) against the same weights with the CUDA kernels swapped in, each with its cache.
    plain, fast = (random_model(position_encoding, num_heads=num_heads, max_seq_len=300, dtype=dtype).cuda()
                   for _ in range(2))
    for model in (plain, fast):
        model.setup_caches(300)
    accel.use_kernels(fast)
    assert fast.attention_kernels
    tokens = torch.randint(0, 320, (1, 260), device="cuda")
    prefill = tokens[:, :100], torch.arange(100, device="cuda")
    expected = plain(*prefill).float()
    # the Triton prefill kernel, then the decode kernels
    torch.testing.assert_close(fast(*prefill).float(), expected, atol=tol, rtol=tol)
    plain.attention_window = fast.attention_window = window  # a draft's window applies to its decode passes
    if window is not None:
        with pytest.raises(ValueError, match="windowed or slotted attention pass takes at most 16 tokens"):
            fast(tokens[:, 100:117], torch.arange(100, 117, device="cuda"))
    for pos in range(100, 250, 13):
        t = 1 + pos % 9
        step, positions = tokens[:, pos : pos + t], torch.arange(pos, pos + t, device="cuda")
        expected = plain(step, positions).float()
        torch.testing.assert_close(fast(step, positions).float(), expected, atol=tol, rtol=tol)
