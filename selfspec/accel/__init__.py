"""The fast paths, chosen per device in this one place and swapped into the plain modules.

model.py and quantize.py hold the plain eager modules, which run anywhere. `use_kernels` turns each
module of a model (and its draft) into the kernel-backed subclass that serves its device, dtype and shape,
once, before decoding: on CUDA the fused forward pass (transformer.py) with the Triton attention and
pointwise kernels and the 16-bit GEMV, or for a draft whose INT4 layers all run on the CUDA C++ GEMV the
forward pass with the norms and residual adds inside it (fused_draft.py); the INT4 and INT8 draft layers on
their kernels on CUDA, XPU and CPU.
`graph_models` then replays decode-sized passes as CUDA graphs; `apply` does what the device allows.

One file per kernel family: gemv.py (16-bit layers), int4.py and int8.py (the draft's), attention.py,
pointwise.py, topk.py (sampling's picks), with launch.py (PDL, autotuning, MAX_VERIFY_TOKENS) and
cuda_graphs.py.
"""
import itertools

import torch

from ..model import MLP, Linear, Transformer
from ..quantize import Int4Linear, Int8Linear
from . import cuda_graphs, fused_draft, gemv, int4, int8, launch, pointwise
from .cuda_graphs import GraphedModel
from .launch import MAX_VERIFY_TOKENS
from .transformer import FusedTransformer

__all__ = ["MAX_VERIFY_TOKENS", "GraphedModel", "apply", "graph_models", "pass_limit", "use_kernels"]


def apply(model, draft=None):
    """The fast paths for the model's device: `use_kernels`, then on CUDA `graph_models`. Returns the
    (target, draft) to decode with."""
    use_kernels(model, draft)
    if device_of(model).type == "cuda":
        return graph_models(model, draft)
    return model, draft


def graph_models(model, draft=None, bucket: int = 256, pdl: bool = True):
    """`use_kernels`, then the target (and draft) wrapped for CUDA-graph replay (cuda_graphs.graph_models),
    launched with PDL where the GPU has it (`pdl`)."""
    use_kernels(model, draft)
    return cuda_graphs.graph_models(model, draft, bucket, pdl)


def use_kernels(model, draft=None):
    """Swap into every module of `model` and `draft` (modules they share included) the kernels of its
    device, in place; a module no kernel serves stays plain. Calling it again changes nothing.

    Each module's class becomes the kernel-backed subclass (same parameters and buffers; `prepare`, where
    the subclass has one, repacks weights for its kernel), so modules shared by the target and the draft
    are swapped once for both. A model whose decoder layers then all multiply on the CUDA INT4 GEMV (a
    draft) becomes a FusedDraft."""
    for tree in (model, draft):
        for module in tree.modules() if tree is not None else ():
            fast = kernel_class(module)
            if fast is not None:
                module.__class__ = fast
                if hasattr(fast, "prepare"):
                    module.prepare()
        if type(tree) is FusedTransformer and fused_draft.serves(tree):  # its layers are prepared by now
            tree.__class__ = fused_draft.FusedDraft


def kernel_class(module):
    """The kernel-backed subclass of a plain module for its device, dtype and shape; None where it stays."""
    kind = type(module)
    if kind not in (Transformer, Linear, MLP, Int4Linear, Int8Linear):
        return None
    device = device_of(module)
    on_cuda = device.type == "cuda" and launch.triton is not None
    if kind is Transformer:
        return FusedTransformer if on_cuda else None
    if kind is Linear:
        return gemv.GemvLinear if gemv.serves(module.weight) else None
    if kind is MLP:
        return pointwise.KernelMLP if on_cuda else None
    if kind is Int4Linear:
        if launch.triton_runs_on(device):
            half2 = device.type == "cuda" and module.scales.dtype == torch.float16 and module.group_size % 8 == 0
            return int4.Int4Half2Linear if half2 else int4.Int4TritonLinear
        return int4.Int4CpuLinear if device.type == "cpu" and int4.cpu_kernel_serves(module) else None
    if launch.triton_runs_on(device):
        return int8.Int8TritonLinear
    return int8.Int8CpuLinear if device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm") else None


def pass_limit(model) -> int | None:
    """The most tokens one decode-sized pass of `model` (a module or a GraphedModel) may take on its fast
    path: MAX_VERIFY_TOKENS on CUDA's; None where any number runs at the same speed per token."""
    module = model.module if isinstance(model, GraphedModel) else model
    return MAX_VERIFY_TOKENS if isinstance(module, FusedTransformer) else None


def device_of(module) -> torch.device:
    return next(itertools.chain(module.parameters(), module.buffers())).device
