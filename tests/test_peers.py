"""bench/peers: the GGUF writer reads back as the same tensors, llama.cpp's printed numbers are parsed
(samples recorded from a llama.cpp build, in tests/data/llamacpp/), and peer rows skip cleanly when
llama.cpp's tools are absent. llama.cpp itself is not built here."""
import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "llamacpp"

gguf = pytest.importorskip("gguf")

from bench import benchmark  # noqa: E402
from bench.peers import llamacpp  # noqa: E402
from bench.peers.write_gguf import permute_for_rope, read_gguf_tensors, tokenizer_fields, write_gguf  # noqa: E402
from selfspec.errors import InputError  # noqa: E402
from selfspec.checkpoint import load_checkpoint  # noqa: E402


def tokenizer_gguf(path: Path, n_tokens: int = 10) -> Path:
    """A GGUF file with a tokenizer of n_tokens and no tensors."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(n_tokens)])
    writer.add_token_types([gguf.TokenType.NORMAL] * n_tokens)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


# --- the GGUF writer ---

def test_permute_for_rope_moves_rotate_half_pairs_next_to_each_other():
    hd, heads = 8, 2
    rows = torch.arange(heads * hd, dtype=torch.float32)[:, None]
    out = permute_for_rope(rows, heads)[:, 0].long().tolist()
    # Head 0: rotate-half pairs (0, 4), (1, 5), ... become rows (0, 1), (2, 3), ...; head 1 likewise.
    assert out == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_baichuan_7b_round_trip(tiny_7b, tmp_path, dtype):
    _, model, _ = load_checkpoint(str(tiny_7b), torch.float32, "cpu", 64)
    path = write_gguf(model, tmp_path / "m.gguf", tokenizer_gguf(tmp_path / "tok.gguf"), dtype, "baichuan")
    reader = gguf.GGUFReader(path)
    back = read_gguf_tensors(path)
    a = model.args
    assert reader.fields["general.architecture"].contents() == "baichuan"
    assert reader.fields["baichuan.block_count"].contents() == a.num_layers
    assert reader.fields["baichuan.rope.freq_base"].contents() == a.rope_theta
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == a.vocab_size  # padded from 10
    assert reader.fields["tokenizer.ggml.tokens"].contents()[-1] == f"[PAD{a.vocab_size - 1}]"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_up.weight"] == (gguf.GGMLQuantizationType.F16 if dtype == "f16" else gguf.GGMLQuantizationType.F32)
    tol = dict(rtol=1e-3, atol=1e-4) if dtype == "f16" else dict(rtol=0, atol=0)

    def same(name, tensor):
        np.testing.assert_allclose(back[name], tensor.float().numpy(), **tol)

    same("token_embd.weight", model.model.embed_tokens.weight)
    same("output.weight", model.lm_head.weight)
    # NormHead: the head written is the normalized one.
    np.testing.assert_allclose(np.linalg.norm(back["output.weight"], axis=1), 1.0, rtol=2e-3)
    same("output_norm.weight", model.model.norm.weight)
    q_size = a.num_heads * a.head_dim
    for i, layer in enumerate(model.model.layers):
        q, k, v = layer.self_attn.W_pack.weight.split([q_size, q_size, q_size])
        same(f"blk.{i}.attn_q.weight", permute_for_rope(q, a.num_heads))
        same(f"blk.{i}.attn_k.weight", permute_for_rope(k, a.num_kv_heads))
        same(f"blk.{i}.attn_v.weight", v)
        same(f"blk.{i}.attn_output.weight", layer.self_attn.o_proj.weight)
        same(f"blk.{i}.ffn_gate.weight", layer.mlp.gate_proj.weight)
        same(f"blk.{i}.ffn_up.weight", layer.mlp.up_proj.weight)
        same(f"blk.{i}.ffn_down.weight", layer.mlp.down_proj.weight)
        same(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight)
        same(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight)
    assert len(back) == 2 + 9 * a.num_layers + 1


def test_alibi_other_than_40_layers_is_refused(tiny_13b, tmp_path):
    _, model, _ = load_checkpoint(str(tiny_13b), torch.float32, "cpu", 64)
    with pytest.raises(InputError, match="40-layer"):
        write_gguf(model, tmp_path / "m.gguf", tokenizer_gguf(tmp_path / "tok.gguf"), "f32", "baichuan")


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    with pytest.raises(InputError, match="more than the model's"):
        tokenizer_fields(tokenizer_gguf(tmp_path / "tok.gguf", 20), 16)


def test_smollm2_written_back_equals_the_original_gguf(tmp_path_factory, tmp_path):
    """Our loader's SmolLM2 written by write_gguf is, tensor for tensor, the package's GGUF dequantized:
    names, Q/K row order and shapes are llama.cpp's own."""
    from convert_gguf import smollm2_gguf_path
    from smollm2 import smollm2_folder

    folder = smollm2_folder(tmp_path_factory)
    _, model, _ = load_checkpoint(str(folder), torch.float32, "cpu", 64)
    original = smollm2_gguf_path()
    path = write_gguf(model, tmp_path / "smollm2.gguf", original, "f32", "llama")
    ours, theirs = read_gguf_tensors(path), read_gguf_tensors(original)
    assert set(ours) - set(theirs) == {"output.weight"}  # the original ties the head to the embeddings
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor, err_msg=name)
    np.testing.assert_array_equal(ours["output.weight"], theirs["token_embd.weight"])
    fields = gguf.GGUFReader(path).fields
    assert fields["tokenizer.chat_template"].contents() == gguf.GGUFReader(original).fields["tokenizer.chat_template"].contents()


# --- parsing what llama.cpp prints ---

def test_parse_completion_timings():
    # The sample's lines: "prompt eval time =   12025.79 ms /    16 tokens", "eval time =   12055.81 ms /     7 runs".
    row = llamacpp.parse_perf((DATA / "completion.txt").read_text())
    assert row["prompt_tokens"] == 16
    assert row["tokens_generated"] == 8  # the prompt's token and 7 eval runs ("The capital of France is Paris." + EOS)
    assert row["first_token_latency_s"] == pytest.approx(12.02579)
    assert row["decode_time_s"] == pytest.approx(12.05581)
    assert row["decode_tokens_per_s"] == pytest.approx(7 / 12.05581)


def test_parse_speculative_summary():
    # "encoded   23 tokens in   12.340 seconds", "decoded    8 tokens in    5.036 seconds", n_drafted 9, n_accept 5.
    row = llamacpp.parse_speculative((DATA / "speculative.txt").read_text())
    assert (row["prompt_tokens"], row["tokens_generated"], row["drafted"], row["accepted"]) == (23, 8, 9, 5)
    assert row["first_token_latency_s"] == pytest.approx(12.340)
    assert row["decode_tokens_per_s"] == pytest.approx(8 / 5.036)
    assert row["acceptance_rate"] == pytest.approx(5 / 9)
    # A round emits its accepted drafts and one target token: 8 tokens, 5 of them accepted drafts, 3 rounds.
    assert (row["rounds"], row["tokens_per_round"]) == (3, pytest.approx(8 / 3))
    # The target's "prompt eval" (20174.46 ms) and "eval" (0.00 ms) less the prompt's encoding (12.340 s).
    assert row["target_time_s"] == pytest.approx(20.17446 - 12.340)


def test_parse_lookup_summary():
    row = llamacpp.parse_speculative((DATA / "lookup.txt").read_text())
    assert (row["prompt_tokens"], row["tokens_generated"], row["drafted"], row["accepted"]) == (25, 10, 8, 7)
    assert row["ms_per_token"] == pytest.approx(9664 / 10)
    assert (row["rounds"], row["tokens_per_round"]) == (3, pytest.approx(10 / 3))
    assert row["target_time_s"] == pytest.approx(6.93147 + 4.09552 - 6.931)


def test_gpu_memory_peak_is_the_rise_over_the_first_sample(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '1000\\n1800\\n1500\\n'\n")  # MiB in use: before, then during the run
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with llamacpp.GpuMemoryPeak() as memory:
        pass
    assert memory.gib == pytest.approx(800 / 1024)


def test_gpu_memory_peak_without_nvidia_smi_is_none(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with llamacpp.GpuMemoryPeak() as memory:
        pass
    assert memory.gib is None


def test_parse_bench_json():
    records = llamacpp.parse_bench_json("log line before the JSON\n" + (DATA / "bench.json").read_text())
    assert len(records) == 1
    assert (records[0]["n_prompt"], records[0]["n_gen"], records[0]["n_depth"]) == (0, 4, 16)
    assert records[0]["avg_ts"] == pytest.approx(1.075068)


@pytest.mark.parametrize("parse", [llamacpp.parse_perf, llamacpp.parse_speculative, llamacpp.parse_bench_json])
def test_output_without_timings_is_an_error(parse):
    with pytest.raises(llamacpp.LlamaCppError):
        parse("main: error: failed to load model 'x.gguf'\n")


def test_generation_text_without_the_end_marker_and_final_newlines():
    assert llamacpp.generation_text((DATA / "completion.out").read_text()) == "The capital of France is Paris."
    assert llamacpp.generation_text("Paris\n\n\n") == "Paris\n"  # cut at n_predict: the text's own newline stays


# --- peer rows without llama.cpp ---

def test_missing_tools_are_reported_not_run(tmp_path):
    assert llamacpp.find_bin_dir(tmp_path) is None
    (tmp_path / "llama-bench").write_text("")
    assert llamacpp.find_bin_dir(tmp_path) is None  # all tools are needed


def test_peer_rows_skip_cleanly_without_llamacpp(tmp_path):
    args = argparse.Namespace(llamacpp_bin=str(tmp_path / "nowhere"), model=None, skip_hf=True,
                              gguf_dir=str(tmp_path / "gguf"), tokenizer_gguf=None)
    peers = benchmark.shape_peer_rows("7b", args, [1, 2, 3], 64)
    assert "skipped" in peers["llamacpp"] and "build_llamacpp.sh" in peers["llamacpp"]["skipped"]
    assert not (tmp_path / "gguf").exists()  # nothing was written
    table = benchmark.peers_markdown({"shape": "7b", "peers": peers})
    assert "llama.cpp rows skipped" in table


# --- transformers' prompt lookup row (CPU, float32, a tiny Llama) ---

def test_transformers_prompt_lookup_rows_equal_our_plain_greedy(tmp_path):
    """The transformers peer runs the same weights as our rows: in float32 its greedy output with prompt
    lookup equals our plain greedy output, token for token, and the row says so."""
    pytest.importorskip("transformers")
    from make_proxy import read_llama
    from tiny_llama import write_tiny_llama

    from selfspec.generate import generate

    folder = write_tiny_llama(tmp_path / "tiny", tied=False)
    ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu", 128)
    prompts, engine_rows = [], []
    for text in ("the cat sat on the mat, the cat sat on the mat, the cat", "运河 运河 运河"):
        ids, _ = ckpt.chat_ids(tokenizer, text, max_input_tokens=64)
        out, _ = generate(model, ids, 16, eos_token_id=ckpt.eos_token_id)
        prompts.append((text, text, ids))
        engine_rows.append({"plain": {"token_ids": out}})
    state, config = read_llama(folder)
    hf = benchmark.hf_llama(state, config, torch.float32, "cpu")
    result = benchmark.transformers_lookup_rows(hf, prompts, engine_rows, 16, [ckpt.eos_token_id], lookup_tokens=4)
    assert [r["identical_to_engine_plain"] for r in result["prompts"]] == [True, True]
    assert result["summary"]["identical_to_engine_plain"] == 2
    assert all(r["tokens_generated"] == len(e["plain"]["token_ids"]) for r, e in zip(result["prompts"], engine_rows))
    table = benchmark.peers_markdown({"shape": "tiny", "peers": {"transformers_prompt_lookup": result}})
    assert "| transformers_prompt_lookup | 2 |" in table and "identical to ours on 2 of 2" in table


def test_hf_llama_refuses_a_state_dict_with_wrong_keys(tmp_path):
    pytest.importorskip("transformers")
    from make_proxy import read_llama
    from tiny_llama import write_tiny_llama

    state, config = read_llama(write_tiny_llama(tmp_path / "tiny", tied=False))
    state["model.layers.0.mlp.gate.weight"] = state.pop("model.layers.0.mlp.gate_proj.weight")
    with pytest.raises(RuntimeError, match="gate"):
        benchmark.hf_llama(state, config, torch.float32, "cpu")


def stand_in_tools(folder: Path) -> Path:
    """Scripts named like llama.cpp's tools that print the recorded samples (llama-quantize copies its input)."""
    folder.mkdir()
    scripts = {
        "llama-completion": f'cat "{DATA}/completion.out"; cat "{DATA}/completion.txt" >&2',
        "llama-speculative-simple": f'cat "{DATA}/speculative.txt"',
        "llama-lookup": f'cat "{DATA}/lookup.txt" >&2',
        "llama-bench": f'cat "{DATA}/bench.json"',
        "llama-quantize": 'cp "$2" "$3"',
    }
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def test_proxy_peer_rows_with_stand_in_tools(tmp_path):
    """The llama.cpp rows end to end with stand-ins for its tools: the GGUF is written, the Q4_0 copy made,
    every mode run per prompt and summarized, and the table lists them."""
    from bench.measure_acceptance import PROMPTS
    from tiny_llama import write_tiny_llama

    from selfspec.generate import generate

    folder = write_tiny_llama(tmp_path / "tiny", tied=False)
    ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu", 128)
    engine_rows = []
    for prompt in PROMPTS[:2]:
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=64)
        engine_rows.append({"plain": {"token_ids": generate(model, ids, 4, eos_token_id=ckpt.eos_token_id)[0]}})
    args = argparse.Namespace(llamacpp_bin=str(stand_in_tools(tmp_path / "bin")), gguf_dir=str(tmp_path / "gguf"),
                              tokenizer_gguf=str(tokenizer_gguf(tmp_path / "tok.gguf")), proxy=str(folder),
                              peer_prompts=2, new_tokens=8, prompt_tokens=64)
    peers = benchmark.proxy_peer_rows(model, ckpt, tokenizer, engine_rows, args)
    written = read_gguf_tensors(tmp_path / "gguf" / "proxy-tiny-f16.gguf")
    np.testing.assert_array_equal(written["token_embd.weight"], model.model.embed_tokens.weight.half().float().numpy())
    assert (tmp_path / "gguf" / "proxy-tiny-q4_0.gguf").is_file()
    block = peers["llamacpp"]
    assert len(block["prompts"]) == 2
    modes = ["plain", "speculative_default", "speculative_n_max16_p0.75", "speculative_n_max8_p0.6", "lookup"]
    assert list(block["summary"]) == modes
    assert block["summary"]["plain"]["decode_tokens_per_s"] == pytest.approx(7 / 12.05581)
    assert block["summary"]["speculative_default"]["acceptance_rate"] == pytest.approx(5 / 9)
    assert block["summary"]["lookup"]["acceptance_rate"] == pytest.approx(7 / 8)
    assert block["summary"]["speculative_default"]["tokens_per_round"] == pytest.approx(8 / 3)
    assert block["summary"]["plain"]["tokens_per_round"] is None
    assert block["prompts"][0]["plain_text"] == "The capital of France is Paris."
    assert block["prompts"][0]["plain"]["prompt_tokens_match"] is False  # the samples' prompts are not these
    table = benchmark.peers_markdown({"shape": "tiny", "peers": peers})
    assert all(f"llamacpp {mode} |" in table for mode in modes)
