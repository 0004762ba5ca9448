"""Where the graphed INT4 draft step's GEMVs lose their time, block by block. Every GEMV kernel is built with
`Tiling.timeline`: each block stamps the GPU's global timer at its start, when the grid-dependency wait of
programmatic dependent launch (PDL) returns, once x is ready (copied into shared memory and, for W_pack and
gate/up, normalised) and when its last warp is done. A few replays of one draft step at position POS are read
back, and for each kind of GEMV (W_pack, o_proj, gate/up, down) the medians over its launches are printed:

  early      the first block's start to the first return of the wait: blocks of this kernel were resident,
             their first weights loading, while the kernel before still ran
  gap        the last block end of the GEMV before to this kernel's first return of the wait; for W_pack,
             gate/up and down that is the boundary between two kernels, for o_proj it also holds RoPE and
             the cache writes, the attention and its merge
  release    the first to the last return of the wait over the kernel's blocks
  prologue   the wait's return to x ready, median over blocks
  body       x ready to the block's end, median and largest over blocks
  tiles      the most tiles a block takes (W_pack and gate/up loop over tiles in a grid the GPU holds at once)
  extra_tile how much longer the body of the blocks with the most tiles is than that of those with one fewer
  span       the first return of the wait to the last block end, against `floor`, the kernel's bytes (weights
             and scales) at the copy bandwidth measured in the same run
  tail       the median block's end to the last one

The step's time with and without the stamps is printed too (CUDA events over graph replays).

    python bench/gemv_timeline.py [--shapes 7b 13b] [--pos 1088] [--tiling FIELD=INTEGER ...] [--json OUT.json]
"""
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchmark import copy_bandwidth_gbs  # noqa: E402
from bench.harness import SHAPES, cuda_ms, free_cuda, parser, random_model, require_cuda, write_json  # noqa: E402
from bench.profile_step import GEMV_PHASES, phase_bytes  # noqa: E402
from selfspec.accel import graph_models, int4_cuda  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402

REPLAYS = 5
default_tiling = int4_cuda.default_tiling
FIELDS = ("early", "gap", "release", "prologue", "body", "body_max", "tiles", "extra_tile", "span", "floor", "tail")


def timeline_kernels(hidden: int, intermediate: int):
    """(kind, module) of the INT4 GEMV modules built with the stamps for this shape, the kind from the compile
    key: one module serves a kind in every layer."""
    out = []
    for key, (module, _, _) in int4_cuda._kernels.items():
        _, _, k, glu, _, norm, tiling = key
        if tiling.timeline and k in (hidden, intermediate):
            out.append(("gate_up" if glu else "W_pack" if norm else "o_proj" if k == hidden else "down", module))
    return out


def global_pointer(module, name: bytes) -> int:
    pointer, _ = int4_cuda._check(int4_cuda.driver.cuModuleGetGlobal(module, name))
    return int(pointer)


def reset(modules) -> None:
    for _, module in modules:
        int4_cuda._check(int4_cuda.driver.cuMemsetD32(global_pointer(module, b"timeline_count"), 0, 1))


def read_stamps(module) -> torch.Tensor:
    """[blocks, 6] int64, in the order the blocks started: nanoseconds at the start, when the wait returned, x
    ready and the end; the block's SM and how many tiles it took."""
    count = torch.zeros(1, dtype=torch.int32)
    int4_cuda._check(int4_cuda.driver.cuMemcpyDtoH(count.data_ptr(), global_pointer(module, b"timeline_count"), 4))
    stamps = torch.zeros(int(count), 4, dtype=torch.int64)
    where = torch.zeros(int(count), 2, dtype=torch.int32)
    for tensor, name in ((stamps, b"timeline"), (where, b"timeline_where")):
        int4_cuda._check(int4_cuda.driver.cuMemcpyDtoH(tensor.data_ptr(), global_pointer(module, name),
                                                       tensor.numel() * tensor.element_size()))
    blocks = torch.cat([stamps, where.long()], dim=1)
    return blocks[blocks[:, 0].argsort()]


def launches(stamped, layers: int) -> list[dict]:
    """Every GEMV launch of one replay, in order, from (kind, read_stamps) of each module (times in microseconds)."""
    out = []
    for kind, stamps in stamped:
        if not len(stamps):  # a module built but not launched: the grid without the loop serves this shape
            continue
        if len(stamps) % layers:
            raise RuntimeError(f"{kind}: {len(stamps)} blocks stamped, not a multiple of {layers} layers")
        for blocks in stamps.split(len(stamps) // layers):
            start, waited, ready, end = (blocks[:, i].double() / 1e3 for i in range(4))
            body, tiles = end - ready, blocks[:, 5]
            most = int(tiles.max())
            # A block's last tiles: what one more tile costs a block, where some take one more than others.
            extra = (float(body[tiles == most].quantile(0.5) - body[tiles == most - 1].quantile(0.5))
                     if (tiles == most - 1).any() else None)
            out.append(dict(kind=kind, start=float(start.min()), waited=float(waited.min()),
                            last_waited=float(waited.max()), prologue=float((ready - waited).quantile(0.5)),
                            body=float(body.quantile(0.5)), body_max=float(body.max()), tiles=most, extra_tile=extra,
                            median_end=float(end.quantile(0.5)), end=float(end.max())))
    out.sort(key=lambda launch: launch["waited"])
    return out


def phases(replays: list[list[dict]], floor_us: dict) -> dict:
    """Per kind, the median of each field over the launches of all replays (the first layer's W_pack has no
    GEMV before it and no gap)."""
    rows = {kind: {field: [] for field in FIELDS} for kind in GEMV_PHASES}
    for launches_of_replay in replays:
        for before, launch in zip([None] + launches_of_replay[:-1], launches_of_replay):
            row = rows[launch["kind"]]
            row["early"].append(launch["waited"] - launch["start"])
            if before is not None:
                row["gap"].append(launch["waited"] - before["end"])
            row["release"].append(launch["last_waited"] - launch["waited"])
            for field in ("prologue", "body", "body_max", "tiles"):
                row[field].append(launch[field])
            if launch["extra_tile"] is not None:
                row["extra_tile"].append(launch["extra_tile"])
            row["span"].append(launch["end"] - launch["waited"])
            row["tail"].append(launch["end"] - launch["median_end"])
    return {kind: {field: (round(statistics.median(values), 2) if values else None)
                   for field, values in row.items()} | {"floor": round(floor_us[kind], 2)}
            for kind, row in rows.items()}


def tiling_changes(pairs: list[str]) -> dict:
    """--tiling FIELD=INTEGER ... as Tiling fields (booleans as 0 / 1)."""
    fields = {field.name: type(field.default) for field in dataclasses.fields(int4_cuda.Tiling)}
    changes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value.lstrip("-").isdigit():
            raise InputError(f"--tiling takes FIELD=INTEGER with a field of {', '.join(fields)}, got {pair!r}")
        changes[name] = fields[name](int(value))
    return changes


def timer_tick_ns(replay_stamps) -> int:
    """The smallest step between two different stamps of a replay: the global timer ticks by this or less."""
    stamps = torch.cat([blocks[:, :4].flatten() for blocks in replay_stamps]).unique()
    return int((stamps[1:] - stamps[:-1]).min()) if len(stamps) > 1 else 0


@torch.inference_mode()
def shape_timeline(shape: str, pos: int, gbs: float, changes: dict) -> dict:
    model = random_model(shape, pos + 64)
    draft = make_draft(model)
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    offsets = torch.tensor([pos], device="cuda")
    layers = len(draft.model.layers)

    _, draft_g = graph_models(model, draft)
    unstamped_ms = cuda_ms(lambda: draft_g(tok, offsets, pos + 1), iters=100)
    int4_cuda.default_tiling = lambda n, k: dataclasses.replace(default_tiling(n, k), timeline=True, **changes)
    try:
        _, stamped_g = graph_models(model, draft)
        stamped_ms = cuda_ms(lambda: stamped_g(tok, offsets, pos + 1), iters=100)
        modules = timeline_kernels(SHAPES[shape]["hidden_size"], SHAPES[shape]["intermediate_size"])
        replays, ticks = [], []
        for _ in range(REPLAYS):
            torch.cuda.synchronize()
            reset(modules)
            stamped_g(tok, offsets, pos + 1)
            torch.cuda.synchronize()
            stamped = [(kind, read_stamps(module)) for kind, module in modules]
            replays.append(launches(stamped, layers))
            ticks.append(timer_tick_ns([blocks for _, blocks in stamped]))
    finally:
        int4_cuda.default_tiling = default_tiling
    nbytes = phase_bytes(draft, pos + 1)
    floor_us = {kind: nbytes[kind] / layers / (gbs * 1e3) for kind in GEMV_PHASES}
    first, last = replays[-1][0], replays[-1][-1]
    return {"draft_step_ms": round(unstamped_ms, 4), "draft_step_ms_stamped": round(stamped_ms, 4),
            "timer_tick_ns": min(ticks), "gemv_launches": len(replays[-1]),
            "first_to_last_gemv_us": round(last["end"] - first["start"], 1), "phases_us": phases(replays, floor_us)}


def main():
    p = parser(__doc__)
    p.add_argument("--shapes", nargs="+", default=["7b", "13b"], choices=sorted(SHAPES))
    p.add_argument("--pos", type=int, default=1088)
    p.add_argument("--tiling", nargs="*", default=[], metavar="FIELD=INTEGER",
                   help="changes to every GEMV's default Tiling (selfspec/accel/int4_cuda.py), e.g. blocks_per_sm=4")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    changes = tiling_changes(args.tiling)
    require_cuda("the GEMV timeline")
    if not int4_cuda.available(torch.device("cuda")):
        raise InputError(f"the CUDA INT4 GEMV is not available: {int4_cuda.unavailable_reason}")
    gbs = copy_bandwidth_gbs()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "pos": args.pos,
               "tiling_changes": changes, "copy_bandwidth_gbs": round(gbs), "shapes": {}}
    for shape in args.shapes:
        result = results["shapes"][shape] = shape_timeline(shape, args.pos, gbs, changes)
        print(f"\n{shape}: draft step {result['draft_step_ms']:.3f} ms ({result['draft_step_ms_stamped']:.3f} ms "
              f"stamped), {result['gemv_launches']} GEMV launches, the timer ticking by "
              f"{result['timer_tick_ns']} ns or less; microseconds, medians over launches:")
        print(f"  {'':8s}" + "".join(f"{field:>11s}" for field in FIELDS))
        for kind, row in result["phases_us"].items():
            print(f"  {kind:8s}" + "".join(f"{'-' if row[f] is None else row[f]:>11}" for f in FIELDS))
        free_cuda()
    write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
