"""How this package's Triton kernels are launched: programmatic dependent launch (PDL) on Hopper and later
GPUs, and autotuning whose choices are kept on disk.

A decode step is a chain of short kernels; each normally starts only after the one before it has finished
and its results are flushed. With PDL a kernel lets the next one be launched once all of its own programs
have passed `let_next_kernel_launch` (the attention and pointwise kernels at their start, the INT4 GEMV
after its loop); the next kernel's programs then wait on the device (`wait_for_inputs`, before reading or
writing anything) until the kernel before them is complete. Kernels that are not launched this way
(cuBLAS, torch's) keep the ordinary stream order, so the chain stays correct whatever sits between two of
ours. Off by default: whoever launches (cuda_graphs.GraphedModel, for the graphs it captures) switches it on
for its own launches with `pdl(device)`. A small gain on an H100 (docs/performance.md).
"""
import inspect
from contextlib import contextmanager

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

# The most tokens one decode-sized pass takes (a plain step, a draft step, or a verify pass over a round's
# drafts and the token before them): tl.dot's smallest tile, so the GEMV and attention kernels handle them
# in one tile, and the CUDA graphs are captured up to it. A longer verify pass would leave the fast path.
MAX_VERIFY_TOKENS = 16

enabled = False  # read by the kernels at launch; set_pdl changes it, for a block of launches


def triton_runs_on(device: torch.device) -> bool:
    """Whether this package's portable Triton kernels (the INT4 and INT8 GEMVs) run on `device`."""
    return triton is not None and device.type in ("cuda", "xpu")


def available(device: torch.device) -> bool:
    """Whether `device` can launch kernels with PDL (NVIDIA Hopper and later, with Triton)."""
    return triton is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def set_pdl(on: bool) -> bool:
    """Launch with PDL from now on iff `on` (only where `available`); returns the setting before, to restore."""
    global enabled
    previous, enabled = enabled, on
    return previous


@contextmanager
def pdl(device: torch.device, on: bool = True):
    """Launch this package's kernels (and capture graphs) with PDL inside the block, where `device` has it."""
    previous = set_pdl(on and available(device))
    try:
        yield enabled
    finally:
        set_pdl(previous)


if triton is not None:

    @triton.jit
    def wait_for_inputs(PDL: tl.constexpr):
        """Before a kernel launched with `launch_pdl=PDL` reads what the kernel before it wrote."""
        if PDL:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def let_next_kernel_launch(PDL: tl.constexpr):
        """Once every program of this kernel has passed here, the next kernel may start launching."""
        if PDL:
            tl.extra.cuda.gdc_launch_dependents()


def autotune(configs, key):
    """triton.autotune that keeps its choice per shape in Triton's cache where this Triton can (3.2 and later):
    a new process then skips timing the configurations again, seconds of every start-up."""
    if "cache_results" in inspect.signature(triton.autotune).parameters:
        return triton.autotune(configs=configs, key=key, cache_results=True)
    return triton.autotune(configs=configs, key=key)
