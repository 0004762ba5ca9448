"""CUDA graphs for the decode-sized forward passes (plain step, draft step, verify step).

At batch 1 a step launches hundreds of small kernels; replaying them as one graph removes the launch
gaps. A graph has fixed shapes, so there is one per (number of tokens, KV length bucket): attention
reads the cache up to the bucket (a multiple of `bucket` positions), i.e. only about the live part,
and the causal mask hides the rest. Longer inputs (the prefill) run eagerly.
"""
from dataclasses import dataclass

import torch

from .model import fuse_pointwise_ops


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    tokens: torch.Tensor
    input_pos: torch.Tensor
    logits: torch.Tensor


class GraphedModel:
    """Callable like the model, `(tokens, input_pos, end) -> logits`; the returned logits are the graph's
    static output, valid until the same graph replays again (stream order makes that safe)."""

    def __init__(self, module, bucket: int = 256, max_graph_tokens: int = 16, pool=None):
        self.module = module
        self.bucket = bucket
        self.max_graph_tokens = max_graph_tokens
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], _Graph] = {}

    @property
    def max_seq_len(self) -> int:
        return self.module.max_seq_len

    def __call__(self, tokens, input_pos, end: int | None = None):
        num_tokens = tokens.shape[1]
        if end is None or num_tokens > self.max_graph_tokens:
            return self.module(tokens, input_pos, end)
        kv_len = min(-(-end // self.bucket) * self.bucket, self.module.max_seq_len)
        entry = self.graphs.get((num_tokens, kv_len))
        if entry is None:
            entry = self.graphs[num_tokens, kv_len] = self._capture(tokens, input_pos, kv_len)
        entry.tokens.copy_(tokens)
        entry.input_pos.copy_(input_pos)
        entry.graph.replay()
        return entry.logits

    def _capture(self, tokens, input_pos, kv_len: int) -> _Graph:
        static_tokens, static_pos = tokens.clone(), input_pos.clone()
        # Warm-up runs on a side stream (Triton autotuning, allocator); they compute the real step, so
        # the cache entries they write are the ones the replay writes again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.module(static_tokens, static_pos, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.module(static_tokens, static_pos, kv_len)
        return _Graph(graph, static_tokens, static_pos, logits)


def graph_models(model, draft=None, bucket: int = 256):
    """Wrap the target (and draft) for CUDA-graph replay, sharing one memory pool; the pointwise ops
    are compiled into fused kernels first."""
    fuse_pointwise_ops()
    pool = torch.cuda.graph_pool_handle()
    graphed = GraphedModel(model, bucket, pool=pool)
    return graphed, (GraphedModel(draft, bucket, pool=pool) if draft is not None else None)
