"""--backend ipex-llm and the XPU error messages, without Intel hardware.

IPEX-LLM itself cannot run here (no Intel GPU, no Intel package index), so these tests check the wiring
against a stand-in `ipex_llm` package that records what it is asked: the exact from_pretrained and
generate arguments, the call order, and that the printed lines come from the model's own counters.
Whether real IPEX-LLM then behaves as documented is not tested by this project.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_clean_error, run_cli, run_cli_in_process

import speculative
from backends import ipex_llm as ipex_llm_backend
from selfspec.errors import InputError

ROOT = Path(__file__).resolve().parents[1]

FAKE_TRANSFORMERS = textwrap.dedent('''
    """Stand-in for ipex_llm.transformers: records every call in `calls`."""
    import os
    import time

    import torch

    calls = []


    class FakeModel:
        device = torch.device("cpu")  # the real one says xpu after .to("xpu"); CPU torch has no xpu tensors

        def to(self, device):
            calls.append(("to", device))
            return self

        def generate(self, input_ids, **kwargs):
            calls.append(("generate", input_ids.tolist(), kwargs))
            time.sleep(0.05)  # lets the test see which calls the clock covers
            # Deliberately not the number of returned tokens: the printed count must come from here.
            self.n_token_generated = 7
            self.first_token_time = 0.0123
            if not os.environ.get("FAKE_IPEX_LLM_NO_STATS"):
                self.n_drafted, self.n_matched = 10, 6
            new = torch.arange(100, 100 + kwargs["max_new_tokens"]).unsqueeze(0)
            return torch.cat([input_ids, new], dim=1)  # IPEX-LLM returns prompt + new tokens


    class AutoModelForCausalLM:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            calls.append(("from_pretrained", args, kwargs))
            return FakeModel()
''')


def write_fake_ipex_llm(folder: Path) -> Path:
    (folder / "ipex_llm" / "transformers").mkdir(parents=True)
    (folder / "ipex_llm" / "__init__.py").write_text('"""Stand-in for IPEX-LLM (tests only)."""\n')
    (folder / "ipex_llm" / "transformers" / "__init__.py").write_text(FAKE_TRANSFORMERS)
    return folder


class FakeTokenizer:
    def __init__(self):
        self.texts = []

    def __call__(self, text, return_tensors):
        assert return_tensors == "pt"
        self.texts.append(text)
        return SimpleNamespace(input_ids=torch.tensor([[1, 2, 3]]))

    def decode(self, ids, skip_special_tokens):
        assert skip_special_tokens
        return " ".join(map(str, ids))


@pytest.fixture
def fake_ipex(tmp_path, monkeypatch):
    """The stand-in package importable in this process, an XPU that "exists", a recorded synchronize."""
    monkeypatch.syspath_prepend(str(write_fake_ipex_llm(tmp_path / "fake")))
    tokenizer = FakeTokenizer()
    tokenizer_paths = []
    monkeypatch.setattr(ipex_llm_backend, "load_tokenizer", lambda path: tokenizer_paths.append(path) or tokenizer)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: True)
    import ipex_llm.transformers as fake

    monkeypatch.setattr(ipex_llm_backend, "synchronize", lambda: fake.calls.append(("synchronize",)))
    yield SimpleNamespace(calls=fake.calls, tokenizer=tokenizer, tokenizer_paths=tokenizer_paths,
                          checkpoint=str(tmp_path / "ckpt"))
    for name in [m for m in sys.modules if m == "ipex_llm" or m.startswith("ipex_llm.")]:
        del sys.modules[name]  # the next test writes a fresh stand-in


def run_main(capsys, *args):
    result = run_cli_in_process(capsys, "--backend", "ipex-llm", *args)
    return result.returncode, result.stdout, result.stderr


def test_wiring_matches_the_ipex_llm_example(fake_ipex, capsys):
    code, out, err = run_main(capsys, "--repo-id-or-model-path", fake_ipex.checkpoint, "--prompt", "你好",
                              "--n-predict", 16, "--th-stop-draft", 0.5)
    assert (code, err) == (0, "")
    calls = fake_ipex.calls
    assert [c[0] for c in calls] == ["from_pretrained", "to", "generate", "generate", "synchronize"]
    assert calls[0][1] == (fake_ipex.checkpoint,)
    assert calls[0][2] == dict(optimize_model=True, torch_dtype=torch.float16, load_in_low_bit="fp16",
                               speculative=True, trust_remote_code=True, use_cache=True)
    assert calls[1][1] == "xpu"
    for _, prompt_ids, kwargs in calls[2:4]:  # one warm-up, then the timed run, identical
        assert prompt_ids == [[1, 2, 3]]
        assert kwargs == {"max_new_tokens": 16, "th_stop_draft": 0.5, "do_sample": False}
    assert fake_ipex.tokenizer_paths == [fake_ipex.checkpoint]
    assert fake_ipex.tokenizer.texts == ["<reserved_106> 你好 <reserved_107>"]

    lines = out.splitlines()
    assert lines[-4] == " ".join(str(t) for t in range(100, 116))  # only the new tokens, decoded
    assert lines[-3] == "Tokens generated 7"  # from model.n_token_generated, not the 16 returned
    assert re.fullmatch(r"E2E Generation time \d+\.\d{4}s", lines[-2]), lines[-2]
    assert lines[-1] == "First token latency 0.0123s"  # from model.first_token_time


@pytest.mark.parametrize("warmup", [0, 2])
def test_warmup_count_and_what_is_timed(warmup, fake_ipex, capsys):
    code, out, _ = run_main(capsys, "--repo-id-or-model-path", fake_ipex.checkpoint, "--warmup", warmup, "--json")
    assert code == 0
    assert [c[0] for c in fake_ipex.calls].count("generate") == warmup + 1
    # Each fake generate sleeps 0.05 s: the clock covers the timed one and none of the warm-ups.
    assert 0.05 <= json.loads(out.splitlines()[-1])["e2e_time_s"] < 0.15


@pytest.mark.parametrize("stats", [True, False])
def test_json_record(stats, fake_ipex, capsys, monkeypatch):
    if not stats:
        monkeypatch.setenv("FAKE_IPEX_LLM_NO_STATS", "1")
    code, out, _ = run_main(capsys, "--repo-id-or-model-path", fake_ipex.checkpoint, "--n-predict", 5, "--json")
    assert code == 0
    record = json.loads(out.splitlines()[-1])
    assert record["text"] == "100 101 102 103 104"
    assert record["token_ids"] == [100, 101, 102, 103, 104]
    assert record["tokens_generated"] == 7 and record["first_token_latency_s"] == 0.0123
    assert record["prompt_tokens"] == 3 and record["e2e_time_s"] > 0
    assert record["backend"] == "ipex-llm" and record["device"] == "xpu" and record["dtype"] == "float16"
    if stats:
        assert (record["drafted"], record["accepted"], record["acceptance_rate"]) == (10, 6, 0.6)
    else:  # a model without IPEX-LLM's counters: unknown, not zero
        assert record["drafted"] is None and record["accepted"] is None and record["acceptance_rate"] is None


@pytest.mark.parametrize("args,word", [
    (["--device", "cpu"], "--device xpu"),
    (["--device", "cuda"], "--device xpu"),
    (["--do-sample"], "--do-sample"),
    (["--no-speculative"], "--no-speculative"),
    (["--dtype", "bfloat16"], "--dtype"),
    (["--max-step-draft", 4], "--max-step-draft"),
    (["--repetition-penalty", 1.05], "--repetition-penalty"),
    (["--no-second-choices"], "--second-choices"),
    (["--lookup-after-draft"], "--lookup-after-draft"),
])
def test_refused_before_ipex_llm_is_needed(args, word, capsys):
    """Checked first, so the answer is the same whether or not ipex_llm is installed."""
    result = run_cli_in_process(capsys, "--backend", "ipex-llm", *args)
    assert_clean_error(result, word, "ipex-llm")
    assert "requirements-xpu.txt" not in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("ipex_llm") is not None, reason="ipex_llm is installed here")
def test_missing_ipex_llm():
    assert_clean_error(run_cli("--backend", "ipex-llm"), "ipex_llm", "pip install -r requirements-xpu.txt")


@pytest.mark.skipif(torch.xpu.is_available(), reason="an XPU is available here")
def test_ipex_llm_without_an_xpu_device(tmp_path):
    result = run_cli("--backend", "ipex-llm", pythonpath=write_fake_ipex_llm(tmp_path))
    assert_clean_error(result, "no XPU device", "setvars.sh")


def test_native_is_the_default_and_never_loads_the_backend(tiny_7b):
    assert speculative.parse_args([]).backend == "native"
    script = ("import sys, speculative; code = speculative.main(sys.argv[1:]); "
              "print(sorted(m for m in sys.modules if 'ipex_llm' in m)); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "--repo-id-or-model-path", str(tiny_7b),
                             "--prompt", "hi", "--n-predict", "4", "--warmup", "0", "--device", "cpu", "--json"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_load_tokenizer_runs_the_checkpoint_tokenizer(monkeypatch):
    import transformers

    seen = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *args, **kwargs: seen.append((args, kwargs)) or "tokenizer")
    assert ipex_llm_backend.load_tokenizer("ckpt") == "tokenizer"
    assert seen == [(("ckpt",), {"trust_remote_code": True})]


def test_broken_baichuan_tokenizer_gets_a_hint(monkeypatch):
    import transformers

    def broken(*args, **kwargs):  # what tokenization_baichuan.py raises on transformers >= 4.34
        raise AttributeError("'BaichuanTokenizer' object has no attribute 'sp_model'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(InputError, match="requirements-xpu.txt"):
        ipex_llm_backend.load_tokenizer("ckpt")


@pytest.mark.parametrize("compiled,words", [
    (False, ["has no XPU support", "download.pytorch.org/whl/xpu"]),
    (True, ["finds no Intel GPU", "driver"]),
])
def test_xpu_unavailable_says_which_part_is_missing(compiled, words, monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: compiled)
    with pytest.raises(InputError) as error:
        speculative.pick_device("xpu")
    message = str(error.value)
    assert "'xpu' is not available" in message and "\n" not in message
    for word in words:
        assert word in message
