"""Crafted checkpoint folders, as an attacker would write them: the loader reads no file outside the folder,
allocates nothing a config merely asks for, runs a chat template only within bounds, and says what is wrong
in one CheckpointError (one `error:` line in the CLI)."""
import base64
import io
import json
import os
import re
import resource
import shutil
import signal
import site
import sys
import sysconfig
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import sentencepiece
import tokenizers
import torch
from make_tiny_checkpoint import write_tiny_checkpoint
from tiny_llama import write_tiny_llama

from selfspec import checkpoint, folder as folder_files, memory, tokenizer as tokenizers_mod, weights
from selfspec.checkpoint import open_checkpoint
from selfspec.errors import CheckpointError, InputError
from selfspec.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARD = "model-00001-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


# --- what the loader opens -------------------------------------------------------------------------

_opened: list | None = None  # paths opened while recording; None: not recording


def _audit(event, args):
    if event == "open" and _opened is not None:  # open(), io.open, os.open: every Python-level open
        _opened.append(args[0])


sys.addaudithook(_audit)  # cannot be removed; costs one comparison per event when not recording


@contextmanager
def recording_opens(monkeypatch):
    """Record every path opened, by Python code and by the native readers the loader calls (safetensors,
    SentencePiece, tokenizers open files themselves, out of sight of audit hooks)."""
    global _opened
    opened = []

    def recorded(open_native, path_of):
        def wrapper(*args, **kwargs):
            opened.append(path_of(*args, **kwargs))
            return open_native(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(weights, "safe_open", recorded(weights.safe_open, lambda path, *a, **k: path))
    processor = recorded(sentencepiece.SentencePieceProcessor, lambda *a, model_file=None, **k: model_file)
    monkeypatch.setattr(tokenizers_mod, "spm", types.SimpleNamespace(SentencePieceProcessor=processor))
    from_file = recorded(tokenizers.Tokenizer.from_file, lambda path: path)
    monkeypatch.setattr(tokenizers, "Tokenizer", types.SimpleNamespace(from_file=from_file))
    _opened = opened
    try:
        yield opened
    finally:
        _opened = None


def library_dirs() -> list[Path]:
    """Where Python itself may open files while the loader runs (lazy imports of modules)."""
    paths = sysconfig.get_paths()
    dirs = {paths[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")} | {*site.getsitepackages(), str(ROOT)}
    return [Path(d).resolve() for d in dirs if Path(d).is_dir()]


def assert_opened_only_inside(opened, folder: Path, reads_expected=False):
    inside, libraries = folder.resolve(), library_dirs()
    assert not any(inside.is_relative_to(d) for d in libraries)  # else the check below would prove nothing
    paths = [Path(os.fsdecode(p)).resolve() for p in opened if not isinstance(p, int)]  # int: os.fdopen
    if reads_expected:
        assert any(p.is_relative_to(inside) for p in paths), opened  # the recording works: this test can fail
    for real in paths:
        if real.is_relative_to(inside) or real == Path("/proc/self/statm").resolve():  # the memory bounds' reading
            continue
        assert any(real.is_relative_to(d) for d in libraries), f"opened {real} outside {folder}"


def load_everything(folder: Path):
    """What the CLI does with a folder, short of generating: validate, tokenizer, weights, chat prompt."""
    ckpt = open_checkpoint(str(folder))
    tokenizer = ckpt.tokenizer
    load_model(folder, torch.float32, "cpu")
    return ckpt.chat_ids(tokenizer, "hi", max_input_tokens=100)


@contextmanager
def no_hang(seconds=60):
    """A fifo opened by mistake blocks for ever: fail instead."""
    def hung(signum, frame):
        raise AssertionError(f"still running after {seconds} s (blocked on a fifo?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- crafted folders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A valid checkpoint that is not the one being loaded: what escaping paths point at."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("outside") / "ckpt", fmt="sharded-safetensors")


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    folder = write_tiny_llama(tmp_path_factory.mktemp("llama") / "ckpt")
    # The chat template in its own file (newer transformers' layout), so that a link can point it elsewhere.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "chat_template.jinja").write_text(config.pop("chat_template"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def set_weight_map(folder: Path, name: str):
    """Point the first shard's tensors at `name`."""
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: (name if v == SHARD else v) for k, v in index["weight_map"].items()}
    (folder / INDEX).write_text(json.dumps(index))


def link(folder: Path, name: str, target):
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(target)


def crafted(kind: str, tmp_path: Path, outside: Path) -> Path:
    sharded = kind.startswith("index") or kind == "subfolder link out"
    folder = write_tiny_checkpoint(tmp_path / "ckpt", fmt="sharded-safetensors" if sharded else
                                   "bin" if kind == "bin link out" else "safetensors")
    if kind == "index ../ shard":  # the shard exists only in a neighbouring folder, reached with ..
        (folder / SHARD).unlink()
        set_weight_map(folder, f"../../{outside.parent.name}/ckpt/{SHARD}")
        assert (folder / f"../../{outside.parent.name}/ckpt/{SHARD}").is_file()
    elif kind == "index absolute path":
        set_weight_map(folder, str(outside / SHARD))
    elif kind == "index /etc/passwd":
        set_weight_map(folder, "../" * 20 + "etc/passwd")
    elif kind == "index /dev/zero":
        set_weight_map(folder, "/dev/zero")
    elif kind == "index NUL byte":
        set_weight_map(folder, "model\x00.safetensors")
    elif kind == "index directory":
        (folder / "sub.safetensors").mkdir()
        set_weight_map(folder, "sub.safetensors")
    elif kind == "index fifo":
        os.mkfifo(folder / "fifo.safetensors")
        set_weight_map(folder, "fifo.safetensors")
    elif kind == "index empty name":  # the folder itself
        set_weight_map(folder, "")
    elif kind == "index config.json":
        set_weight_map(folder, "config.json")
    elif kind == "index missing/../shard":  # resolves lexically to the shard, but cannot be opened
        set_weight_map(folder, f"missing/../{SHARD}")
    elif kind == "index link out":
        link(folder, INDEX, outside / INDEX)
    elif kind == "subfolder link out":
        (folder / "sub").symlink_to(outside)
        set_weight_map(folder, f"sub/{SHARD}")
    elif kind == "weights link out":
        link(folder, "model.safetensors", outside / SHARD)
    elif kind == "bin link out":
        shutil.copy(folder / "pytorch_model.bin", tmp_path / "elsewhere.bin")
        link(folder, "pytorch_model.bin", tmp_path / "elsewhere.bin")
    elif kind == "weights link to /dev/zero":
        link(folder, "model.safetensors", "/dev/zero")
    elif kind == "weights link loop":
        (folder / "model.safetensors").unlink()
        (folder / "a").symlink_to(folder / "model.safetensors")
        (folder / "model.safetensors").symlink_to(folder / "a")
    elif kind == "weights fifo":
        (folder / "model.safetensors").unlink()
        os.mkfifo(folder / "model.safetensors")
    elif kind == "weights directory":
        (folder / "model.safetensors").unlink()
        (folder / "model.safetensors").mkdir()
    elif kind == "config fifo":
        (folder / "config.json").unlink()
        os.mkfifo(folder / "config.json")
    elif kind in ("config link out", "generation_config link out", "tokenizer link out"):
        name = {"config": "config.json", "generation_config": "generation_config.json",
                "tokenizer": "tokenizer.model"}[kind.split()[0]]
        link(folder, name, outside / name)
    else:
        raise ValueError(kind)
    return folder


CRAFTED = {  # kind -> words the error says
    "index ../ shard": "outside the checkpoint folder",
    "index absolute path": "outside the checkpoint folder",
    "index /etc/passwd": "which is not a .safetensors file",
    "index /dev/zero": "which is not a .safetensors file",
    "index NUL byte": "cannot be opened",
    "index directory": "not a regular file",
    "index fifo": "not a regular file",
    "index empty name": "names '', which is not a .safetensors file",
    "index config.json": "names 'config.json', which is not a .safetensors file",
    "index missing/../shard": "lists missing weight files: 'missing/../",
    "index link out": "outside the checkpoint folder",
    "subfolder link out": "outside the checkpoint folder",
    "weights link out": "outside the checkpoint folder",
    "bin link out": "outside the checkpoint folder",
    "weights link to /dev/zero": "outside the checkpoint folder",
    "weights link loop": "cannot be opened",
    "weights fifo": "not a regular file",
    "weights directory": "not a regular file",
    "config fifo": "not a regular file",
    "config link out": "outside the checkpoint folder",
    "generation_config link out": "outside the checkpoint folder",
    "tokenizer link out": "outside the checkpoint folder",
}


@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_folders_are_refused_without_opening_anything_outside(kind, tmp_path, outside, monkeypatch):
    folder = crafted(kind, tmp_path, outside)
    with no_hang(), recording_opens(monkeypatch) as opened, pytest.raises(CheckpointError) as info:
        load_everything(folder)
    assert CRAFTED[kind] in str(info.value) and "\n" not in str(info.value), info.value
    assert_opened_only_inside(opened, folder)


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"])
def test_llama_files_linked_out_are_refused(name, llama, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    shutil.copytree(llama, folder)
    link(folder, name, llama / name)  # the same file, but outside this folder
    with recording_opens(monkeypatch) as opened, pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        load_everything(folder)
    assert_opened_only_inside(opened, folder)


def denied_for(name: str, function):
    """`function`, failing with EACCES for a path whose last part is `name` (as for a user other than root)."""
    def denied(path, *args, **kwargs):
        if not isinstance(path, int) and Path(path).name == name:  # an int: a file descriptor, open already
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return function(path, *args, **kwargs)
    return denied


def test_a_file_out_of_reach_is_not_called_missing(tiny_copy, monkeypatch):
    folder = tiny_copy()
    monkeypatch.setattr(folder_files.os, "stat", denied_for("config.json", os.stat))  # a folder without search permission
    with pytest.raises(CheckpointError, match="config.json cannot be opened: Permission denied"):
        open_checkpoint(str(folder))


@pytest.mark.parametrize("name", ["config.json", "generation_config.json", "tokenizer.model", "model.safetensors"])
def test_an_unreadable_file_is_called_unreadable(name, tiny_copy, monkeypatch):
    """Not "No such file" (safetensors), "not valid JSON" or "not a SentencePiece model" (the readers' words)."""
    folder = tiny_copy()
    monkeypatch.setattr(folder_files, "open", denied_for(name, open), raising=False)  # as after chmod 000
    with pytest.raises(CheckpointError, match=rf"{name} cannot be read: Permission denied"):
        load_everything(folder)


def test_links_inside_the_folder_are_followed(tmp_path, monkeypatch):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", fmt="sharded-safetensors")
    (folder / "weights").mkdir()
    (folder / SHARD).rename(folder / "weights" / SHARD)
    (folder / SHARD).symlink_to(Path("weights") / SHARD)
    with recording_opens(monkeypatch) as opened:
        load_everything(folder)
    assert_opened_only_inside(opened, folder, reads_expected=True)
    assert str(folder / SHARD) in map(str, opened)


def test_the_recording_sees_what_is_opened_outside(outside, tmp_path, monkeypatch):
    with recording_opens(monkeypatch) as opened:
        with weights.safe_open(str(outside / SHARD), framework="pt"):  # native: seen through the wrapper
            pass
        with open(outside / "config.json"):  # Python: seen through the audit hook
            pass
    assert [Path(p) for p in opened] == [outside / SHARD, outside / "config.json"]
    with pytest.raises(AssertionError, match="outside"):
        assert_opened_only_inside(opened, tmp_path)


def hub_snapshot(cache: Path, source: Path, repo="models--org--tiny", blob_repo=None) -> Path:
    """The Hugging Face cache layout: snapshots/REV/NAME -> ../../blobs/HASH (of `blob_repo`, default the same)."""
    snapshot = cache / repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    blobs = cache / (blob_repo or repo) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(sorted(source.iterdir())):
        shutil.copy(file, blobs / f"{i:040x}")
        (snapshot / file.name).symlink_to(os.path.relpath(blobs / f"{i:040x}", snapshot))
    return snapshot


def test_hub_cache_snapshots_read_their_own_blobs(tiny_7b, tmp_path, monkeypatch):
    snapshot = hub_snapshot(tmp_path / "hub", tiny_7b)
    with recording_opens(monkeypatch) as opened:
        load_everything(snapshot)
    assert_opened_only_inside(opened, tmp_path / "hub" / "models--org--tiny", reads_expected=True)
    # A snapshot whose links lead into another model's cache entry is refused.
    other = hub_snapshot(tmp_path / "hub", tiny_7b, repo="models--evil--x", blob_repo="models--org--other")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        open_checkpoint(str(other))


# --- sizes a config asks for -----------------------------------------------------------------------


@pytest.fixture
def never_reads_weights(monkeypatch):
    def refuse(path):
        raise AssertionError(f"weights read from {path}")

    monkeypatch.setattr(weights, "_read_weight_file", refuse)


@pytest.mark.parametrize("change,words", [
    ({"num_hidden_layers": 10**9}, "num_hidden_layers 1000000000 is beyond any real model"),
    ({"hidden_size": 10**9}, "hidden_size 1000000000 is beyond"),
    ({"vocab_size": 10**12}, "vocab_size 1000000000000 is beyond"),
    ({"intermediate_size": 2**40}, "intermediate_size"),
    ({"num_attention_heads": 2**20, "hidden_size": 2**20}, "beyond"),
    ({"max_position_embeddings": 10**12}, "max_position_embeddings 1000000000000 is beyond"),
    ({"num_hidden_layers": -1}, "num_hidden_layers must be a positive integer, got -1"),
    ({"num_hidden_layers": True}, "num_hidden_layers must be a positive integer, got True"),
    ({"num_hidden_layers": 2.0}, "num_hidden_layers must be a positive integer, got 2.0"),
    ({"hidden_size": "64"}, "hidden_size must be a positive integer, got '64'"),
    ({"hidden_size": "x" * 10**5}, "hidden_size must be a positive integer, got 'xxx"),
    ({"hidden_size": 12, "num_attention_heads": 4}, "RoPE needs an even head size"),
    ({"num_hidden_layers": 1000}, "num_hidden_layers 1000, but the weights hold 2 layers"),
    ({"vocab_size": 4096}, "vocab_size 4096 and hidden_size 64 do not match model.embed_tokens.weight of shape"),
    ({"intermediate_size": 160}, "mlp.down_proj.weight has shape (64, 128), config.json implies (64, 160)"),
    ({"rope_theta": 10**400}, "rope_theta must be a positive number, got 1000"),  # too large for a float
    ({"rms_norm_eps": -10**400}, "rms_norm_eps must be a positive number"),
    ({"rope_theta": 1e-300}, "rope_theta must be at least 1, got 1e-300"),  # its RoPE frequencies overflow to NaN
])
def test_config_sizes_are_checked_before_anything_is_allocated(change, words, tiny_copy, never_reads_weights):
    folder = tiny_copy()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError) as info:
        open_checkpoint(str(folder))
    assert words in str(info.value) and len(str(info.value)) < 300, info.value


def test_odd_layer_widths_are_refused_for_the_draft_only(tiny_copy):
    folder = tiny_copy(intermediate_size=129)
    with pytest.raises(CheckpointError, match="the INT4 draft packs two weights a byte, so its layers need even "
                                              "widths, not intermediate_size 129; --no-speculative"):
        checkpoint.load_checkpoint(str(folder), torch.float32, "cpu", draft_group_size=64)
    checkpoint.load_checkpoint(str(folder), torch.float32, "cpu")  # plain decoding needs no INT4 groups


def test_a_kv_cache_larger_than_the_machine_is_refused_before_reading_weights(tiny_copy, monkeypatch):
    folder = tiny_copy(max_position_embeddings=1 << 20)  # 1 GiB of float32 cache for the tiny model
    sysconf = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (512 << 20) // 4096}  # as on a machine of 512 MiB
    monkeypatch.setattr(memory.os, "sysconf", sysconf.__getitem__)
    monkeypatch.setattr(weights, "_read_weight_file", None)
    with pytest.raises(CheckpointError, match=r"the KV cache and the RoPE tables for a context of 1,048,576 tokens "
                                              r"need 1.2 GiB, more than this machine's 0.5 GiB"):
        checkpoint.load_checkpoint(str(folder), torch.float32, "cpu")


def test_rope_tables_larger_than_the_machine_are_refused_before_reading_weights(tiny_copy, monkeypatch):
    # One layer, one head of 384, float32: a cache of 6 GiB, and RoPE tables of 6 GiB built through as much again
    folder = tiny_copy(max_position_embeddings=1 << 21, hidden_size=384, num_attention_heads=1, num_hidden_layers=1,
                       intermediate_size=64)
    sysconf = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": (8 << 30) // 4096}  # as on a machine of 8 GiB
    monkeypatch.setattr(memory.os, "sysconf", sysconf.__getitem__)
    monkeypatch.setattr(weights, "_read_weight_file", None)
    with pytest.raises(CheckpointError, match=r"the KV cache and the RoPE tables .* need 18.0 GiB"):
        checkpoint.load_checkpoint(str(folder), torch.float32, "cpu")


@pytest.mark.parametrize("text,words", [
    ("[" * 100_000 + "]" * 100_000, "nested more than 32 levels"),
    (json.dumps({"a": json.loads("[" * 40 + "]" * 40)}), "nested more than 32 levels"),
    ("[1, 2]", "not a JSON object"),
    ('"config"', "not a JSON object"),
    ("{" * 3, "not valid JSON"),
    ('{"vocab_size": 1' + "0" * 5000 + "}", "not valid JSON: Exceeds the limit"),  # more digits than Python reads
])
def test_json_that_is_not_a_config(text, words, tiny_copy):
    folder = tiny_copy()
    for name in ("config.json", "generation_config.json"):
        original = (folder / name).read_text()
        (folder / name).write_text(text)
        with pytest.raises(CheckpointError, match=words):
            open_checkpoint(str(folder))
        (folder / name).write_text(original)


def test_json_larger_than_the_bound_is_not_read_whole(tiny_copy, monkeypatch):
    folder = tiny_copy()
    monkeypatch.setattr(folder_files, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr(folder_files.read_json, "__defaults__", (100,))
    with pytest.raises(CheckpointError, match="larger than"):
        open_checkpoint(str(folder))


@pytest.mark.parametrize("data", [
    b"hello, this is a text file\n" * 20,
    b"",
    b"\x80\x02]q\x00(K\x01e.",  # a pickle of a list, not a dict
    b"\x80\x02q\x01q\x02.",  # opcodes that pop from an empty stack
    b"\x80\x02h\x07.",  # a memo key that was never stored
    b"PK\x03\x04" + bytes(200),  # a zip header and nothing behind it
])
def test_bin_files_that_are_not_checkpoints(data, tiny_copy):
    folder = tiny_copy(fmt="bin")
    (folder / "pytorch_model.bin").write_bytes(data)
    with pytest.raises(CheckpointError, match="pytorch_model.bin") as info:
        load_model(folder, torch.float32, "cpu")
    assert "\n" not in str(info.value)


def test_bin_holding_something_other_than_tensors(tiny_copy):
    folder = tiny_copy(fmt="bin")
    torch.save({"model.norm.weight": 3}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="'model.norm.weight' is a int, not a tensor"):
        load_model(folder, torch.float32, "cpu")


@pytest.mark.parametrize("cut", [8, 100, -10])
def test_truncated_safetensors_headers(cut, tiny_copy, never_reads_weights):
    folder = tiny_copy()
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        open_checkpoint(str(folder))


# --- chat templates -------------------------------------------------------------------------------


HOSTILE_TEMPLATES = {  # template -> what the error says
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}": "runs longer than 1 s",
    "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}": "writes more than",
    "{{ 'x' * 10**10 }}": "repeats a sequence",
    "{{ messages * 10**9 }}": "repeats a sequence",
    "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}": "integer of more",
    "{{ 7 ** (10**9) }}": "integer of more",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}": "MiB of memory",
    "{{ 'x'.center(10**10) }}": "MiB of memory",
    "{{ 'x'|center(3 * 10**9) }}": "MiB of memory",
    "{{ messages|tojson(indent=10**9) }}": "MiB of memory",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}": "recurses too deeply",
    "{{" + "(" * 5000 + "1" + ")" * 5000 + "}}": "recurses too deeply",
    "{{ 1 + 'a' }}": "failed: TypeError",
    "{{ ''.__class__.__mro__ }}": "unsafe",
}


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_chat_templates_are_stopped(template, llama):
    tokenizer = open_checkpoint(str(llama)).tokenizer
    tokenizer.chat_template = template
    limits, handler = resource.getrlimit(resource.RLIMIT_AS), signal.getsignal(signal.SIGALRM)
    with pytest.raises(InputError, match=HOSTILE_TEMPLATES[template]):
        tokenizer.render_chat([{"role": "user", "content": "hi"}])
    # The bounds are lifted again, and the template's own conversations still render.
    assert resource.getrlimit(resource.RLIMIT_AS) == limits and signal.getsignal(signal.SIGALRM) == handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_template_that_gives_no_tokens_is_refused(llama):
    ckpt = open_checkpoint(str(llama))
    ckpt.tokenizer.chat_template = "{{ '' }}"
    with pytest.raises(CheckpointError, match="the chat template gives no tokens"):
        ckpt.chat_ids(ckpt.tokenizer, "hi", max_input_tokens=64)


def test_token_ids_beyond_the_model_vocabulary_are_refused(llama):
    tokenizer = tokenizers_mod.HFTokenizer(llama, model_vocab_size=5)  # as a vocabulary with gaps or a special
    with pytest.raises(CheckpointError, match="gives token id .*, beyond the model's vocabulary of 5"):  # token past it
        tokenizer.encode("hello there")


def llama_with_tokenizer(llama: Path, tmp_path: Path, edit) -> Path:
    """A copy of the tiny Llama checkpoint whose tokenizer.json (as a dict) went through `edit`."""
    folder = tmp_path / "ckpt"
    shutil.copytree(llama, folder)
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    edit(tokenizer_json)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    return folder


def test_a_tokenizer_that_panics_is_one_error(llama, tmp_path):
    not_a_table = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}
    folder = llama_with_tokenizer(llama, tmp_path, lambda t: t.update(normalizer=not_a_table))
    with pytest.raises(CheckpointError, match="tokenizer file .*tokenizer.json (is not a tokenizers JSON file|fails)"):
        open_checkpoint(str(folder)).tokenizer.encode("hello")


def sentencepiece_model(**options) -> bytes:
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox jumps over the lazy dog"] * 50), model_writer=model,
        model_type="bpe", vocab_size=40, hard_vocab_limit=False, minloglevel=2, **options)
    return model.getvalue()


def expanding_rule(tmp_path) -> str:
    """A SentencePiece rule file that replaces "h" by 2,000 "a"s."""
    (tmp_path / "rule.tsv").write_text("68\t" + " ".join(["61"] * 2000) + "\n")
    return str(tmp_path / "rule.tsv")


@pytest.mark.parametrize("part,rules,times", [
    ("normalizer", {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": "a"},
                                                         "content": "a" * 1000}] * 3}, "1e+09"),
    ("decoder", {"type": "Replace", "pattern": {"Regex": "x*"}, "content": "y" * 99}, "100"),
    ("normalizer", {"type": "Precompiled", "precompiled_charsmap": "the table below"}, "2e+03"),
])
def test_tokenizer_json_rules_that_expand_text_are_refused(part, rules, times, llama, tmp_path):
    if rules["type"] == "Precompiled":
        [table] = tokenizers_mod._normalization_tables(sentencepiece_model(normalization_rule_tsv=expanding_rule(tmp_path)))
        rules = {**rules, "precompiled_charsmap": base64.b64encode(table).decode()}
    folder = llama_with_tokenizer(llama, tmp_path, lambda t: t.update({part: rules}))
    with pytest.raises(CheckpointError, match=f"can make a text {re.escape(times)} times longer"):
        open_checkpoint(str(folder))


@pytest.mark.parametrize("rule", ["normalization_rule_tsv", "denormalization_rule_tsv"])
def test_sentencepiece_rules_that_expand_text_are_refused(rule, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model(**{rule: expanding_rule(tmp_path)}))
    with pytest.raises(CheckpointError, match="tokenizer.model: its normalization rules can make a text 2,000 times"):
        tokenizers_mod.Tokenizer(tmp_path / "tokenizer.model")


def test_a_model_the_protobuf_walk_cannot_follow_is_one_error(tmp_path, monkeypatch):
    with pytest.raises(IndexError):
        tokenizers_mod._normalization_tables(b"\x1a\xff")  # field 3 whose length runs off the end
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model())
    monkeypatch.setattr(sentencepiece.SentencePieceProcessor, "serialized_model_proto", lambda self: b"\x1a\xff")
    with pytest.raises(CheckpointError, match="holds a model this reader cannot walk"):
        tokenizers_mod.Tokenizer(tmp_path / "tokenizer.model")


def test_real_normalization_tables_are_accepted(tmp_path):
    model = sentencepiece_model(normalization_rule_name="nmt_nfkc")
    [table] = tokenizers_mod._normalization_tables(model)
    assert tokenizers_mod._longest_replacement(table) == 18 <= tokenizers_mod.MAX_EXPANSION  # NFKC of U+FDFA
    assert tokenizers_mod._expansion({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(table).decode()}) == 18
    (tmp_path / "tokenizer.model").write_bytes(model)
    assert tokenizers_mod.Tokenizer(tmp_path / "tokenizer.model").encode("\ufdfa") != []


def test_a_token_too_long_to_decode_safely_is_refused(llama, tmp_path):
    """A vocabulary holding a huge piece would make an answer of that token repeated gigabytes long."""
    piece = "x" * (tokenizers_mod.MAX_TOKEN_CHARS + 1)
    (tmp_path / "tokenizer.model").write_bytes(sentencepiece_model(user_defined_symbols=[piece]))
    with pytest.raises(CheckpointError, match="tokenizer.model holds a token of 1,025 characters"):
        tokenizers_mod.Tokenizer(tmp_path / "tokenizer.model")
    added = {"id": 1000, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
    folder = llama_with_tokenizer(llama, tmp_path, lambda t: t["added_tokens"].append(added))
    with pytest.raises(CheckpointError, match="tokenizer.json holds a token of 1,025 characters"):
        open_checkpoint(str(folder))


def test_a_tokenizer_expanding_text_without_end_fails_within_its_memory_bound(tmp_path, monkeypatch):
    rule = tmp_path / "rule.tsv"
    rule.write_text("68\t" + " ".join(["61"] * 20000) + "\n")  # "h" -> 20,000 x "a"
    model = tmp_path / "tokenizer.model"
    model.write_bytes(sentencepiece_model(normalization_rule_tsv=str(rule)))
    monkeypatch.setattr(tokenizers_mod, "MAX_EXPANSION", 10**5)  # past the bound on its rules: this one is on memory
    tokenizer = tokenizers_mod.Tokenizer(model)
    monkeypatch.setattr(tokenizers_mod, "ENCODE_MEMORY_BYTES", 64 << 20)
    limits = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises(CheckpointError, match="needs more than 64 MiB of memory to encode 2,000 characters"):
        tokenizer.encode("h" * 2000)  # 40 million characters once normalized
    assert resource.getrlimit(resource.RLIMIT_AS) == limits
    assert tokenizer.encode("the dog") == tokenizer.sp.encode("the dog")


def test_a_long_template_is_refused(llama, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(llama, folder)
    (folder / "chat_template.jinja").write_text("x" * (tokenizers_mod.MAX_TEMPLATE_CHARS + 1))
    with pytest.raises(CheckpointError, match="chat template is longer than"):
        open_checkpoint(str(folder))


def test_a_tokenizer_larger_than_the_bound_is_not_read(tiny_copy, monkeypatch):
    folder = tiny_copy()
    monkeypatch.setattr(tokenizers_mod, "MAX_TOKENIZER_BYTES", 1000)
    monkeypatch.setattr(tokenizers_mod, "spm", None)  # never reached
    with pytest.raises(CheckpointError, match="tokenizer.model is larger than"):
        open_checkpoint(str(folder))


def test_an_index_of_many_missing_files_is_one_short_line(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "ckpt", fmt="sharded-safetensors")
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {f"w{i}": f"missing-{i}\nline.safetensors" for i in range(10_000)}
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="and 9997 more") as info:
        open_checkpoint(str(folder))
    assert "\n" not in str(info.value) and len(str(info.value)) < 500
