"""speculative.py end to end, through a subprocess as a user runs it."""
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_error, run_cli, run_cli_in_process
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]


# The lines after "Decode speed": where the drafts came from, per --draft, and the second choices (on by default
# where the INT4 draft drafts greedily).
SECOND_CHOICES = [r"Second choices verified \d+", r"Second choices accepted \d+"]
SOURCE_LINES = {
    "int4": SECOND_CHOICES,
    "lookup": [r"Lookup tokens proposed \d+", r"Lookup tokens accepted \d+", r"Lookup verification steps \d+"],
    "lookup+int4": [r"Lookup tokens proposed \d+", r"Lookup tokens accepted \d+", r"Lookup verification steps \d+",
                    r"INT4 draft tokens proposed \d+", r"INT4 draft tokens accepted \d+", *SECOND_CHOICES],
}


@pytest.mark.parametrize("draft", [None, "int4", "lookup", "lookup+int4"])
def test_human_output(tiny_7b, draft):
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "Tell me about the river.", "--n-predict", 24,
                     "--speculative", *(["--draft", draft] if draft else []), check_exit=0)
    extra = SOURCE_LINES[draft or "lookup+int4"]  # the default
    lines = result.stdout.splitlines()[-9 - len(extra):]
    assert re.fullmatch(r"Tokens generated \d+", lines[0]), result.stdout
    n = int(lines[0].split()[-1])
    assert 1 <= n <= 24
    assert re.fullmatch(r"E2E Generation time \d+\.\d{4}s", lines[1])
    assert re.fullmatch(r"First token latency \d+\.\d{4}s", lines[2])
    assert re.fullmatch(r"Draft tokens proposed \d+", lines[3])
    assert re.fullmatch(r"Draft tokens accepted \d+", lines[4])
    assert re.fullmatch(r"Acceptance rate \d+\.\d\d%", lines[5])
    assert re.fullmatch(r"Verification steps \d+", lines[6])
    assert re.fullmatch(r"Tokens per verification step \d+\.\d\d", lines[7])
    assert re.fullmatch(r"Decode speed \d+\.\d\d tokens/s", lines[8])
    for pattern, line in zip(extra, lines[9:], strict=True):
        assert re.fullmatch(pattern, line), result.stdout
    if draft == "lookup+int4":  # the split adds up to the totals
        numbers = [int(line.split()[-1]) for line in lines[3:5] + lines[9:]]
        assert numbers[0] == numbers[2] + numbers[5] and numbers[1] == numbers[3] + numbers[6]
    assert result.stderr == ""


@pytest.mark.parametrize("draft", ["int4", "lookup", "lookup+int4"])
def test_draft_sources_are_lossless_and_report_the_split(tiny_7b, draft):
    common = ["--repo-id-or-model-path", tiny_7b, "--prompt", "the river, the river, the river",
              "--n-predict", 40, "--dtype", "float32", "--warmup", 0, "--json"]
    spec = json.loads(run_cli(*common, "--draft", draft, check_exit=0).stdout.splitlines()[-1])
    plain = json.loads(run_cli(*common, "--no-speculative", check_exit=0).stdout.splitlines()[-1])
    assert spec["token_ids"] == plain["token_ids"]
    assert spec["draft_source"] == draft and spec["speculative"] and plain["draft_source"] is None
    assert 0 <= spec["lookup_accepted"] <= spec["lookup_drafted"] <= spec["drafted"]
    assert spec["lookup_steps"] <= spec["verify_steps"]
    if draft == "int4":  # (whether a tiny random model's answer repeats the context is left to chance)
        assert spec["lookup_drafted"] == spec["lookup_steps"] == 0
    if draft == "lookup":
        assert spec["drafted"] == spec["lookup_drafted"] and spec["accepted"] == spec["lookup_accepted"]


def test_second_choices_are_lossless_and_reported(tiny_7b):
    common = ["--repo-id-or-model-path", tiny_7b, "--prompt", "Tell me about the river.", "--n-predict", 40,
              "--dtype", "float32", "--warmup", 0, "--draft", "int4"]
    spec = json.loads(run_cli(*common, "--json", check_exit=0).stdout.splitlines()[-1])  # on by default
    off = json.loads(run_cli(*common, "--no-second-choices", "--json", check_exit=0).stdout.splitlines()[-1])
    plain = json.loads(run_cli(*common, "--no-speculative", "--json", check_exit=0).stdout.splitlines()[-1])
    assert spec["token_ids"] == off["token_ids"] == plain["token_ids"]
    assert spec["second_choices"] and not off["second_choices"] and not plain["second_choices"]
    assert 0 <= spec["leaves_accepted"] <= spec["leaves"] <= spec["drafted"] and spec["leaves"] > 0 and off["leaves"] == 0
    sampled = json.loads(run_cli(*common, "--do-sample", "--json", check_exit=0).stdout.splitlines()[-1])
    assert not sampled["second_choices"]  # the default applies to greedy decoding only
    assert_clean_error(run_cli(*common, "--second-choices", "--do-sample"), "--second-choices")
    assert_clean_error(run_cli(*common[:-1], "lookup", "--second-choices"), "--second-choices")


def test_lookup_after_draft_is_lossless_and_on_by_default_with_lookup_and_int4(tiny_7b):
    common = ["--repo-id-or-model-path", tiny_7b, "--prompt", "the river, the river, the river", "--n-predict", 40,
              "--dtype", "float32", "--warmup", 0, "--json"]
    on = json.loads(run_cli(*common, "--draft", "lookup+int4", check_exit=0).stdout.splitlines()[-1])
    off = json.loads(run_cli(*common, "--draft", "lookup+int4", "--no-lookup-after-draft",
                             check_exit=0).stdout.splitlines()[-1])
    sampled = json.loads(run_cli(*common, "--draft", "lookup+int4", "--do-sample", "--top-k", 1,
                                 check_exit=0).stdout.splitlines()[-1])
    plain = json.loads(run_cli(*common, "--no-speculative", check_exit=0).stdout.splitlines()[-1])
    assert on["token_ids"] == off["token_ids"] == sampled["token_ids"] == plain["token_ids"]
    assert on["lookup_after_draft"] and sampled["lookup_after_draft"]
    assert not off["lookup_after_draft"] and not plain["lookup_after_draft"]
    assert_clean_error(run_cli(*common, "--draft", "int4", "--lookup-after-draft"), "--lookup-after-draft")
    assert_clean_error(run_cli(*common, "--no-speculative", "--lookup-after-draft"), "--lookup-after-draft")


def test_bad_draft_source_and_ignored_draft(tiny_7b):
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--draft", "ngram", "--n-predict", 4)
    assert_clean_error(result, "--draft")
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 4, "--warmup", 0,
                     "--no-speculative", "--draft", "lookup", "--json", check_exit=0)
    assert result.stderr == "warning: --draft is not used with --no-speculative\n"


@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b_sharded"])
def test_json_and_lossless_through_the_cli(fixture, request):
    path = request.getfixturevalue(fixture)
    common = ["--repo-id-or-model-path", path, "--prompt", "北京是哪个国家的首都？", "--n-predict", 40,
              "--dtype", "float32", "--warmup", 0, "--json"]
    spec = json.loads(run_cli(*common, "--speculative", check_exit=0).stdout.splitlines()[-1])
    plain = json.loads(run_cli(*common, "--no-speculative", check_exit=0).stdout.splitlines()[-1])
    for key in ("text", "token_ids", "tokens_generated", "e2e_time_s", "first_token_latency_s", "drafted",
                "accepted", "acceptance_rate", "verify_steps", "tokens_per_s"):
        assert key in spec, key
    assert spec["token_ids"] == plain["token_ids"] and spec["text"] == plain["text"]
    assert spec["tokens_generated"] == len(spec["token_ids"]) <= 40
    assert spec["speculative"] and not plain["speculative"] and plain["drafted"] == 0
    assert 0 < spec["drafted"] and 0 <= spec["accepted"] <= spec["drafted"]
    assert spec["acceptance_rate"] == pytest.approx(spec["accepted"] / spec["drafted"])
    assert 0 < spec["first_token_latency_s"] <= spec["e2e_time_s"]


def test_sampling_options_and_alias(tiny_13b):
    result = run_cli("--repo-id-or-model-path", tiny_13b, "--prompt", "hi", "--n-predict", 16, "--do-sample",
                     "--temperature", 0.8, "--top-k", 20, "--top-p", 0.9, "--seed", 3, "--th_stop_draft", 0.4,
                     "--max-step-draft", 4, "--system", "You are terse.", "--warmup", 0, "--json", "--speculative",
                     check_exit=0)
    record = json.loads(result.stdout.splitlines()[-1])
    assert 1 <= record["tokens_generated"] <= 16
    assert record["sampling"] == {"temperature": 0.8, "top_k": 20, "top_p": 0.9}


def test_sampling_defaults_come_from_the_generation_config(tiny_7b):
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 8, "--do-sample",
                     "--top-p", 0.5, "--warmup", 0, "--json", check_exit=0)
    assert json.loads(result.stdout.splitlines()[-1])["sampling"] == {"temperature": 0.3, "top_k": 5, "top_p": 0.5}
    assert result.stderr == "warning: the checkpoint's repetition_penalty 1.05 is not applied " \
                            "(--repetition-penalty 1.05 applies it)\n"
    greedy = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 8, "--warmup", 0, "--json",
                     check_exit=0)
    assert json.loads(greedy.stdout.splitlines()[-1])["sampling"] is None and greedy.stderr == ""


def test_a_checkpoint_penalty_out_of_range_is_not_offered_as_a_flag(tiny_7b, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_7b, folder)
    generation = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**generation, "repetition_penalty": float("nan")}))
    result = run_cli("--repo-id-or-model-path", folder, "--prompt", "hi", "--n-predict", 4, "--do-sample",
                     "--warmup", 0, "--json", check_exit=0)
    assert result.stderr == "warning: the checkpoint's repetition_penalty nan is not applied\n"  # no refused flag


def test_repetition_penalty_through_the_cli(tiny_7b):
    common = ["--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 24, "--dtype", "float32",
              "--warmup", 0, "--json", "--repetition-penalty", 1.5]
    spec = run_cli(*common, "--speculative", check_exit=0)
    plain = run_cli(*common, "--no-speculative", check_exit=0)
    records = [json.loads(r.stdout.splitlines()[-1]) for r in (spec, plain)]
    assert records[0]["repetition_penalty"] == 1.5 and records[0]["token_ids"] == records[1]["token_ids"]
    sampled = run_cli(*common, "--do-sample", "--seed", 1, check_exit=0)
    assert sampled.stderr == ""  # the penalty is given: no warning about the checkpoint's


def test_a_prompt_that_does_not_fit_is_an_error_and_a_long_system_text_is_cut(tiny_7b):
    long_prompt = "the river flows to the sea " * 200  # far beyond the tiny 256-token context
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", long_prompt, "--raw-prompt", "--n-predict", 8,
                     "--warmup", 0, "--json")
    assert_clean_error(result, "--n-predict 8 leaves room for 248 prompt tokens in the context of 256", "needs")
    # The user's message fits; the system text before it is cut from the left to make room.
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--system", "Be brief. " * 100,
                     "--n-predict", 200, "--warmup", 0, "--json", check_exit=0)
    assert result.stderr.count("\n") == 1 and "cut from the left, the system text first" in result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["prompt_tokens"] == 256 - 200


def damage(kind, tiny_copy):
    if kind == "no config":
        path = tiny_copy()
        (path / "config.json").unlink()
    elif kind == "no weights":
        path = tiny_copy()
        (path / "model.safetensors").unlink()
    elif kind == "not baichuan":
        path = tiny_copy()
        config = json.loads((path / "config.json").read_text())
        config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
        (path / "config.json").write_text(json.dumps(config))
    elif kind == "truncated safetensors":
        path = tiny_copy()
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "corrupted bin":
        path = tiny_copy(fmt="bin")
        (path / "pytorch_model.bin").write_bytes(b"not a checkpoint" * 100)
    elif kind == "legacy pickle bin":  # a real state dict that torch.load(weights_only=True) refuses
        path = tiny_copy(fmt="bin")
        state = torch.load(path / "pytorch_model.bin", weights_only=True)
        torch.save(state, path / "pytorch_model.bin", _use_new_zipfile_serialization=False, pickle_protocol=4)
    elif kind.startswith("weights "):  # weights of the right shapes, wrong values
        path = tiny_copy()
        state = load_file(path / "model.safetensors")
        norm = state["model.norm.weight"]
        state["model.norm.weight"] = {"weights complex": norm.to(torch.complex64), "weights int64": norm.long(),
                                      "weights NaN": norm.clone().fill_(float("nan"))}[kind]
        save_file(state, path / "model.safetensors")
    elif kind == "weight_map leaves the folder":  # crafted: the loader must not read another folder's file
        path = tiny_copy(fmt="sharded-safetensors")
        index = json.loads((path / "model.safetensors.index.json").read_text())
        index["weight_map"] = {key: "../" * 30 + "etc/passwd" for key in index["weight_map"]}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    elif kind == "weight_map of lists":
        path = tiny_copy(fmt="sharded-safetensors")
        index = json.loads((path / "model.safetensors.index.json").read_text())
        index["weight_map"] = {key: [name] for key, name in index["weight_map"].items()}
        (path / "model.safetensors.index.json").write_text(json.dumps(index))
    else:  # a config.json field changed
        path = tiny_copy()
        config = json.loads((path / "config.json").read_text())
        if kind == "shape mismatch":
            config["intermediate_size"] += 32
        elif kind == "architectures not a list":
            del config["model_type"]
            config["architectures"] = 5
        elif kind == "rope_parameters not an object":
            config["rope_parameters"] = "x"
        elif kind == "rms_norm_eps NaN":
            config["rms_norm_eps"] = float("nan")
        elif kind == "rope_theta infinite":
            config["rope_theta"] = float("inf")
        elif kind == "context too large to allocate":
            config["max_position_embeddings"] = 10**12
        elif kind == "a billion layers":
            config["num_hidden_layers"] = 10**9
        (path / "config.json").write_text(json.dumps(config))
    return path


BAD_CHECKPOINTS = [
    "no config", "no weights", "not baichuan", "truncated safetensors", "corrupted bin", "legacy pickle bin",
    "weights complex", "weights int64", "weights NaN", "weight_map of lists", "shape mismatch",
    "architectures not a list", "rope_parameters not an object", "rms_norm_eps NaN", "rope_theta infinite",
    "context too large to allocate", "weight_map leaves the folder", "a billion layers",
]


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_bad_checkpoints(kind, tiny_copy):
    result = run_cli("--repo-id-or-model-path", damage(kind, tiny_copy), "--prompt", "hi", "--n-predict", 4, "--warmup", 0)
    assert_clean_error(result)
    assert "weights_only set to False" not in result.stderr  # torch's advice; this project never takes it


def test_missing_path_and_uncached_hub_id(tmp_path):
    assert_clean_error(run_cli("--repo-id-or-model-path", tmp_path / "nope"), "does not exist")
    assert_clean_error(run_cli("--repo-id-or-model-path", "baichuan-inc/Baichuan2-7B-Chat"), "local folder")


@pytest.mark.parametrize("args,words", [
    (["--prompt", "  "], ["prompt"]),
    (["--n-predict", 0], ["n-predict"]),
    (["--n-predict", 256], ["n-predict"]),
    (["--th-stop-draft", 1.5], ["th-stop-draft"]),
    (["--max-step-draft", 0], ["max-step-draft"]),
    (["--top-p", 0], ["--top-p must be in (0, 1]"]),
    (["--top-k", -1], ["--top-k must be >= 0"]),
    (["--do-sample", "--temperature", 0], ["--temperature must be positive"]),
    (["--prompt", "hello there, how are you?", "--n-predict", 250], ["room for 6 prompt tokens", "needs 15"]),
    (["--do-sample", "--temperature", "nan"], ["temperature"]),
    (["--do-sample", "--temperature", "inf"], ["temperature"]),
    (["--do-sample", "--seed", 2**64], ["seed"]),
    (["--repetition-penalty", 0], ["repetition-penalty"]),
    (["--repetition-penalty", "nan"], ["repetition-penalty"]),
    (["--do-sample", "--repetition-penalty", 1e-38], ["--repetition-penalty must be in [0.01, 100]"]),  # overflows
    (["--seed", -1], ["seed"]),
    (["--warmup", 10**30], ["--warmup must be in [0, 100]"]),  # it would run for ever
    (["--prompt", b"caf\xe9"], ["prompt", "UTF-8"]),  # Latin-1 bytes
    (["--system", b"\xff"], ["system", "UTF-8"]),
])
def test_impossible_arguments(args, words, tiny_7b):
    assert_clean_error(run_cli("--repo-id-or-model-path", tiny_7b, "--warmup", 0, *args), *words)


def test_seed_repeats_whatever_the_warmup(tiny_7b):
    def sample(warmup):
        result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 12, "--do-sample",
                         "--seed", 7, "--warmup", warmup, "--json", "--speculative", check_exit=0)
        return json.loads(result.stdout.splitlines()[-1])["token_ids"]

    assert sample(0) == sample(2)


def test_ignored_options_warn_and_huge_draft_length_is_fine(tiny_7b):
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 6, "--temperature", 0.5,
                     "--max-step-draft", 10**12, "--warmup", 0, "--json", "--speculative", check_exit=0)
    assert result.stderr.startswith("warning: ") and result.stderr.count("\n") == 1, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["tokens_generated"] >= 1


@pytest.mark.parametrize("flag", [["--prompt", "-"], ["--interactive"]])
def test_closed_stdin_is_one_error(flag, tiny_7b):
    result = subprocess.run([sys.executable, str(ROOT / "speculative.py"), "--repo-id-or-model-path", str(tiny_7b),
                             *flag], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(0), timeout=300)  # as `<&-` starts it
    assert_clean_error(result, "reads stdin, which is closed")


@pytest.mark.parametrize("flag,words", [(["--prompt", "-"], "cannot read --prompt -: Input/output error"),
                                         (["--interactive"], "cannot read stdin: Input/output error")])
def test_stdin_that_fails_to_read_is_one_error(flag, words, tiny_7b, capsys, monkeypatch):
    class Failing(io.RawIOBase):  # as a terminal whose session has ended
        def readinto(self, buffer):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        def readable(self):
            return True

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Failing())))
    result = run_cli_in_process(capsys, "--repo-id-or-model-path", tiny_7b, "--warmup", 0, *flag)
    assert_clean_error(result, words)


@pytest.mark.parametrize("flag,words", [(["--prompt", "-"], "--prompt - holds more than 16 MiB"),
                                         (["--interactive"], "a line on stdin holds more than 16 MiB")])
def test_endless_stdin_is_one_error(flag, words, tiny_7b):
    with open("/dev/zero", "rb") as zeros:  # no end, and no line end: reading it whole would take all the memory
        result = subprocess.run([sys.executable, str(ROOT / "speculative.py"), "--repo-id-or-model-path", str(tiny_7b),
                                 "--warmup", "0", *flag], stdin=zeros, capture_output=True, text=True, timeout=300)
    assert_clean_error(result, words)


def test_closed_stdout_is_not_a_traceback(tiny_7b):
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "speculative.py"), "--repo-id-or-model-path", str(tiny_7b), "--prompt", "hi",
         "--n-predict", "8", "--warmup", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the answer is printed (as with `| head -c 0`)
    assert process.wait(timeout=300) == 141  # as a tool that SIGPIPE ends
    assert process.stderr.read() == b""


@pytest.mark.parametrize("device", ["cuda", "xpu"])
def test_unavailable_device(device, tiny_7b):
    backend = getattr(torch, device, None)
    if backend is not None and backend.is_available():
        pytest.skip(f"{device} is available here")
    assert_clean_error(run_cli("--repo-id-or-model-path", tiny_7b, "--device", device), device, "not available")


def test_model_larger_than_the_device_is_refused_and_out_of_memory_is_one_line(tiny_7b, monkeypatch, capsys):
    import speculative
    from selfspec import memory

    argv = ["--repo-id-or-model-path", str(tiny_7b), "--prompt", "hi", "--n-predict", "4", "--warmup", "0", "--speculative"]
    monkeypatch.setattr(memory, "device_memory_bytes", lambda device: 1000)  # as on a GPU of 1,000 bytes
    assert_clean_error(run_cli_in_process(capsys, *argv), "needs at least")
    monkeypatch.undo()

    def out_of_memory(*args, **kwargs):  # what torch raises when an allocation fails on a GPU
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.05 GiB "
            "is free. Including non-PyTorch memory, this process has 78.13 GiB memory in use. Of the allocated memory "
            "76.00 GiB is allocated by PyTorch.\n\nSee documentation for Memory Management")

    monkeypatch.setattr(speculative, "make_draft", out_of_memory)
    assert speculative.main(argv) == 2
    assert capsys.readouterr().err == (
        "error: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "1.05 GiB is free. Another process may be using the device; --no-speculative leaves out the INT4 draft.\n")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_out_of_memory_on_cuda_is_one_line(tiny_7b):
    # A fresh process allowed no GPU memory at all: the first weight copied to the GPU fails.
    code = ("import runpy, sys, torch; torch.cuda.set_per_process_memory_fraction(0.0); "
            f"sys.argv = ['speculative.py', '--repo-id-or-model-path', {str(tiny_7b)!r}, '--device', 'cuda']; "
            f"runpy.run_path({str(ROOT / 'speculative.py')!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert_clean_error(result, "CUDA out of memory", "Another process may be using the device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_nothing_imports_torch_compile_machinery(tiny_7b, device):
    # TorchDynamo and what it pulls in (sympy, ...) cost 1.7 s of start-up with bytecode caches, more without.
    code = (f"import runpy, sys; sys.argv = ['speculative.py', '--repo-id-or-model-path', {str(tiny_7b)!r}, "
            f"'--device', {device!r}, '--prompt', 'hi', '--n-predict', '8', '--speculative']\n"
            f"try:\n    runpy.run_path({str(ROOT / 'speculative.py')!r}, run_name='__main__')\n"
            "finally:\n    print('imported:', sorted(m for m in ('torch._dynamo', 'torch._inductor', 'sympy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "Tokens generated 8" in result.stdout, result.stderr
    assert result.stdout.splitlines()[-1] == "imported: []"


def test_ids_beyond_the_tokenizer_in_a_padded_vocabulary_decode_to_nothing(tiny_copy):
    # 4,096 rows for a tokenizer of about 500 pieces: random weights pick padded ids most of the time.
    folder = tiny_copy(vocab_size=4096)
    result = run_cli("--repo-id-or-model-path", folder, "--prompt", "hi", "--n-predict", 16, "--warmup", 0,
                     "--speculative", check_exit=0)
    assert "Tokens generated 16" in result.stdout
    record = json.loads(run_cli("--repo-id-or-model-path", folder, "--prompt", "hi", "--n-predict", 16, "--warmup", 0,
                                "--json", "--speculative", check_exit=0).stdout.splitlines()[-1])
    assert any(i >= 600 for i in record["token_ids"])  # the case this test is about did occur


def interrupt_when_reached(tmp_path, folder, patch: str):
    """Run the CLI with `patch` applied (it touches `marker` where the interrupt should land), send SIGINT
    once the marker exists, and return (status, stderr)."""
    import signal
    import time

    marker = tmp_path / "reached"
    code = (f"import pathlib, runpy, sys, time\nmarker = pathlib.Path({str(marker)!r})\n{patch}\n"
            f"sys.argv = ['speculative.py', '--repo-id-or-model-path', {str(folder)!r}, '--prompt', 'hi', "
            f"'--n-predict', '8', '--warmup', '0']\n"
            f"runpy.run_path({str(ROOT / 'speculative.py')!r}, run_name='__main__')\n")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), process.stderr.read() if process.poll() is not None else "marker never reached"
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=60), process.stderr.read().decode()


def test_ctrl_c_while_loading_and_while_generating(tiny_7b, tmp_path):
    loading = ("import selfspec.weights as c\nread = c._read_weight_file\n"
               "def slow(path):\n    marker.touch()\n    time.sleep(120)\n    yield from read(path)\n"
               "c._read_weight_file = slow")
    assert interrupt_when_reached(tmp_path, tiny_7b, loading) == (130, "interrupted\n")
    generating = ("import selfspec.generate as g\ngenerate = g.generate\n"
                  "def endless(*args, **kwargs):\n    marker.touch()\n    while True:\n        generate(*args, **kwargs)\n"
                  "g.generate = endless")
    (tmp_path / "reached").unlink()
    assert interrupt_when_reached(tmp_path, tiny_7b, generating) == (130, "interrupted\n")


def test_ctrl_c_while_importing_torch(tiny_7b, tmp_path):
    importing = ("import builtins\nreal_import = builtins.__import__\n"
                 "def slow(name, *args, **kwargs):\n    if name == 'torch':\n        marker.touch()\n"
                 "        time.sleep(120)\n    return real_import(name, *args, **kwargs)\n"
                 "builtins.__import__ = slow")
    assert interrupt_when_reached(tmp_path, tiny_7b, importing) == (130, "interrupted\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [["speculative.py", "--prompt", "hi", "--n-predict", "8", "--warmup", "0"],
                                     ["speculative.py", "--help"], ["speculative.py", "--version"],
                                     ["scripts/make_tiny_checkpoint.py", "--help"]])
def test_stdout_on_a_full_disk(command, tiny_7b):
    model = ["--repo-id-or-model-path", str(tiny_7b)] if command[0] == "speculative.py" else []
    with open("/dev/full", "w") as full:  # argparse dropped the error of --help: status 0, nothing said
        result = subprocess.run([sys.executable, str(ROOT / command[0]), *model, *command[1:]], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (1, "error: cannot write the output: No space left on device\n")


def json_records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_plain_decoding_is_the_default_on_cpu(tiny_7b):
    common = ["--repo-id-or-model-path", tiny_7b, "--prompt", "hi", "--n-predict", 8, "--warmup", 0]
    default, = json_records(run_cli(*common, "--json", check_exit=0))
    assert not default["speculative"] and default["drafted"] == 0
    forced, = json_records(run_cli(*common, "--json", "--speculative", check_exit=0))
    assert forced["speculative"] and forced["drafted"] > 0
    human = run_cli(*common, check_exit=0).stdout.splitlines()
    assert human[-2].startswith("First token latency") and human[-1].startswith("Decode speed")  # no draft lines
    assert_clean_error(run_cli(*common, "--speculative", "--no-speculative"), "--no-speculative", "--speculative")
    assert "plain decoding with the same engine (the default on CPU)" in " ".join(run_cli("--help").stdout.split())


def test_version():
    from selfspec import __version__

    result = run_cli("--version", check_exit=0)
    assert result.stdout == f"speculative.py {__version__}\n" and re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_prompt_from_a_file_or_stdin_equals_the_argument(tiny_7b, tmp_path):
    passage = "The river flows to the sea.\n北京是哪个国家的首都？ " * 3 + "Summarize."
    common = ["--repo-id-or-model-path", tiny_7b, "--n-predict", 8, "--dtype", "float32", "--warmup", 0, "--json"]
    from_argument, = json_records(run_cli(*common, "--prompt", passage, check_exit=0))
    (tmp_path / "prompt.txt").write_text(passage + "\n", encoding="utf-8")  # an editor's final newline is dropped
    from_file, = json_records(run_cli(*common, "--prompt-file", tmp_path / "prompt.txt", check_exit=0))
    from_stdin, = json_records(run_cli(*common, "--prompt", "-", stdin=passage + "\n", check_exit=0))
    assert from_argument["prompt_tokens"] == from_file["prompt_tokens"] == from_stdin["prompt_tokens"]
    assert from_argument["token_ids"] == from_file["token_ids"] == from_stdin["token_ids"]


def test_bad_prompt_files(tiny_7b, tmp_path):
    common = ["--repo-id-or-model-path", tiny_7b, "--n-predict", 4, "--warmup", 0]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    (tmp_path / "empty.txt").write_text("\n")
    assert_clean_error(run_cli(*common, "--prompt-file", tmp_path / "missing.txt"), "--prompt-file", "No such file")
    assert_clean_error(run_cli(*common, "--prompt-file", tmp_path), "--prompt-file", "directory")
    assert_clean_error(run_cli(*common, "--prompt-file", tmp_path / "latin1.txt"), "--prompt-file", "UTF-8")
    assert_clean_error(run_cli(*common, "--prompt-file", tmp_path / "empty.txt"), "--prompt-file", "empty")
    os.mkfifo(tmp_path / "fifo")  # nobody writes to it: opening it as usual would wait for ever
    assert_clean_error(run_cli(*common, "--prompt-file", tmp_path / "fifo", timeout=60), "--prompt-file", "empty")
    assert_clean_error(run_cli(*common, "--prompt", "-", stdin=""), "--prompt -", "empty")
    assert_clean_error(run_cli(*common, "--prompt", "hi", "--prompt-file", tmp_path / "latin1.txt"), "not allowed")
    assert_clean_error(run_cli(*common, "--interactive", "--prompt", "-"), "--interactive", "stdin")
    assert_clean_error(run_cli(*common, "--interactive", "--raw-prompt"), "--interactive", "--raw-prompt")


STATS_LINE = re.compile(r"(Tokens generated|E2E Generation time|First token latency|Decode speed|Draft tokens proposed"
                        r"|Draft tokens accepted|Acceptance rate|Verification steps|Tokens per verification step"
                        r"|Lookup tokens proposed|Lookup tokens accepted|Lookup verification steps"
                        r"|INT4 draft tokens proposed|INT4 draft tokens accepted|Second choices verified"
                        r"|Second choices accepted) ")


@pytest.mark.parametrize("options", [[], ["--speculative", "--do-sample", "--seed", 5, "--repetition-penalty", 1.05]], ids=["plain-greedy",
                                                                                              "speculative-sampled"])
def test_interactive_chat_streams_each_answer_and_its_statistics(tiny_7b, options):
    result = run_cli("--repo-id-or-model-path", tiny_7b, "--interactive", "--n-predict", 12, "--warmup", 0, *options,
                     stdin="Hello!\nTell me about the river.\n北京是哪个国家的首都？\n", check_exit=0)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert sum(line.startswith("Tokens generated ") for line in lines) == 3
    assert sum(line.startswith("Decode speed ") for line in lines) == 3 and STATS_LINE.match(lines[-1])
    assert sum(line.startswith("Acceptance rate ") for line in lines) == (3 if options else 0)
    answers = [line for line in lines if not STATS_LINE.match(line)]
    assert len(answers) >= 3  # each answer streamed before its statistics (an answer may hold line breaks)


def test_interactive_chat_keeps_the_conversation_in_the_cache(tiny_7b, monkeypatch, capsys):
    """In process, to see what each turn prefills: only what the cache lacks; the first message may come from
    --prompt; an empty line ends the chat."""
    import io

    import speculative

    turns = []

    def recording_generate(model, input_ids, max_new_tokens, cached_tokens=0, **options):
        output_ids, stats = generate(model, input_ids, max_new_tokens, cached_tokens=cached_tokens, **options)
        turns.append((list(input_ids), cached_tokens, output_ids))
        return output_ids, stats

    generate = speculative.generate
    monkeypatch.setattr(speculative, "generate", recording_generate)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("And the sea?\nWhy?\n\nnever read\n".encode())))
    argv = ["--repo-id-or-model-path", str(tiny_7b), "--interactive", "--prompt", "Tell me about the river.",
            "--n-predict", "16", "--warmup", "0", "--json", "--speculative"]
    assert speculative.main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == len(records) == 3
    for (input_ids, cached, output_ids), record in zip(turns, records):
        assert record["token_ids"] == output_ids and record["prompt_tokens"] == len(input_ids)
    assert turns[0][1] == 0
    for (earlier_ids, _, _), (input_ids, cached, _) in zip(turns, turns[1:]):
        assert input_ids[: len(earlier_ids)] == earlier_ids  # the conversation grows at its end
        assert len(earlier_ids) <= cached < len(input_ids)  # the earlier turns are not prefilled again


def test_interactive_chat_drops_the_oldest_turns_when_the_context_fills(tiny_7b, monkeypatch, capsys):
    import io

    import speculative

    cached_by_turn = []

    def recording_generate(model, input_ids, max_new_tokens, cached_tokens=0, **options):
        assert len(input_ids) + max_new_tokens <= 256
        cached_by_turn.append(cached_tokens)
        return generate(model, input_ids, max_new_tokens, cached_tokens=cached_tokens, **options)

    generate = speculative.generate
    monkeypatch.setattr(speculative, "generate", recording_generate)
    messages = "".join(f"{turn}: tell me everything about the long river that flows to the sea, again and again.\n"
                       for turn in range(4))  # about 70 tokens each: two turns and their answers fill the context
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(messages.encode())))
    argv = ["--repo-id-or-model-path", str(tiny_7b), "--interactive", "--n-predict", "40", "--warmup", "0", "--json"]
    assert speculative.main(argv) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4
    assert "warning: dropped the 1 oldest turn(s) of the conversation" in err
    assert 0 < cached_by_turn[1] and cached_by_turn[-1] < cached_by_turn[1]  # after a drop, the cache is refilled


def test_loading_shows_progress_in_bytes_with_a_total(tiny_7b_sharded, monkeypatch, capsys):
    """A real checkpoint (over PROGRESS_MIN_BYTES) gets one bar over all its shards, in bytes; here a tiny one
    is made to count as real."""
    from tqdm import tqdm

    from selfspec import weights

    monkeypatch.setattr(weights, "PROGRESS_MIN_BYTES", 0)
    files = weights.find_weight_files(tiny_7b_sharded)
    weights.load_model(tiny_7b_sharded, torch.float32, "cpu")
    final = capsys.readouterr().err.split("\r")[-1]
    total = tqdm.format_sizeof(sum(f.stat().st_size for f in files), divisor=1024)
    assert len(files) == 3 and final.startswith("loading weights: 100%") and f" {total}/{total} " in final, final
    assert "B/s]" in final  # bytes per second


def test_max_step_draft_beyond_the_cuda_verify_pass_is_refused(capsys, monkeypatch, tiny_7b):
    """On CUDA a verify pass takes at most accel.MAX_VERIFY_TOKENS tokens: a longer --max-step-draft is refused
    before anything loads, never silently slower (checked without a GPU: only the device choice is patched)."""
    import speculative
    from selfspec import accel

    monkeypatch.setattr(speculative, "pick_device", lambda name: torch.device("cuda"))
    too_many = accel.MAX_VERIFY_TOKENS
    result = run_cli_in_process(capsys, "--repo-id-or-model-path", tiny_7b, "--max-step-draft", too_many)
    assert_clean_error(result, "--max-step-draft", str(too_many), str(too_many - 1))
