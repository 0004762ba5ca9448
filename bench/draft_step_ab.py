"""A/B of settings of the draft step: graphed draft steps of the 7B and 13B shapes (random weights) at the given
positions, each variant a set of this package's kernel settings (MODULE.NAME=VALUE, a module of selfspec.accel; none:
today's), the variants alternated over rounds; and the largest difference of each variant's logits from the
first variant's (rounding only).

    python bench/draft_step_ab.py --positions 200 1088 --out OUT.json --variant base \\
        --variant blocks_of_64 attention.BLOCK_KV=64
"""
import json
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (SHAPES, apply_settings, cuda_ms, free_cuda, parser, random_model,  # noqa: E402
                           require_cuda, restore_settings, write_json)
from selfspec.accel import graph_models  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402


def parse_args():
    p = parser(__doc__)
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "SETTING"),
                   help="a variant's name and its settings; the first variant is the one the others are compared to")
    p.add_argument("--shapes", nargs="+", default=["7b", "13b"], choices=sorted(SHAPES))
    p.add_argument("--positions", nargs="+", type=int, default=[1088])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=100, help="timed replays per variant and round")
    p.add_argument("--out", help="write the results as JSON here")
    return p.parse_args()


def draft_step_ms(model, draft, settings, tok, pos, iters: int) -> tuple[float, torch.Tensor]:
    """(median ms of a graphed draft step at `pos`, its logits) with `settings`, captured afresh."""
    undo = apply_settings(settings)
    try:
        _, draft_g = graph_models(model, draft)
        offsets = torch.tensor([pos], device="cuda")
        logits = draft_g(tok, offsets, pos + 1).float().clone()
        return cuda_ms(lambda: draft_g(tok, offsets, pos + 1), iters=iters), logits
    finally:
        restore_settings(undo)


@torch.inference_mode()
def main():
    args = parse_args()
    variants = {name: settings for name, *settings in args.variant}
    if len(variants) != len(args.variant):
        raise InputError("each --variant needs a name of its own")
    if min(args.positions) < 0 or args.rounds < 1 or args.iters < 1:
        raise InputError("--positions must be 0 or more, --rounds and --iters 1 or more")
    restore_settings(apply_settings(s for settings in variants.values() for s in settings))  # checked before any run
    require_cuda("the draft step's A/B")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "variants": variants, "runs": {}}
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    first = next(iter(variants))
    for shape in args.shapes:
        model = random_model(shape, max(args.positions) + 256)
        draft = make_draft(model)
        for pos in args.positions:
            times, logits = {name: [] for name in variants}, {}
            for _ in range(args.rounds):
                for name, settings in variants.items():
                    ms, logits[name] = draft_step_ms(model, draft, settings, tok, pos, args.iters)
                    times[name].append(ms)
            run = {"draft_step_ms": times,
                   "max_logit_diff_from_first": {k: float((v - logits[first]).abs().max()) for k, v in logits.items()}}
            results["runs"][f"{shape}@{pos}"] = run
            print(shape, pos, json.dumps(run), flush=True)
        del model, draft
        free_cuda()
    write_json(args.out, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
