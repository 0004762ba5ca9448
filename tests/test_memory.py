"""selfspec.memory: what the memory check counts is what loading and the draft allocate."""
import pytest
import torch
from tiny_llama import write_tiny_llama

from selfspec import checkpoint as ckpt_mod
from selfspec import memory as memory_mod
from selfspec.checkpoint import load_checkpoint, open_checkpoint
from selfspec.errors import CheckpointError
from selfspec.memory import memory_needed
from selfspec.draft import make_draft
from selfspec.quantize import weight_bytes


@pytest.mark.parametrize("kind", ["tiny_7b", "tiny_13b", "tied llama with GQA"])
@pytest.mark.parametrize("group_size", [32, 64])
def test_memory_needed_is_what_loading_and_the_draft_allocate(kind, group_size, request, tmp_path):
    folder = write_tiny_llama(tmp_path / "llama") if kind.startswith("tied") else request.getfixturevalue(kind)
    ckpt, model, _ = load_checkpoint(folder, torch.float32, "cpu")
    kv_cache = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if ".kv_cache." in name)
    tables = [sum(b.numel() * b.element_size() for name, b in model.named_buffers() if name.startswith("rope_"))]
    tables = tables if tables != [0] else []  # ALiBi's slopes are not counted: a number per head
    draft = make_draft(model, group_size=group_size)
    need = memory_needed(ckpt, torch.float32, draft_group_size=group_size)
    assert list(need.values()) == [weight_bytes(model), kv_cache, *tables, weight_bytes(draft, quantized_only=True)]
    assert list(memory_needed(ckpt, torch.float32).values()) == [weight_bytes(model), kv_cache, *tables]


def test_model_larger_than_the_gpu_is_refused_before_reading_weights(tiny_copy, monkeypatch):
    folder = tiny_copy()
    need = memory_needed(open_checkpoint(folder), torch.float16, draft_group_size=64)
    total, draft = sum(need.values()), need["INT4 draft"]
    monkeypatch.setattr(ckpt_mod, "load_model", lambda *a, **k: pytest.fail("weights read before the memory check"))
    for memory, hint in ((total - draft // 2, True), (total - draft - 1, False)):
        monkeypatch.setattr(memory_mod, "device_memory_bytes", lambda device, memory=memory: memory)
        with pytest.raises(CheckpointError, match=r"needs at least 0\.0 GiB on cpu \(float16 weights 0\.0, KV cache "
                                                  r"for 256 tokens 0\.0, RoPE tables 0\.0, INT4 draft 0\.0\) and the device has") as e:
            load_checkpoint(folder, torch.float16, "cpu", draft_group_size=64)
        assert ("without the draft it needs" in str(e.value)) == hint
    with pytest.raises(CheckpointError, match="needs at least"):  # the draft's bytes are counted only if asked for
        load_checkpoint(folder, torch.float16, "cpu")
    monkeypatch.setattr(memory_mod, "device_memory_bytes", lambda device: total)
    monkeypatch.undo()
    assert memory_mod.device_memory_bytes(torch.device("cpu")) is None  # the CPU is not checked
