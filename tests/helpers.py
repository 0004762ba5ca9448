"""Random in-memory models for tests that do not need a checkpoint on disk, the two tests of a Triton kernel
family (compiled on CUDA, in Triton's CPU interpreter elsewhere), and the command-line runners."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from selfspec.generate import generate
from selfspec.model import ModelArgs, Transformer


def random_model(position_encoding="rope", num_heads=4, head_dim=16, num_layers=2, vocab_size=320,
                 intermediate_size=128, max_seq_len=256, dtype=torch.float32, seed=0) -> Transformer:
    """A tiny Baichuan2-style model with weights scaled so that logits are peaked enough to be realistic."""
    args = ModelArgs(
        vocab_size=vocab_size, hidden_size=num_heads * head_dim, intermediate_size=intermediate_size,
        num_layers=num_layers, num_heads=num_heads, num_kv_heads=num_heads, max_seq_len=max_seq_len,
        position_encoding=position_encoding,
    )
    generator = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.data = 1 + 0.1 * torch.randn(p.shape, generator=generator)
        elif "embed" in name:
            p.data = torch.randn(p.shape, generator=generator)
        else:
            p.data = torch.randn(p.shape, generator=generator) * p.shape[1] ** -0.5
    # NormHead: rows normalized once (as the loader does); the scale gives peaked distributions.
    model.lm_head.weight.data = F.normalize(model.lm_head.weight.data, dim=1) * 4
    model = model.to(dtype).eval().requires_grad_(False)
    model.setup_caches(max_seq_len)
    return model


def check_greedy_speculative_equals_plain(target, draft, seed: int, runs: int, new_tokens: int, plain=None,
                                          prompt_lengths=(1, 100), **options) -> int:
    """Greedy speculative decoding of `runs` random prompts (lengths in range(*prompt_lengths), a random
    th_stop_draft each, generate()'s `options` for both) gives the tokens of plain greedy decoding with `plain`
    (default: the target), and drafts some tokens. Returns the leaves the target accepted (second_choices)."""
    rng = random.Random(seed)
    leaves_accepted = 0
    for _ in range(runs):
        prompt = [rng.randrange(320) for _ in range(rng.randrange(*prompt_lengths))]
        plain_options = {key: value for key, value in options.items() if key != "second_choices"}
        expected, _ = generate(plain if plain is not None else target, prompt, new_tokens, **plain_options)
        spec, stats = generate(target, prompt, new_tokens, draft=draft, th_stop_draft=rng.random(), **options)
        assert spec == expected and stats.drafted > 0
        leaves_accepted += stats.leaves_accepted
    return leaves_accepted


def kernel_tests(module: str, check):
    """The two tests of a kernel family whose `check(device)` is defined at the top of test module `module`:
    compiled on CUDA (the `gpu` tier), else its logic under Triton's CPU interpreter (slow)."""

    @pytest.mark.gpu
    def test_compiled_kernels():
        check("cuda")

    @pytest.mark.slow
    @pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the compiled kernels are tested instead")
    def test_kernel_logic_in_the_interpreter():
        pytest.importorskip("triton")
        run_in_triton_interpreter(f"import sys; sys.path[:0] = ['tests', 'tests/accel']; from {module} import "
                                  f"{check.__name__}; {check.__name__}('cpu'); print('ok')")

    return test_compiled_kernels, test_kernel_logic_in_the_interpreter


def run_in_triton_interpreter(code: str):
    """Run `code` (which prints "ok" at its end) in a subprocess under Triton's CPU interpreter: the
    interpreter is chosen when Triton is imported, so it cannot be switched on in this process."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)})
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


# --- Checkpoint folders and the command line (speculative.py as a user runs it) -------------------------------

def read_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def write_config(folder: Path, config: dict) -> None:
    (Path(folder) / "config.json").write_text(json.dumps(config))


CLI = Path(__file__).resolve().parents[1] / "speculative.py"


def run_cli(*args, stdin: str = "", pythonpath=None, check_exit: int | None = None, timeout: float = 300):
    """speculative.py in a fresh process, offline, as a user runs it; bytes arguments pass as they are (not
    UTF-8 ones, for example). `check_exit`: the exit status the run must end with."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    result = subprocess.run([sys.executable, str(CLI), *(a if isinstance(a, bytes) else str(a) for a in args)],
                            capture_output=True, text=True, timeout=timeout, env=env, input=stdin)
    if check_exit is not None:
        assert result.returncode == check_exit, result.stderr
    return result


def run_cli_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """speculative.main in this process, for tests that patch what it calls; reported as run_cli reports."""
    import speculative

    argv = [str(a) for a in args]
    status = speculative.main(argv)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def assert_clean_error(result, *words):
    """How bad input ends: exit status 2, nothing on stdout, and one `error:` line on stderr, no traceback,
    naming each of `words`."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert result.stdout == "", result.stdout
    for word in words:
        assert word in result.stderr, result.stderr
