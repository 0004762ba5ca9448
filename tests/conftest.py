"""Shared fixtures: tiny Baichuan2-style checkpoints written once per test session."""
import os
import sys
from pathlib import Path

import pytest

# Tests never touch the network; set before huggingface_hub is imported (it reads this at import).
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from make_tiny_checkpoint import write_tiny_checkpoint  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long or exhaustive cases (real-model runs, Triton's interpreter, many random prompts); they "
                   "run by default, as in CI; `-m 'not slow'` leaves them out for a quick run")
    config.addinivalue_line(
        "markers", "gpu: needs CUDA (skipped without it); the GPU tier, every kernel and the graphed decode at small "
                   "sizes: `pytest -m gpu -n 4`")
    config.addinivalue_line("markers", "gpu_slow: needs CUDA; exhaustive GPU sweeps, outside the gpu tier: `pytest -m gpu_slow`")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") or item.get_closest_marker("gpu_slow"):
            item.add_marker(skip)


def _tiny(tmp_path_factory, name, **kwargs) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp(name), **kwargs)


@pytest.fixture(scope="session")
def tiny_7b(tmp_path_factory) -> Path:
    """7B-style (RoPE) tiny checkpoint, single model.safetensors."""
    return _tiny(tmp_path_factory, "tiny-7b", arch="7b", fmt="safetensors")


@pytest.fixture(scope="session")
def tiny_13b(tmp_path_factory) -> Path:
    """13B-style (ALiBi, 5 heads) tiny checkpoint, single pytorch_model.bin."""
    return _tiny(tmp_path_factory, "tiny-13b", arch="13b", fmt="bin")


@pytest.fixture(scope="session")
def tiny_7b_sharded(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "tiny-7b-sharded", arch="7b", fmt="sharded-safetensors", num_shards=3)


@pytest.fixture(scope="session")
def tiny_13b_sharded(tmp_path_factory) -> Path:
    return _tiny(tmp_path_factory, "tiny-13b-sharded", arch="13b", fmt="sharded-bin")


@pytest.fixture
def tiny_copy(tmp_path):
    """Writes a fresh tiny checkpoint into this test's tmp_path, for tests that damage it."""

    def make(**kwargs) -> Path:
        return write_tiny_checkpoint(tmp_path / "ckpt", **kwargs)

    return make


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """(folder, checkpoint, float32 model with a 1,024-token cache, tokenizer) of the real SmolLM2, converted
    and loaded once per session for every test module that uses it."""
    import torch
    from smollm2 import smollm2_folder

    from selfspec.checkpoint import load_checkpoint

    folder = smollm2_folder(tmp_path_factory)
    return (folder, *load_checkpoint(str(folder), torch.float32, "cpu", max_seq_len=1024))
