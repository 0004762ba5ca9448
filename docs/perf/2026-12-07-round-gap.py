"""What a speculative round costs beyond its kernels: graphed 7B and 13B shapes (random weights) at positions 200
and 1,088, rounds of 8 INT4 drafts and their verify pass run by generate's own draft_more and verify, timed on the
wall clock, against the same graphs' replays timed alone (CUDA events). The drafts read the host every step (as
generate does from the first step), or never (min_step_draft past the round: the steps queue back to back), so the
difference is what reading the draft's confidence each step costs; with and without the second choices; and reading
the drafts too, each looked up in an index that never matches (what the lookup after the draft adds).

    python docs/perf/2026-12-07-round-gap.py OUT.json
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.harness import cuda_ms, free_cuda, random_model, write_json  # noqa: E402
from selfspec.accel import graph_models  # noqa: E402
from selfspec.draft import make_draft  # noqa: E402
from selfspec.generate import Answer, Buffers, draft_more, verify  # noqa: E402
from selfspec.lookup import NgramLookup  # noqa: E402
from selfspec.sampling import Sampling  # noqa: E402

K = 8  # drafts a round
ROUNDS = 50


def round_ms(model_g, draft_g, pos: int, read_every_step: bool, second_choices: bool, lookup: bool = False) -> float:
    """Median wall-clock ms of a round of K drafts and the verify pass, host work included."""
    vocab = model_g.module.args.vocab_size
    bufs = Buffers(K, model_g.module.max_seq_len, torch.device("cuda"), second_choices)
    bufs.tokens.zero_()
    answer = Answer([0], 10**6, None, 1.0, vocab, "cuda", None)
    sampling = Sampling(False, 1.0, 0, 1.0)
    min_step = 1 if read_every_step else K + 1
    leaves = min(K, 16 - K - 1) if second_choices else 0
    times = []
    for i in range(ROUNDS + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        index = NgramLookup() if lookup else None  # empty: it looks up every step and never proposes
        k, _ = draft_more(draft_g, bufs, answer, sampling, None, pos, 0, K, min_step, -1.0, index, 15)
        verify(model_g, bufs, answer, sampling, None, pos, k, leaves)  # ends by reading the device
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def main():
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "drafts_a_round": K, "runs": {}}
    for shape in ("7b", "13b"):
        model = random_model(shape, 1088 + 256)
        draft = make_draft(model)
        model_g, draft_g = graph_models(model, draft)
        for pos in (200, 1088):
            tok = torch.zeros(1, 2 * K, dtype=torch.long, device="cuda")
            offs = torch.arange(2 * K, device="cuda") + pos
            run = {"draft_step_ms": cuda_ms(lambda: draft_g(tok[:, :1], offs[:1], pos + 1)),
                   "verify_9_ms": cuda_ms(lambda: model_g(tok[:, : K + 1], offs[: K + 1], pos + K + 1)),
                   "verify_16_ms": cuda_ms(lambda: model_g(tok, offs, pos + 2 * K))}
            run["kernels_a_round_ms"] = K * run["draft_step_ms"] + run["verify_9_ms"]
            for read in (True, False):
                for second in (False, True):
                    name = f"round_ms_{'read_each_step' if read else 'no_reads'}{'_second' if second else ''}"
                    run[name] = round_ms(model_g, draft_g, pos, read, second)
            run["round_ms_read_each_step_lookup"] = round_ms(model_g, draft_g, pos, True, False, lookup=True)
            run["gap_a_draft_step_ms"] = (run["round_ms_read_each_step"] - run["kernels_a_round_ms"]) / K
            run["reads_a_draft_step_ms"] = (run["round_ms_read_each_step"] - run["round_ms_no_reads"]) / K
            out["runs"][f"{shape}@{pos}"] = run
            print(shape, pos, json.dumps(run), flush=True)
        del model, draft, model_g, draft_g
        free_cuda()
    write_json(sys.argv[1], out)


if __name__ == "__main__":
    main()
