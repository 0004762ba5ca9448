"""CUDA graphs for the decode-sized forward passes (plain step, draft step, verify step).

At batch 1 a step launches hundreds of small kernels; replaying them as one graph removes the launch
gaps. A graph has fixed shapes, so there is one per (number of tokens, KV length bucket): the bucket (a
multiple of `bucket` positions) bounds the attention's grid, and the decode attention kernel reads the
live length from the positions on the device, skipping the blocks past it.

The prefill is graphed too, per prompt length rounded up to `prefill_bucket`: eagerly, its ~600 launches
can take longer on the host than its kernels take on the GPU. The padding tokens after the prompt write
cache entries that the mask hides and decoding overwrites; the head runs on the last real position only.
"""
from dataclasses import dataclass

import torch

from . import launch
from .launch import MAX_VERIFY_TOKENS


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    tokens: torch.Tensor
    input_pos: torch.Tensor
    slots: torch.Tensor | None  # a verify pass with leaves: where its keys and values go
    output: torch.Tensor  # logits, or hidden states for a prefill graph


class GraphedModel:
    """Callable like the model, `(tokens, input_pos, end, last_only, slots) -> logits`; the returned logits
    are a graph's static output, valid until the same graph replays again (stream order makes that safe).

    With `pdl` this package's kernels are launched with programmatic dependent launch (launch.py) where the
    GPU has it, in the graphs and in the passes that run eagerly, and nowhere else."""

    def __init__(self, module, bucket: int = 256, prefill_bucket: int = 128, pool=None, pdl: bool = False):
        self.module = module
        self.bucket = bucket
        self.max_graph_tokens = MAX_VERIFY_TOKENS
        self.prefill_bucket = prefill_bucket
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.pdl = pdl and launch.available(next(module.parameters()).device)  # checked once, not per step
        self.graphs: dict[tuple[int, int, bool], _Graph] = {}  # (tokens, KV length bucket, with slots)
        self.prefill_graphs: dict[int, _Graph] = {}

    @property
    def max_seq_len(self) -> int:
        return self.module.max_seq_len

    def __call__(self, tokens, input_pos, end: int | None = None, last_only: bool = False, slots=None):
        previous = launch.set_pdl(self.pdl)
        try:
            return self._run(tokens, input_pos, end, last_only, slots)
        finally:
            launch.set_pdl(previous)

    def _run(self, tokens, input_pos, end: int | None, last_only: bool, slots):
        num_tokens = tokens.shape[1]
        if end is None:
            return self.module(tokens, input_pos, end, last_only, slots)
        if num_tokens > self.max_graph_tokens:
            if last_only and end == num_tokens and slots is None:  # a prefill from position 0
                return self._prefill(tokens)
            return self.module(tokens, input_pos, end, last_only, slots)
        kv_len = min(-(-end // self.bucket) * self.bucket, self.max_seq_len)
        key = num_tokens, kv_len, slots is not None
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(self.module, tokens, input_pos, kv_len, slots)
        entry.tokens.copy_(tokens)
        entry.input_pos.copy_(input_pos)
        if slots is not None:
            entry.slots.copy_(slots)
        entry.graph.replay()
        return entry.output[:, -1:] if last_only else entry.output

    def _prefill(self, tokens):
        n = tokens.shape[1]
        length = min(-(-n // self.prefill_bucket) * self.prefill_bucket, self.max_seq_len)
        entry = self.prefill_graphs.get(length)
        if entry is None:
            padded = torch.zeros(1, length, dtype=tokens.dtype, device=tokens.device)
            padded[:, :n] = tokens
            positions = torch.arange(length, device=tokens.device)
            entry = self.prefill_graphs[length] = self._capture(self.module.hidden_states, padded, positions, length)
        entry.tokens[:, :n].copy_(tokens)
        entry.graph.replay()
        return self.module.lm_head(entry.output[:, n - 1 : n])

    def _capture(self, fn, tokens, input_pos, end: int, slots=None) -> _Graph:
        static_tokens, static_pos = tokens.clone(), input_pos.clone()
        static_slots = slots.clone() if slots is not None else None
        # Warm-up runs on a side stream (Triton autotuning, allocator); they compute the real step, so
        # the cache entries they write are the ones the replay writes again.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(static_tokens, static_pos, end, slots=static_slots)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = fn(static_tokens, static_pos, end, slots=static_slots)
        return _Graph(graph, static_tokens, static_pos, static_slots, output)


def graph_models(model, draft=None, bucket: int = 256, pdl: bool = True):
    """Wrap the target (and draft) for CUDA-graph replay, sharing one memory pool, their kernels launched
    with PDL where the GPU has it (`pdl`)."""
    pool = torch.cuda.graph_pool_handle()
    graphed = GraphedModel(model, bucket, pool=pool, pdl=pdl)
    return graphed, (GraphedModel(draft, bucket, pool=pool, pdl=pdl) if draft is not None else None)
