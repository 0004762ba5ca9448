"""Where a decode step's GPU time goes: kernel totals of one plain step and one draft step, each on the
kernels accel.use_kernels picks (run eagerly, without CUDA graphs).

    python bench/profile_step.py --shape 7b
"""
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import SHAPES, parser, random_model, require_cuda  # noqa: E402
from selfspec.accel import use_kernels  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.errors import run_main  # noqa: E402


@torch.inference_mode()
def main():
    p = parser(__doc__)
    p.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    p.add_argument("--pos", type=int, default=1100)
    args = p.parse_args()
    require_cuda("the profile")
    model = random_model(args.shape, args.pos + 256)
    draft = make_draft(model)
    use_kernels(model, draft)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.tensor([args.pos], device="cuda")
    for name, m in (("plain", model), ("draft", draft)):
        for _ in range(3):
            m(tok, pos, args.pos + 1)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            m(tok, pos, args.pos + 1)
            torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.device_time_total for e in events)
        count = sum(e.count for e in events)
        print(f"\n{name} step: {total / 1e3:.2f} ms of kernels in {count} launches")
        for e in sorted(events, key=lambda e: -e.device_time_total)[:22]:
            print(f"  {e.device_time_total / 1e3:7.3f} ms  {e.count:5d}x  {e.key[:90]}")


if __name__ == "__main__":
    sys.exit(run_main(main))
