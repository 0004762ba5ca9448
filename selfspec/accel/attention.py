"""Triton kernels for attention on CUDA: decode-sized passes (1..16 new tokens: the plain step, the draft
step, verify) and prefills.

Per layer, two jobs replace RoPE + two cache writes + a mask + SDPA + a transpose:
  1. `rope_and_store`: rotate q and k (RoPE models), write k and v into the cache at their slots (their
     positions, but for a verify pass's leaves), return q as [T, heads, head_dim];
  2. `decode_attention`: split-KV ("flash-decoding") attention over the live cache only. One program per
     (head, block of BLOCK_KV keys) computes a partial softmax for all new tokens over the keys before
     their positions; a second kernel merges the blocks, starting from the query's own key, which it reads
     from the query's slot. The live length is read from `input_pos` on the device, so a CUDA graph
     captured for a longer cache bucket skips the blocks past it instead of masking them.
Queries see keys at positions <= their own (causal); ALiBi adds slope * (j - i). Each query row is
computed the same way whatever the number of tokens in the call, so a verify pass gives the rows a
one-token step would give (exactly so in float32: tl.dot runs in IEEE float32 there). The own key apart
is what lets a verify pass's leaf (model.Transformer.forward's `slots`), whose position a draft's key holds
in the cache, give a one-token step's row too.

Prefills use `prefill_attention`, a flash-attention kernel (one program per block of query rows and head,
online softmax over the keys up to the block's last position) that computes the ALiBi bias itself: SDPA
would need it as a [heads, T, T] tensor, which rules out its causal kernels that skip the masked half. For
RoPE models it is as fast as SDPA's causal kernel, and one prefill path is simpler than two.

`attend` is model.Attention's forward with these kernels (accel/transformer.py calls it).
"""
import torch

from . import launch
from .launch import MAX_VERIFY_TOKENS

try:
    import triton
    import triton.language as tl

    from .launch import let_next_kernel_launch, wait_for_inputs
except ImportError:  # CPU-only installs
    triton = None

LOG2E = 1.4426950408889634  # the prefill's softmax runs in base 2: exp(x) = exp2(x * LOG2E)
BLOCK_KV = 128  # with 4 warps and 32 blocks per merge step: the best of a sweep on an H100 (1,152 and 4,000 keys)


def supported(device: torch.device, head_dim: int) -> bool:
    return triton is not None and device.type == "cuda" and head_dim >= 16 and head_dim & (head_dim - 1) == 0


if triton is not None:

    @triton.jit
    def _rope_and_store_kernel(
        qkv_ptr, pos_ptr, slot_ptr, cos_ptr, sin_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr, T, max_seq_len,
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, ROPE: tl.constexpr,
        BLOCK_T: tl.constexpr, PDL: tl.constexpr,
    ):
        # One program per (BLOCK_T tokens, head of W_pack's output: the q heads, then the k heads, then the v
        # heads). Decode steps take a token per program, prefills 16. k and v go to the tokens' cache slots.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
        t_ok = (t < T)[:, None]
        head = tl.program_id(1)
        HALF: tl.constexpr = HEAD_DIM // 2
        d = tl.arange(0, HALF)[None, :]
        row = qkv_ptr + t[:, None] * (HEADS + 2 * KV_HEADS) * HEAD_DIM + head * HEAD_DIM
        x1 = tl.load(row + d, mask=t_ok)
        x2 = tl.load(row + HALF + d, mask=t_ok)
        pos = tl.load(pos_ptr + t, mask=t < T, other=0)[:, None]
        slot = tl.load(slot_ptr + t, mask=t < T, other=0)[:, None]
        if ROPE:
            if head < HEADS + KV_HEADS:  # NeoX rotate_half in float32; cos/sin rows repeat per half
                cos = tl.load(cos_ptr + pos * HEAD_DIM + d, mask=t_ok)
                sin = tl.load(sin_ptr + pos * HEAD_DIM + d, mask=t_ok)
                a, b = x1.to(tl.float32), x2.to(tl.float32)
                x1 = (a * cos - b * sin).to(x1.dtype)
                x2 = (b * cos + a * sin).to(x2.dtype)
        if head < HEADS:
            out = q_out_ptr + (t[:, None] * HEADS + head) * HEAD_DIM
        elif head < HEADS + KV_HEADS:
            out = k_cache_ptr + ((head - HEADS) * max_seq_len + slot) * HEAD_DIM
        else:
            out = v_cache_ptr + ((head - HEADS - KV_HEADS) * max_seq_len + slot) * HEAD_DIM
        tl.store(out + d, x1, mask=t_ok)
        tl.store(out + HALF + d, x2, mask=t_ok)

    @triton.jit
    def _first_window_block(pos_ptr, BLOCK_KV: tl.constexpr, RECENT: tl.constexpr):
        """The first block of keys that a window of RECENT positions shows to any query (0: no window); the
        first query's window reaches furthest back."""
        first = 0
        if RECENT > 0:
            first = tl.maximum(tl.load(pos_ptr) - RECENT + 1, 0) // BLOCK_KV
        return first

    @triton.jit
    def _live_len(pos_ptr, T, BLOCK_T: tl.constexpr):
        """The keys any of the T queries (at most BLOCK_T) sees: up to the largest position."""
        t = tl.arange(0, BLOCK_T)
        return tl.max(tl.load(pos_ptr + t, mask=t < T, other=0), axis=0) + 1

    @triton.jit
    def _block_shown(block, first_window_block):
        """Whether a block of keys holds any key a query sees: the sinks' block (0), and blocks from the first
        query's window on (first_window_block from `_first_window_block`: 0 without a window)."""
        return (block == 0) | (block >= first_window_block)

    @triton.jit
    def _attention_blocks_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, slopes_ptr, o_ptr, m_ptr, l_ptr,
        T, max_seq_len, num_blocks, sm_scale,
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
        BLOCK_KV: tl.constexpr, ALIBI: tl.constexpr, SINKS: tl.constexpr, RECENT: tl.constexpr,
        IEEE: tl.constexpr, PDL: tl.constexpr,
    ):
        # RECENT > 0: each query sees keys [0, SINKS) and its last RECENT positions only (model.AttentionWindow).
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        h = tl.program_id(0)
        block = tl.program_id(1)
        live_len = _live_len(pos_ptr, T, BLOCK_T)
        # Blocks past the live cache, and between the sinks' block and the first query's window, do nothing;
        # the merge skips them.
        if (block * BLOCK_KV < live_len) & _block_shown(block, _first_window_block(pos_ptr, BLOCK_KV, RECENT)):
            t = tl.arange(0, BLOCK_T)
            t_ok = t < T
            d = tl.arange(0, HEAD_DIM)
            j = block * BLOCK_KV + tl.arange(0, BLOCK_KV)
            q_pos = tl.load(pos_ptr + t, mask=t_ok, other=-1)
            q = tl.load(q_ptr + (t[:, None] * HEADS + h) * HEAD_DIM + d[None, :], mask=t_ok[:, None], other=0.0)
            kv_base = (h // (HEADS // KV_HEADS)) * max_seq_len * HEAD_DIM
            kv_offsets = kv_base + j[:, None] * HEAD_DIM + d[None, :]
            j_ok = j < live_len
            k = tl.load(k_cache_ptr + kv_offsets, mask=j_ok[:, None], other=0.0)
            v = tl.load(v_cache_ptr + kv_offsets, mask=j_ok[:, None], other=0.0)
            if IEEE:
                scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale
            else:
                scores = tl.dot(q, tl.trans(k)) * sm_scale
            offset = (j[None, :] - q_pos[:, None]).to(tl.float32)
            if ALIBI:
                scores += tl.load(slopes_ptr + h) * offset
            visible = offset < 0  # the query's own key: the merge's
            if RECENT > 0:
                visible = visible & ((j[None, :] < SINKS) | (offset > -RECENT))
            scores = tl.where(visible, scores, float("-inf"))
            m = tl.max(scores, axis=1)
            m_safe = tl.where(m == float("-inf"), 0.0, m)  # a row with no visible key here: p = 0
            p = tl.exp(scores - m_safe[:, None])
            if IEEE:
                acc = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v)
            part = (h * num_blocks + block) * T + t
            tl.store(o_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=t_ok[:, None])
            tl.store(m_ptr + part, m, mask=t_ok)
            tl.store(l_ptr + part, tl.sum(p, axis=1), mask=t_ok)

    @triton.jit
    def _merge_blocks_kernel(
        o_ptr, m_ptr, l_ptr, pos_ptr, q_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, y_ptr, T, num_blocks,
        max_seq_len, sm_scale, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_B: tl.constexpr, RECENT: tl.constexpr,
        PDL: tl.constexpr,
    ):
        # The merge starts from the query's own key (at its slot; ALiBi's bias there is 0), so the running
        # max is finite from the start.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        h = tl.program_id(0)
        t = tl.program_id(1)
        live_blocks = (_live_len(pos_ptr, T, BLOCK_T) + BLOCK_KV - 1) // BLOCK_KV
        first_window_block = _first_window_block(pos_ptr, BLOCK_KV, RECENT)
        d = tl.arange(0, HEAD_DIM)
        own = ((h // (HEADS // KV_HEADS)) * max_seq_len + tl.load(slot_ptr + t)) * HEAD_DIM + d
        q = tl.load(q_ptr + (t * HEADS + h) * HEAD_DIM + d).to(tl.float32)
        running_max = tl.sum(q * tl.load(k_cache_ptr + own).to(tl.float32), axis=0, keep_dims=True) * sm_scale
        total = tl.full((1,), 1.0, tl.float32)
        acc = tl.load(v_cache_ptr + own).to(tl.float32)
        for b0 in range(0, live_blocks, BLOCK_B):
            b = b0 + tl.arange(0, BLOCK_B)
            ok = (b < live_blocks) & _block_shown(b, first_window_block)
            part = (h * num_blocks + b) * T + t
            m = tl.load(m_ptr + part, mask=ok, other=float("-inf"))
            new_max = tl.maximum(running_max, tl.max(m, axis=0, keep_dims=True))
            weight = tl.where(m == float("-inf"), 0.0, tl.exp(m - new_max))
            rescale = tl.exp(running_max - new_max)
            o = tl.load(o_ptr + part[:, None] * HEAD_DIM + d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * rescale + tl.sum(weight[:, None] * o, axis=0)
            total = total * rescale + tl.sum(weight * tl.load(l_ptr + part, mask=ok, other=0.0), axis=0, keep_dims=True)
            running_max = new_max
        tl.store(y_ptr + (t * HEADS + h) * HEAD_DIM + d, (acc / total).to(y_ptr.dtype.element_ty))

    @triton.jit
    def _prefill_block(q, k, v, q_pos, j, first_pos, slope, running_max, total, acc, qk_scale,
                       MASKED: tl.constexpr, ALIBI: tl.constexpr, IEEE: tl.constexpr):
        """One block of keys j for a block of query rows: the online-softmax update of (max, sum, output), in
        base 2 (qk_scale and slope carry log2(e)). ALiBi's slope * (j - i) enters as slope * (j - first_pos):
        the rest, slope * (first_pos - i), is the same for every key of a row and cancels in the softmax. One
        add per score, and small where the weight is."""
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale
        else:
            scores = tl.dot(q, tl.trans(k)) * qk_scale
        if ALIBI:
            scores += (slope * (j - first_pos).to(tl.float32))[None, :]
        if MASKED:
            scores = tl.where(j[None, :] <= q_pos[:, None], scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))  # finite: key 0 comes first
        rescale = tl.exp2(running_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        total = total * rescale + tl.sum(p, axis=1)
        if IEEE:
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v)
        return new_max, total, acc

    @triton.jit
    def _prefill_attention_kernel(
        q_ptr, k_cache_ptr, v_cache_ptr, pos_ptr, slopes_ptr, y_ptr, T, max_seq_len, qk_scale,
        HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, ALIBI: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
    ):
        # One program per (head, BLOCK_M query rows); the blocks with the most keys are launched first, so
        # that the short ones fill the tail. Key blocks that every row sees need no causal mask; the blocks
        # after them, up to the last row's position, do.
        let_next_kernel_launch(PDL)
        wait_for_inputs(PDL)
        h = tl.program_id(0)
        first = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
        rows = first + tl.arange(0, BLOCK_M)
        row_ok = rows < T
        d = tl.arange(0, HEAD_DIM)
        q_pos = tl.load(pos_ptr + rows, mask=row_ok, other=0)
        q = tl.load(q_ptr + (rows[:, None] * HEADS + h) * HEAD_DIM + d[None, :], mask=row_ok[:, None], other=0.0)
        first_pos = tl.load(pos_ptr + first)
        last_pos = tl.load(pos_ptr + tl.minimum(first + BLOCK_M, T) - 1)
        seen_by_all = (first_pos + 1) // BLOCK_N * BLOCK_N  # keys [0, this) are visible to every row
        kv_base = (h // (HEADS // KV_HEADS)) * max_seq_len * HEAD_DIM
        slope = tl.load(slopes_ptr + h) * 1.4426950408889634 if ALIBI else 0.0  # LOG2E (a global needs constexpr)
        running_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        total = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
        for start in range(0, seen_by_all, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            kv_offsets = kv_base + j[:, None] * HEAD_DIM + d[None, :]
            k = tl.load(k_cache_ptr + kv_offsets)
            v = tl.load(v_cache_ptr + kv_offsets)
            running_max, total, acc = _prefill_block(q, k, v, q_pos, j, first_pos, slope, running_max, total, acc,
                                                     qk_scale, MASKED=False, ALIBI=ALIBI, IEEE=IEEE)
        for start in range(seen_by_all, last_pos + 1, BLOCK_N):
            j = start + tl.arange(0, BLOCK_N)
            kv_offsets = kv_base + j[:, None] * HEAD_DIM + d[None, :]
            k = tl.load(k_cache_ptr + kv_offsets, mask=(j <= last_pos)[:, None], other=0.0)
            v = tl.load(v_cache_ptr + kv_offsets, mask=(j <= last_pos)[:, None], other=0.0)
            running_max, total, acc = _prefill_block(q, k, v, q_pos, j, first_pos, slope, running_max, total, acc,
                                                     qk_scale, MASKED=True, ALIBI=ALIBI, IEEE=IEEE)
        y = acc / total[:, None]
        tl.store(y_ptr + (rows[:, None] * HEADS + h) * HEAD_DIM + d[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=row_ok[:, None])

    # Blocks of 64 query rows and 32-64 keys, 4 warps, 3 stages were the best of 27 configurations on an H100
    # (20 calls in one CUDA graph): 37 us per 13B layer of a 1,024-token prefill with ALiBi, against 105 us
    # for SDPA with the bias as a mask and 36 us for SDPA's causal kernel without it; 7B 30 against 31 us.
    # Two stages fit GPUs with less shared memory, and float32's larger tiles.
    _prefill_attention_tuned = launch.autotune(
        configs=[
            triton.Config({"BLOCK_M": 64, "BLOCK_N": bn}, num_warps=4, num_stages=s)
            for bn, s in [(64, 3), (32, 3), (64, 2), (32, 2)]
        ],
        key=["HEADS", "HEAD_DIM", "ALIBI"],
    )(_prefill_attention_kernel)


def rope_and_store(qkv, input_pos, rope, k_cache, v_cache, num_heads: int, num_kv_heads: int,
                   slots=None) -> torch.Tensor:
    """qkv [T, (heads + 2 kv_heads) * head_dim] (W_pack's output) at positions input_pos; rope the (cos, sin)
    tables [max_seq_len, head_dim] or None. Writes k, v at `slots` (None: input_pos) into the caches
    [1, kv_heads, max_seq_len, head_dim]; returns q [T, heads, head_dim]."""
    T = qkv.shape[0]
    max_seq_len, head_dim = k_cache.shape[2], k_cache.shape[3]
    q = torch.empty(T, num_heads, head_dim, dtype=qkv.dtype, device=qkv.device)
    cos, sin = rope if rope is not None else (qkv, qkv)  # unused without RoPE
    block_t = 1 if T <= MAX_VERIFY_TOKENS else 16
    _rope_and_store_kernel[(triton.cdiv(T, block_t), num_heads + 2 * num_kv_heads)](
        qkv, input_pos, input_pos if slots is None else slots, cos, sin, q, k_cache, v_cache, T, max_seq_len,
        HEADS=num_heads, KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, ROPE=rope is not None, BLOCK_T=block_t,
        PDL=launch.enabled, launch_pdl=launch.enabled,
    )
    return q


def decode_attention(q, k_cache, v_cache, input_pos, end: int, alibi_slopes=None, window=None,
                     slots=None) -> torch.Tensor:
    """q [T, heads, head_dim] at positions input_pos [T] over the cache, each with its own key and value at
    its slot (`slots`, None: input_pos); the positions are consecutive, or those of a verify pass with leaves
    (model.Transformer.forward). Keys beyond the largest position are never read, `end` only bounds the grid;
    with `window` (model.AttentionWindow) neither are the blocks of keys between its sinks and the first query's
    recent keys. Returns [T, heads * head_dim]."""
    if window is not None and window.sinks > BLOCK_KV:
        raise ValueError(f"the decode attention keeps at most {BLOCK_KV} sinks, got {window.sinks}")
    T, num_heads, head_dim = q.shape
    num_kv_heads, max_seq_len = k_cache.shape[1], k_cache.shape[2]
    sinks, recent = (window.sinks, window.recent) if window is not None else (0, 0)
    num_blocks = triton.cdiv(end, BLOCK_KV)
    o = torch.empty(num_heads, num_blocks, T, head_dim, dtype=torch.float32, device=q.device)
    m = torch.empty(num_heads, num_blocks, T, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)  # noqa: E741
    _attention_blocks_kernel[(num_heads, num_blocks)](
        q, k_cache, v_cache, input_pos, alibi_slopes if alibi_slopes is not None else m, o, m, l,
        T, max_seq_len, num_blocks, head_dim ** -0.5,
        HEADS=num_heads, KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_T=MAX_VERIFY_TOKENS, BLOCK_KV=BLOCK_KV,
        ALIBI=alibi_slopes is not None, SINKS=sinks, RECENT=recent,
        IEEE=q.dtype == torch.float32, PDL=launch.enabled, launch_pdl=launch.enabled,
    )
    y = torch.empty(T, num_heads * head_dim, dtype=q.dtype, device=q.device)
    _merge_blocks_kernel[(num_heads, T)](
        o, m, l, input_pos, q, k_cache, v_cache, input_pos if slots is None else slots, y, T, num_blocks,
        max_seq_len, head_dim ** -0.5,
        HEADS=num_heads, KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, BLOCK_T=MAX_VERIFY_TOKENS, BLOCK_KV=BLOCK_KV,
        BLOCK_B=32, RECENT=recent,
        PDL=launch.enabled, launch_pdl=launch.enabled,
    )
    return y


def prefill_attention(q, k_cache, v_cache, input_pos, alibi_slopes=None, blocks=None) -> torch.Tensor:
    """q [T, heads, head_dim] at consecutive positions input_pos [T] over the cache (causal by position,
    ALiBi bias with `alibi_slopes`); any number of tokens. Returns [T, heads * head_dim].

    `blocks=(BLOCK_M, BLOCK_N)` skips autotuning (Triton's CPU interpreter cannot time configs)."""
    T, num_heads, head_dim = q.shape
    num_kv_heads, max_seq_len = k_cache.shape[1], k_cache.shape[2]
    y = torch.empty(T, num_heads * head_dim, dtype=q.dtype, device=q.device)
    grid = lambda meta: (num_heads, triton.cdiv(T, meta["BLOCK_M"]))  # noqa: E731
    args = (q, k_cache, v_cache, input_pos, alibi_slopes if alibi_slopes is not None else y, y,
            T, max_seq_len, head_dim ** -0.5 * LOG2E)
    constants = dict(HEADS=num_heads, KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, ALIBI=alibi_slopes is not None,
                     IEEE=q.dtype == torch.float32)
    if blocks is None:
        _prefill_attention_tuned[grid](*args, **constants, PDL=launch.enabled, launch_pdl=launch.enabled)
    else:
        _prefill_attention_kernel[grid](*args, **constants, BLOCK_M=blocks[0], BLOCK_N=blocks[1], PDL=False)
    return y


def attend(attn, x, input_pos, end: int, rope, alibi_slopes, window=None, slots=None) -> torch.Tensor:
    """model.Attention `attn` over x [1, T, hidden] at positions input_pos, stored at `slots` (None:
    input_pos), with these kernels: `rope` the whole (cos, sin) tables or None, `alibi_slopes` or None,
    `window` a model.AttentionWindow or None; the cache is read over [0, end)."""
    return attn.o_proj(attend_qkv(attn, attn.W_pack(x), input_pos, end, rope, alibi_slopes, window, slots))


def attend_qkv(attn, qkv, input_pos, end: int, rope, alibi_slopes, window=None, slots=None) -> torch.Tensor:
    """`attend` between W_pack and o_proj: W_pack's output qkv [1, T, ...] -> [1, T, heads * head_dim]."""
    T = qkv.shape[1]
    # Only a draft attends through a window, and only a verify pass has slots apart from its positions: both
    # decode-sized passes.
    if (window is not None or slots is not None) and T > MAX_VERIFY_TOKENS:
        raise ValueError(f"a windowed or slotted attention pass takes at most {MAX_VERIFY_TOKENS} tokens, got {T}")
    cache = attn.kv_cache
    q = rope_and_store(qkv.view(T, -1), input_pos, rope, cache.k, cache.v, attn.num_heads, attn.num_kv_heads, slots)
    if T <= MAX_VERIFY_TOKENS:
        y = decode_attention(q, cache.k, cache.v, input_pos, end, alibi_slopes, window, slots)
    else:
        y = prefill_attention(q, cache.k, cache.v, input_pos, alibi_slopes)
    return y.view(1, T, attn.num_heads * attn.head_dim)
