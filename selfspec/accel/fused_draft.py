"""The INT4 draft's forward pass on CUDA with four GEMV launches and the attention per layer.

FusedTransformer's layer runs add_rms_norm, W_pack, attention, o_proj, add_rms_norm, gate/up, down. Where every
matrix of the draft's decoder layers multiplies on the CUDA C++ GEMV (int4_cuda.py), the norms and the residual
adds move into the GEMVs next to them: W_pack and gate/up take the residual stream h and normalise it in their
prologue, o_proj and down return h + W x from their epilogue. Per layer: W_pack, rope_and_store, attention,
o_proj, gate/up, down; no norm or add kernel. The final norm before the head stays a kernel of its own.

Each GEMV reads h only after the grid-dependency wait of programmatic dependent launch (or after the kernel
before it ends, without PDL), and h is never written in place: o_proj and down write a new tensor.

Rounding differs from FusedTransformer's in two places, so the logits agree within a few fp16 rounding steps
(tests/accel/test_fused_draft.py): the norm sums its squares in another order (int4_cuda.py), and h + W x is
rounded to fp16 once, where the unfused layer rounds W x and then the sum.
"""
import torch

from . import attention, int4, pointwise
from .transformer import FusedTransformer


enabled = True  # False: such a draft keeps FusedTransformer's forward pass (for benchmarks that compare them)


def serves(model) -> bool:
    """Whether `model`, a FusedTransformer, can run as a FusedDraft: the attention kernels serve its head size,
    its norms are float16 and every matrix of its decoder layers multiplies on the CUDA GEMV."""
    if not enabled or not isinstance(model, FusedTransformer) or not model.attention_kernels:
        return False
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        matrices = (attn.W_pack, attn.o_proj, getattr(mlp, "gate_up_proj", None), getattr(mlp, "down_proj", None))
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if not all(map(int4.on_cuda_kernel, matrices)) or not matrices[2].glu:
            return False
        if any(norm.weight.dtype != torch.float16 for norm in norms):
            return False
    return True


def _gemv(layer, x, residual=None, norm=None):
    return layer.gemv(x, layer.packed, layer.scales, layer.group_size, glu=layer.glu, residual=residual, norm=norm)


class FusedDraft(FusedTransformer):
    """FusedTransformer with the norms and residual adds inside the CUDA GEMVs (accel.use_kernels chooses it
    for a draft that `serves`)."""

    def hidden_states(self, tokens, input_pos, end: int | None = None, slots=None):
        if end is None:
            end = int(input_pos[-1]) + 1
        rope = (self.rope_cos, self.rope_sin) if self.args.position_encoding == "rope" else None
        alibi = None if rope is not None else self.alibi
        h = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = _gemv(attn.W_pack, h, norm=layer.input_layernorm)
            y = attention.attend_qkv(attn, qkv, input_pos, end, rope, alibi, self.attention_window, slots)
            h = _gemv(attn.o_proj, y, residual=h)
            h = _gemv(mlp.down_proj, _gemv(mlp.gate_up_proj, h, norm=layer.post_attention_layernorm), residual=h)
        return pointwise.rms_norm(h, self.model.norm.weight, self.model.norm.eps)
