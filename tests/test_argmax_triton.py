"""The greedy pick's kernels (argmax_triton.py) against torch: argmax (the first index on ties, as
torch.argmax) and the softmax probability of it.

Compiled on CUDA; without CUDA their logic runs under Triton's CPU interpreter (a subprocess: the
interpreter is chosen when Triton is imported)."""
import pytest
import torch

from utils import run_in_triton_interpreter


def check_kernels(device: str):
    from selfspec import argmax_triton

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for rows, vocab in [(1, 125696), (9, 1000), (3, 4096), (2, 9), (4, 2049)]:
            for block in (256, 2048):
                x = (torch.randn(rows, vocab, device=device) * 4).to(dtype)
                x[-1, 7] = x[-1, vocab - 3] = x[-1].max() + 2  # a tie inside the row: the first index wins
                if vocab > 300:
                    x[0, 3] = x[0, 300] = x[0].max() + 3  # a tie across blocks of 256
                    x[0, 256:512] = -float("inf")  # a block of -inf only (float16 overflow), as softmax takes it
                    x[0, 600:700] = -float("inf")
                tokens, probs = argmax_triton.argmax_and_prob(x, block=block)
                assert tokens.dtype == torch.int64 and probs.dtype == torch.float32
                assert torch.equal(tokens, x.argmax(-1)), (dtype, rows, vocab, block)
                expected = x.double().softmax(-1).max(-1).values
                torch.testing.assert_close(probs.double(), expected, rtol=1e-5, atol=0)
    x = torch.randn(2, 3, 50, device=device)  # leading dimensions are kept
    tokens, probs = argmax_triton.argmax_and_prob(x[:, :, ::2], block=16)  # a strided view is copied first
    assert tokens.shape == probs.shape == (2, 3) and torch.equal(tokens, x[:, :, ::2].argmax(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_kernels_match_torch():
    check_kernels("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the compiled kernels are tested instead")
def test_kernel_logic_in_the_interpreter():
    pytest.importorskip("triton")
    code = ("import sys; sys.path.insert(0, 'tests'); from test_argmax_triton import check_kernels; "
            "check_kernels('cpu'); print('ok')")
    run_in_triton_interpreter(code)
