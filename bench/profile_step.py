"""Where a decode step's GPU time goes: kernel totals of one plain step and one draft step, each on the
kernels accel.use_kernels picks (run eagerly, without CUDA graphs); with --graphed, the timeline of one
graph replay of each as the decode loop runs it (PDL on where the GPU has it).

    python bench/profile_step.py --shape 7b [--graphed]

With --graphed each kernel is charged the time from the end of the kernel before it (or its own start, if
later) to its own end: with PDL a kernel starts while the one before it still runs and then waits for it,
so this is the time the step's chain spends on it; the charges of a replay add up to its span. Kernels are
grouped into phases (the INT4 GEMVs by their place in the layer: W_pack, o_proj, gate/up, down), each with
its launches, time and the bytes it must read over that time (weights and scales; the live KV cache for
attention).
"""
import sys
from collections import defaultdict
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHAPES, parser, random_model, require_cuda  # noqa: E402
from selfspec.accel import graph_models, use_kernels  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.errors import run_main  # noqa: E402

GEMV_PHASES = ("W_pack", "o_proj", "gate_up", "down")


def profiled_step(step, tok, pos, end) -> torch.profiler.profile:
    """The CUDA profile of one call of `step` after three warm-up calls."""
    for _ in range(3):
        step(tok, pos, end)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(tok, pos, end)
        torch.cuda.synchronize()
    return prof


def kernel_totals(name, m, tok, pos, end):
    """The eager step's kernels, summed per kernel name."""
    events = [e for e in profiled_step(m, tok, pos, end).key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    count = sum(e.count for e in events)
    print(f"\n{name} step: {total / 1e3:.2f} ms of kernels in {count} launches")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:22]:
        print(f"  {e.device_time_total / 1e3:7.3f} ms  {e.count:5d}x  {e.key[:90]}")


def phase_bytes(module, live_len: int) -> dict:
    """Bytes each phase must read in one step: the weights (and scales) of each INT4 GEMV phase over all
    layers, or of all FP16 GEMVs; the live KV cache for attention; the INT8 head."""
    nbytes = lambda m: sum(t.numel() * t.element_size() for t in m.state_dict().values())  # noqa: E731
    draft = hasattr(module.model.layers[0].mlp, "gate_up_proj")  # the INT4 draft's layers
    out = defaultdict(int)
    for layer in module.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if draft:
            for phase, linear in zip(GEMV_PHASES, (attn.W_pack, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)):
                out[phase] += nbytes(linear)
        else:
            out["FP16 GEMVs"] += nbytes(attn.W_pack) + nbytes(attn.o_proj) + nbytes(mlp)
        cache = attn.kv_cache.k
        out["attention"] += 2 * live_len * cache.shape[1] * cache.shape[-1] * cache.element_size()
    out["head" if draft else "FP16 GEMVs"] += nbytes(module.lm_head)
    return out


def phase_of(kernel: str, gemv_index: int) -> str:
    """The phase of a kernel; the INT4 GEMVs by their place in the layer."""
    if "int4_gemv" in kernel:
        return GEMV_PHASES[gemv_index % 4]
    for word, phase in (("_matmul_kernel", "FP16 GEMVs"), ("attention", "attention"), ("merge", "attention merge"),
                        ("rope", "rope + cache write"), ("int8", "head"), ("norm", "norm"), ("silu", "silu * up")):
        if word in kernel:
            return phase
    return "other: " + kernel[:40]


def chain_charges(kernels) -> tuple[dict, float, float]:
    """Kernels (start, end, name), in launch order, each charged from the end of those before it (or its own
    start, if later) to its own end: (phase -> [launches, time charged], span, time with no kernel running)."""
    phases = defaultdict(lambda: [0, 0.0])
    previous_end, gemvs, idle = kernels[0][0], 0, 0.0
    for start, stop, kernel in kernels:
        phase = phase_of(kernel, gemvs)
        gemvs += phase in GEMV_PHASES
        idle += max(0.0, start - previous_end)
        phases[phase][0] += 1
        phases[phase][1] += max(0.0, stop - max(start, previous_end))
        previous_end = max(previous_end, stop)
    return dict(phases), previous_end - kernels[0][0], idle


def timeline(name, graphed, module, tok, pos, end):
    """One graph replay's kernels (microseconds) charged along the chain, per phase."""
    events = profiled_step(graphed, tok, pos, end).events()
    kernels = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                     if e.device_type == torch.autograd.DeviceType.CUDA and "memcpy" not in e.name.lower()
                     and "memset" not in e.name.lower())
    if not kernels:
        print(f"\n{name} step (graphed): the profiler saw no kernels of the replay")
        return
    phases, span, idle = chain_charges(kernels)
    nbytes = phase_bytes(module, end)
    print(f"\n{name} step (graphed): {span / 1e3:.3f} ms from the first kernel's start to the last one's end, "
          f"{len(kernels)} launches, {idle / 1e3:.3f} ms with no kernel running")
    for phase, (count, us) in sorted(phases.items(), key=lambda p: -p[1][1]):
        rate = f"{nbytes[phase] / (us * 1e-6) / 1e12:6.2f} TB/s" if phase in nbytes and us else ""
        print(f"  {us / 1e3:7.3f} ms  {count:5d}x  {phase:20s} {rate}")


@torch.inference_mode()
def main():
    p = parser(__doc__)
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--pos", type=int, default=1100)
    p.add_argument("--graphed", action="store_true", help="profile graph replays as the decode loop runs them")
    args = p.parse_args()
    require_cuda("the profile")
    model = random_model(args.shape, args.pos + 256)
    draft = make_draft(model)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([args.pos], device="cuda")
    if args.graphed:
        model_g, draft_g = graph_models(model, draft)
        for name, graphed, module in (("plain", model_g, model), ("draft", draft_g, draft)):
            timeline(name, graphed, module, tok, pos, args.pos + 1)
        return
    use_kernels(model, draft)
    for name, m in (("plain", model), ("draft", draft)):
        kernel_totals(name, m, tok, pos, args.pos + 1)


if __name__ == "__main__":
    sys.exit(run_main(main))
