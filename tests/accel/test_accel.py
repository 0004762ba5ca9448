"""accel.use_kernels: the kernel choice per module, made once, and what it leaves plain."""
import torch

from selfspec import accel
from selfspec.accel import int4, int8
from selfspec.draft import make_draft
from selfspec.model import Transformer
from selfspec.quantize import Int4Linear
from helpers import random_model


def test_cpu_kernels_are_swapped_in_once():
    model = random_model("rope", num_heads=4, intermediate_size=128)
    draft = make_draft(model, group_size=32)
    tokens = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    plain = draft(tokens, torch.arange(12))
    assert {m.kernel for m in draft.modules() if isinstance(m, Int4Linear)} == {"dequantize"}
    accel.use_kernels(model, draft)
    assert type(model) is Transformer and type(draft) is Transformer  # the fused forward is CUDA's
    assert {type(m) for m in draft.modules() if isinstance(m, Int4Linear)} == {int4.Int4CpuLinear}
    assert type(draft.lm_head) is int8.Int8CpuLinear
    packed = draft.model.layers[0].mlp.gate_up_proj.packed
    accel.use_kernels(model, draft)  # again: nothing is repacked
    assert draft.model.layers[0].mlp.gate_up_proj.packed is packed
    fast = draft(tokens, torch.arange(12))
    assert float((fast - plain).norm() / plain.norm()) < 2e-2  # torch's int4 kernel runs in bfloat16
    assert accel.apply(model, draft) == (model, draft)  # no graphs off CUDA


def test_a_layer_no_kernel_serves_stays_plain():
    layer = Int4Linear(torch.randn(40, 80), 64)  # 40 rows: not a multiple of 16 for torch's int4 kernel
    accel.use_kernels(layer)
    assert type(layer) is Int4Linear and layer.kernel == "dequantize"
