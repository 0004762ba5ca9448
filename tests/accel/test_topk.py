"""The top-k kernels (accel/topk.py) against torch: the k largest logits, the lower index first among
equals (a stable descending sort), and the softmax probability of the largest; k = 1 is the greedy pick
(torch.argmax's first index on ties).

Compiled on CUDA; without CUDA their logic runs under Triton's CPU interpreter (helpers.kernel_tests)."""
import pytest
import torch

from helpers import kernel_tests


def check_kernels(device: str):
    from selfspec.accel import topk

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for rows, vocab, block, k in [(1, 125696, 2048, 1), (1, 125696, 2048, 5), (9, 1000, 256, 1), (9, 1000, 256, 5),
                                      (3, 4096, 256, 9), (2, 9, 2048, 9), (4, 2049, 2048, 5), (4, 2049, 256, 1)]:
            x = (torch.randn(rows, vocab, device=device) * 4).to(dtype)
            x[-1, 7] = x[-1, vocab - 3] = x[-1].max() + 2  # a tie inside the row: the lower index first
            if vocab > 700:
                x[0, 3] = x[0, 300] = x[0].max() + 3  # a tie across blocks of 256
                x[0, 256:512] = -float("inf")  # a block of -inf only (float16 overflow), as softmax takes it
                x[0, 600:700] = -float("inf")
            values, indices, probs = topk.top_k(x, k, block=block)
            expected_values, expected_indices = torch.sort(x.float(), dim=-1, descending=True, stable=True)
            assert torch.equal(values, expected_values[:, :k]), (dtype, rows, vocab, block, k)
            assert torch.equal(indices, expected_indices[:, :k]), (dtype, rows, vocab, block, k)
            torch.testing.assert_close(probs.double(), x.double().softmax(-1).max(-1).values, rtol=1e-5, atol=0)
            tokens, top_probs = topk.argmax_and_prob(x)
            assert tokens.dtype == torch.int64 and torch.equal(tokens, x.argmax(-1))
            torch.testing.assert_close(top_probs, probs, rtol=1e-5, atol=0)
            if vocab > 1:  # the draft's pick with its second choice: the kernel on CUDA, torch elsewhere
                top_two, two_probs = topk.greedy_two(x)
                assert torch.equal(top_two, expected_indices[:, :2]), (dtype, rows, vocab)
                torch.testing.assert_close(two_probs.double(), x.double().softmax(-1).max(-1).values, rtol=1e-4, atol=0)
    x = torch.randn(2, 3, 50, device=device)  # leading dimensions are kept; a strided view is copied first
    values, indices, probs = topk.top_k(x[:, :, ::2], 4, block=16)
    assert values.shape == indices.shape == (2, 3, 4) and probs.shape == (2, 3)
    assert torch.equal(values, x[:, :, ::2].topk(4).values)
    x = torch.full((1, 40), -float("inf"), device=device)  # fewer finite logits than k: the rest is -inf, ids in range
    x[0, 5], x[0, 33] = 1.0, 2.0
    values, indices, _ = topk.top_k(x, 4, block=16)
    assert indices[0, :2].tolist() == [33, 5] and values[0, 2:].eq(-float("inf")).all()
    assert ((indices >= 0) & (indices < 40)).all()


test_compiled_kernels, test_kernel_logic_in_the_interpreter = kernel_tests(__name__, check_kernels)


@pytest.mark.gpu
def test_nan_logits_give_ids_in_the_vocabulary():
    """NaN fails every comparison, so the compiled argmax may pick any slot, masked ones too (the interpreter
    skips NaN instead: this runs compiled only). An id past the vocabulary would be a device assert in the
    embedding; NaN logits come from a checkpoint whose activations overflow mid-answer."""
    from selfspec.accel import topk

    for vocab, block, k in [(125696, 2048, 1), (125696, 2048, 2), (1000, 256, 5), (9, 2048, 3)]:
        x = torch.randn(4, vocab, device="cuda")
        x[0], x[1, ::3], x[2, -1] = float("nan"), float("nan"), float("nan")
        for dtype in (torch.float32, torch.float16):
            _, indices, _ = topk.top_k(x.to(dtype), k, block=block)
            assert ((indices >= 0) & (indices < vocab)).all(), (vocab, block, k, dtype, indices)
