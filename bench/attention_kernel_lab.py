"""Sweep the Triton decode attention's block size, warps and merge chunk on one GPU (7B shape: 32 heads,
head_dim 128, FP16), for 1 and 9 new tokens over 1,152 and 4,000 live keys.

    python bench/attention_kernel_lab.py [--json OUT.json]

Times are CUDA-graph replays of 20 back-to-back calls (both kernels), median of 20 replays; GB/s counts
the live K and V bytes.
"""
import sys
from pathlib import Path

import torch
import triton

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import graph_ms, parser, require_cuda, write_json  # noqa: E402
from selfspec.accel import launch  # noqa: E402
from selfspec.errors import run_main  # noqa: E402
from selfspec.accel import attention as at  # noqa: E402

HEADS, HEAD_DIM, MAX_SEQ = 32, 128, 4096


def attention_call(q, k_cache, v_cache, pos, end, block_kv, warps, block_b):
    """(a function that runs both decode attention kernels with this configuration, as
    attention_triton.decode_attention launches them, PDL included; the output it writes)."""
    T, heads, head_dim = q.shape
    max_seq = k_cache.shape[2]
    num_blocks = triton.cdiv(end, block_kv)
    o = torch.empty(heads, num_blocks, T, head_dim, device=q.device)
    m = torch.empty(heads, num_blocks, T, device=q.device)
    l = torch.empty_like(m)  # noqa: E741
    y = torch.empty(T, heads * head_dim, device=q.device, dtype=q.dtype)
    pdl = dict(PDL=launch.enabled, launch_pdl=launch.enabled)

    def call():
        at._attention_blocks_kernel[(heads, num_blocks)](
            q, k_cache, v_cache, pos, m, o, m, l, T, max_seq, num_blocks, head_dim ** -0.5, HEADS=heads,
            KV_HEADS=k_cache.shape[1], HEAD_DIM=head_dim, BLOCK_T=at.MAX_VERIFY_TOKENS, BLOCK_KV=block_kv, ALIBI=False,
            SINKS=0, RECENT=0, IEEE=False, num_warps=warps, **pdl)
        at._merge_blocks_kernel[(heads, T)](o, m, l, pos, q, k_cache, v_cache, pos, y, T, num_blocks, max_seq,
                                            head_dim ** -0.5, HEADS=heads, KV_HEADS=k_cache.shape[1],
                                            HEAD_DIM=head_dim, BLOCK_T=at.MAX_VERIFY_TOKENS, BLOCK_KV=block_kv,
                                            BLOCK_B=block_b, RECENT=0, **pdl)

    return call, y


def time_config(q, k_cache, v_cache, pos, end, block_kv, warps, block_b):
    call, y = attention_call(q, k_cache, v_cache, pos, end, block_kv, warps, block_b)
    call()
    return graph_ms(call), y.clone()


def main():
    p = parser(__doc__)
    p.add_argument("--json", help="write all results here")
    args = p.parse_args()
    require_cuda("the attention lab")
    launch.set_pdl(launch.available(torch.device("cuda")))  # the kernels launched as in a graphed decode step
    results = []
    k_cache = torch.randn(1, HEADS, MAX_SEQ, HEAD_DIM, device="cuda", dtype=torch.float16)
    v_cache = torch.randn_like(k_cache)
    for live in (1152, 4000):
        for T in (1, 9):
            pos = torch.arange(live - T, live, device="cuda")
            q = torch.randn(T, HEADS, HEAD_DIM, device="cuda", dtype=torch.float16)
            end = min(MAX_SEQ, -(-live // 256) * 256)  # the graph bucket
            rows, first = [], None
            for block_kv in (32, 64, 128):
                for warps in (2, 4, 8):
                    for block_b in (8, 16, 32):
                        ms, y = time_config(q, k_cache, v_cache, pos, end, block_kv, warps, block_b)
                        first = y if first is None else first
                        rows.append((ms * 1e3, block_kv, warps, block_b, float((y.float() - first.float()).abs().max())))
                        results.append({"live_keys": live, "new_tokens": T, "block_kv": block_kv, "warps": warps,
                                        "block_b": block_b, "us": ms * 1e3})
            rows.sort()
            kv_bytes = 2 * HEADS * live * HEAD_DIM * 2
            print(f"{live} live keys, {T} new tokens, best first:")
            for us, block_kv, warps, block_b, diff in rows[:4]:
                print(f"  {us:6.1f} us {kv_bytes / us / 1e3:5.0f} GB/s  BLOCK_KV {block_kv} warps {warps} "
                      f"BLOCK_B {block_b}  (max diff to the first config {diff:.1e})")
    write_json(args.json, results)


if __name__ == "__main__":
    sys.exit(run_main(main))
