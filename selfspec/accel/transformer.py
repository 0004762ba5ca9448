"""The model's forward pass on CUDA, with the fusions its kernels allow.

model.Transformer adds each residual right after its block, and norms it in a separate step. Here each
layer's MLP output is carried to the next layer and added there by the kernel that also computes the norm
after it (pointwise.add_rms_norm), so every residual add shares a kernel with a norm; and attention rotates
and stores k/v in one kernel and attends in another (attention.attend), where the head size allows. The
arithmetic, and its rounding, is the plain model's.
"""
from ..model import Transformer
from . import attention, pointwise


class FusedTransformer(Transformer):
    """model.Transformer with `hidden_states` on this package's CUDA kernels (accel.use_kernels swaps the class
    of a model on CUDA)."""

    def prepare(self):
        # rope_and_store and the Triton attention where they serve the head size, else the plain attention
        self.attention_kernels = attention.supported(self.model.norm.weight.device, self.args.head_dim)

    def hidden_states(self, tokens, input_pos, end: int | None = None, slots=None):
        if end is None:
            end = int(input_pos[-1]) + 1
        if self.attention_kernels:
            rope = (self.rope_cos, self.rope_sin) if self.args.position_encoding == "rope" else None
            alibi = None if rope is not None else self.alibi
        else:
            mask, rope = self.attention_inputs(tokens, input_pos, end, slots)
        x = self.model.embed_tokens(tokens)
        delta = None  # the previous layer's MLP output, not yet added to x
        for layer in self.model.layers:
            norm = layer.input_layernorm
            if delta is None:
                normed = pointwise.rms_norm(x, norm.weight, norm.eps)
            else:
                x, normed = pointwise.add_rms_norm(x, delta, norm.weight, norm.eps)
            if self.attention_kernels:
                y = attention.attend(layer.self_attn, normed, input_pos, end, rope, alibi, self.attention_window,
                                     slots)
            else:
                y = layer.self_attn(normed, input_pos, end, mask, rope, slots)
            norm = layer.post_attention_layernorm
            x, normed = pointwise.add_rms_norm(x, y, norm.weight, norm.eps)
            delta = layer.mlp(normed)
        return pointwise.add_rms_norm(x, delta, self.model.norm.weight, self.model.norm.eps)[1]
