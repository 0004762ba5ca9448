"""selfspec.checkpoint: hub folder layouts, config -> ModelArgs, errors, hub ids, tokenizer, chat ids."""
import json
import shutil

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from make_tiny_checkpoint import tiny_state_dict, write_tiny_checkpoint, write_weights
from safetensors.torch import save_file
from tiny_llama import write_tiny_llama

from selfspec import InputError
from selfspec.draft import make_draft
from selfspec.quantize import weight_bytes
from selfspec import checkpoint as ckpt_mod
from selfspec.checkpoint import (
    CheckpointError,
    Tokenizer,
    build_chat_ids,
    find_weight_files,
    load_checkpoint,
    load_model,
    memory_needed,
    model_args_from_config,
    open_checkpoint,
    resolve_model_path,
)

CONFIG_7B = {
    "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_size": 4096,
    "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32,
    "max_position_embeddings": 4096, "model_max_length": 4096, "rms_norm_eps": 1e-06, "vocab_size": 125696,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
CONFIG_13B = {
    **{k: v for k, v in CONFIG_7B.items() if k != "max_position_embeddings"},
    "hidden_size": 5120, "intermediate_size": 13696, "num_attention_heads": 40, "num_hidden_layers": 40,
}


def read_config(folder):
    return json.loads((folder / "config.json").read_text())


def write_config(folder, config):
    (folder / "config.json").write_text(json.dumps(config))


# --- loading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b", "tiny_7b_sharded", "tiny_13b_sharded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_gives_written_tensors(request, fixture, dtype, capsys):
    folder = request.getfixturevalue(fixture)
    written = tiny_state_dict(read_config(folder), seed=0)
    model = load_model(folder, dtype, "cpu")
    loaded = model.state_dict()
    assert loaded.keys() == written.keys()
    for key, tensor in written.items():
        expected = tensor.to(dtype)
        if key == "lm_head.weight":
            expected = F.normalize(tensor.float(), dim=1).to(dtype)
        assert loaded[key].dtype == dtype
        assert torch.equal(loaded[key], expected), key
    # The head really changed: written rows have norms far from 1.
    assert not torch.allclose(written["lm_head.weight"].float().norm(dim=1), torch.ones(1), atol=0.1)
    assert capsys.readouterr().err == ""  # no progress bar for small checkpoints


def test_sharded_fixtures_have_several_shards(tiny_7b_sharded, tiny_13b_sharded):
    assert [f.name for f in find_weight_files(tiny_7b_sharded)] == [
        f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert len(find_weight_files(tiny_13b_sharded)) == 2
    assert (tiny_13b_sharded / "pytorch_model.bin.index.json").is_file()


def test_safetensors_preferred_over_bin(tiny_copy):
    folder = tiny_copy(fmt="safetensors", seed=0)
    write_weights(folder, tiny_state_dict(read_config(folder), seed=1), "sharded-bin")
    assert find_weight_files(folder) == [folder / "model.safetensors"]
    model = load_model(folder, torch.bfloat16, "cpu")
    expected = tiny_state_dict(read_config(folder), seed=0)["model.embed_tokens.weight"]
    assert torch.equal(model.model.embed_tokens.weight, expected)


@pytest.mark.parametrize("fixture", ["tiny_7b", "tiny_13b"])
def test_loaded_model_is_ready(request, fixture):
    folder = request.getfixturevalue(fixture)
    ckpt, model, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu", max_seq_len=64)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.max_seq_len == 64
    assert model.model.layers[0].self_attn.kv_cache.k.shape == (1, ckpt.args.num_heads, 64, ckpt.args.head_dim)
    torch.testing.assert_close(model.lm_head.weight.norm(dim=1), torch.ones(ckpt.args.vocab_size))
    ids = tokenizer.encode("Hello, how are you today?")
    logits = model(torch.tensor([ids]), torch.arange(len(ids)))
    assert logits.shape == (1, len(ids), ckpt.args.vocab_size)
    assert torch.isfinite(logits).all()


def test_checkpoint_values(tiny_7b, tiny_13b):
    ckpt = open_checkpoint(str(tiny_7b))
    sp = Tokenizer(tiny_7b / "tokenizer.model").sp
    assert ckpt.user_token_id == sp.piece_to_id("<reserved_106>")
    assert ckpt.assistant_token_id == sp.piece_to_id("<reserved_107>")
    assert (ckpt.eos_token_id, ckpt.top_k, ckpt.top_p, ckpt.temperature) == (2, 5, 0.85, 0.3)
    assert ckpt.repetition_penalty == 1.05 and ckpt.do_sample is True and ckpt.max_new_tokens == 64
    assert ckpt.context_length == 256 and ckpt.args.position_encoding == "rope"
    assert ckpt.weight_files == [tiny_7b / "model.safetensors"]
    ckpt13 = open_checkpoint(str(tiny_13b))
    assert ckpt13.context_length == 256 and ckpt13.args.position_encoding == "alibi"
    assert ckpt13.args.num_heads == 5


def test_generation_config_defaults(tiny_copy):
    # Real vocabularies hold ids 195/196; this one is padded to 1024 so the defaults are valid ids.
    folder = tiny_copy(vocab_size=1024)
    (folder / "generation_config.json").unlink()
    ckpt = open_checkpoint(str(folder))
    assert (ckpt.user_token_id, ckpt.assistant_token_id, ckpt.eos_token_id) == (195, 196, 2)
    assert ckpt.max_new_tokens == 2048
    assert (ckpt.temperature, ckpt.top_k, ckpt.top_p, ckpt.repetition_penalty) == (None, None, None, None)
    assert ckpt.sampling() == {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # nothing declared: plain sampling


def test_sampling_settings_come_from_the_flags_then_the_generation_config(tiny_7b, tiny_copy):
    ckpt = open_checkpoint(str(tiny_7b))  # declares temperature 0.3, top_k 5, top_p 0.85 as the hub's
    assert ckpt.sampling() == {"temperature": 0.3, "top_k": 5, "top_p": 0.85}
    assert ckpt.sampling(temperature=0.7, top_k=0) == {"temperature": 0.7, "top_k": 0, "top_p": 0.85}
    folder = tiny_copy()
    (folder / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "top_p": 0.9}))
    ckpt = open_checkpoint(str(folder))  # greedy decoding never reads these, so opening it is fine
    with pytest.raises(CheckpointError, match=r"generation_config.json: temperature must be positive and finite, "
                                              r"got 0.0; pass --temperature"):
        ckpt.sampling()
    assert ckpt.sampling(temperature=0.5) == {"temperature": 0.5, "top_k": 0, "top_p": 0.9}


# --- config -> ModelArgs -------------------------------------------------------------------------


def test_model_args_7b_rope():
    args = model_args_from_config(CONFIG_7B)
    assert args.position_encoding == "rope" and args.max_seq_len == 4096
    assert (args.hidden_size, args.intermediate_size, args.num_layers) == (4096, 11008, 32)
    assert args.num_heads == args.num_kv_heads == 32 and args.head_dim == 128
    assert (args.vocab_size, args.rms_norm_eps, args.rope_theta) == (125696, 1e-6, 10000.0)


def test_model_args_13b_alibi():
    args = model_args_from_config(CONFIG_13B)
    assert args.position_encoding == "alibi" and args.max_seq_len == 4096
    assert args.num_heads == args.num_kv_heads == 40 and args.head_dim == 128 and args.num_layers == 40


def test_model_args_max_seq_len():
    assert model_args_from_config(CONFIG_13B, max_seq_len=1024).max_seq_len == 1024
    for bad in (0, 4097):
        with pytest.raises(InputError, match="context 4096"):
            model_args_from_config(CONFIG_7B, max_seq_len=bad)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"hidden_size": None}, "hidden_size must be a positive integer"),
        ({"vocab_size": "125696"}, "vocab_size must be a positive integer"),
        ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer"),
        ({"num_attention_heads": 30}, "not divisible"),
        ({"model_max_length": None}, "model_max_length must be a positive integer"),
        ({"rms_norm_eps": "x"}, "rms_norm_eps"),
    ],
)
def test_model_args_invalid(change, message):
    config = {**CONFIG_13B, **change}
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(CheckpointError, match=message):
        model_args_from_config(config)


# --- errors --------------------------------------------------------------------------------------


def test_checkpoint_error_is_input_error():
    assert issubclass(CheckpointError, InputError)


def test_missing_path(tmp_path):
    for path in (tmp_path / "nope", "./nope", "a/b/c"):
        with pytest.raises(CheckpointError, match="does not exist"):
            resolve_model_path(str(path))


def test_path_is_a_file(tiny_7b):
    with pytest.raises(CheckpointError, match="not a folder"):
        open_checkpoint(str(tiny_7b / "config.json"))


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        open_checkpoint(str(tmp_path))


def test_bad_json(tiny_copy):
    folder = tiny_copy()
    (folder / "config.json").write_text('{"model_type": "baichuan",')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        open_checkpoint(str(folder))


def test_bad_generation_config(tiny_copy):
    folder = tiny_copy()
    (folder / "generation_config.json").write_text(json.dumps({"top_k": "five"}))
    with pytest.raises(CheckpointError, match="generation_config.json: top_k"):
        open_checkpoint(str(folder))


def test_not_baichuan(tiny_copy):
    folder = tiny_copy()
    write_config(folder, {**read_config(folder), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    with pytest.raises(CheckpointError, match=r"config.json describes a gpt2 model, not Baichuan2 or Llama"):
        open_checkpoint(str(folder))


def test_no_weights(tiny_copy):
    folder = tiny_copy()
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        open_checkpoint(str(folder))


def test_index_lists_missing_shard(tiny_copy):
    folder = tiny_copy(fmt="sharded-bin")
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        open_checkpoint(str(folder))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "fmt, name, damage",
    [
        ("safetensors", "model.safetensors", truncate),
        ("safetensors", "model.safetensors", lambda p: truncate(p, keep=0.001)),
        ("bin", "pytorch_model.bin", truncate),
        ("bin", "pytorch_model.bin", lambda p: p.write_bytes(b"not a checkpoint" * 100)),
        ("bin", "pytorch_model.bin", lambda p: p.write_bytes(b"")),
        ("sharded-safetensors", "model-00002-of-00002.safetensors", truncate),
    ],
)
def test_corrupted_weights(tiny_copy, fmt, name, damage):
    folder = tiny_copy(fmt=fmt)
    damage(folder / name)
    with pytest.raises(CheckpointError, match=f"cannot read weights file .*{name}"):
        load_model(folder, torch.float32, "cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_shape_mismatch(tiny_copy, fmt):
    folder = tiny_copy(fmt=fmt)
    write_config(folder, {**read_config(folder), "intermediate_size": 96})
    # Safetensors files list keys sorted, so which MLP weight is met first depends on the format.
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape \(\d+, \d+\), config.json implies"):
        load_model(folder, torch.float32, "cpu")


def test_missing_key(tiny_copy):
    folder = tiny_copy()
    state = tiny_state_dict(read_config(folder))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weights missing from the checkpoint: model.layers.1.mlp.up_proj.weight"):
        load_model(folder, torch.float32, "cpu")


def test_unexpected_key(tiny_copy):
    folder = tiny_copy(fmt="bin")
    state = tiny_state_dict(read_config(folder))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: unexpected weight model.layers.0.self_attn.rotary_emb"):
        load_model(folder, torch.float32, "cpu")


def test_missing_tokenizer_fails_before_reading_weights(tiny_copy, monkeypatch):
    folder = tiny_copy()
    (folder / "tokenizer.model").unlink()
    monkeypatch.setattr(ckpt_mod, "load_model", lambda *a, **k: pytest.fail("weights read before validation"))
    with pytest.raises(CheckpointError, match="has no tokenizer.model"):
        load_checkpoint(str(folder), torch.float32, "cpu")
    with pytest.raises(CheckpointError, match="tokenizer.model not found"):
        Tokenizer(folder / "tokenizer.model")


@pytest.mark.parametrize("kind", ["tiny_7b", "tiny_13b", "tied llama with GQA"])
@pytest.mark.parametrize("group_size", [32, 64])
def test_memory_needed_is_what_loading_and_the_draft_allocate(kind, group_size, request, tmp_path):
    folder = write_tiny_llama(tmp_path / "llama") if kind.startswith("tied") else request.getfixturevalue(kind)
    ckpt, model, _ = load_checkpoint(folder, torch.float32, "cpu")
    kv_cache = sum(b.numel() * b.element_size() for name, b in model.named_buffers() if ".kv_cache." in name)
    draft = make_draft(model, group_size=group_size)
    need = memory_needed(ckpt, torch.float32, draft_group_size=group_size)
    assert list(need.values()) == [weight_bytes(model), kv_cache, weight_bytes(draft, quantized_only=True)]
    assert list(memory_needed(ckpt, torch.float32).values()) == [weight_bytes(model), kv_cache]


def test_model_larger_than_the_gpu_is_refused_before_reading_weights(tiny_copy, monkeypatch):
    folder = tiny_copy()
    need = memory_needed(open_checkpoint(folder), torch.float16, draft_group_size=64)
    total, draft = sum(need.values()), need["INT4 draft"]
    monkeypatch.setattr(ckpt_mod, "load_model", lambda *a, **k: pytest.fail("weights read before the memory check"))
    for memory, hint in ((total - draft // 2, True), (total - draft - 1, False)):
        monkeypatch.setattr(ckpt_mod, "device_memory_bytes", lambda device, memory=memory: memory)
        with pytest.raises(CheckpointError, match=r"needs at least 0\.0 GiB on cpu \(float16 weights 0\.0, KV cache "
                                                  r"for 256 tokens 0\.0, INT4 draft 0\.0\) and the device has") as e:
            load_checkpoint(folder, torch.float16, "cpu", draft_group_size=64)
        assert ("without the draft it needs" in str(e.value)) == hint
    with pytest.raises(CheckpointError, match="needs at least"):  # the draft's bytes are counted only if asked for
        load_checkpoint(folder, torch.float16, "cpu")
    monkeypatch.setattr(ckpt_mod, "device_memory_bytes", lambda device: total)
    monkeypatch.undo()
    assert ckpt_mod.device_memory_bytes(torch.device("cpu")) is None  # the CPU is not checked


def test_invalid_tokenizer(tiny_copy):
    folder = tiny_copy()
    (folder / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="tokenizer.model is not a SentencePiece model"):
        load_checkpoint(str(folder), torch.float32, "cpu")


# --- hub ids -------------------------------------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_not_cached_offline(hub_cache):
    with pytest.raises(CheckpointError) as info:
        resolve_model_path("baichuan-inc/Baichuan2-7B-Chat")
    message = str(info.value)
    assert "not in the Hugging Face cache" in message and "--repo-id-or-model-path" in message
    assert "\n" not in message


def test_hub_id_from_cache(hub_cache, tiny_7b):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--org--tiny"
    shutil.copytree(tiny_7b, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    folder = resolve_model_path("org/tiny")
    assert folder == repo / "snapshots" / commit
    assert open_checkpoint("org/tiny").args.position_encoding == "rope"


def test_hub_download_skips_code(monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        resolve_model_path("org/name")
    assert calls[0] == {"local_files_only": True}
    assert "*.safetensors" in calls[1]["allow_patterns"]
    assert not any(p.endswith(".py") for p in calls[1]["allow_patterns"])


# --- tokenizer and chat ids ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_7b):
    return Tokenizer(tiny_7b / "tokenizer.model")


@pytest.mark.parametrize(
    "text", ["Hello, how are you today?", "  two  spaces and 12345", "今天天气很好，我们去公园散步吧。", "龘 mixed 中文 text"]
)
def test_tokenizer_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert ids[0] != 1 and ids[-1] != 2  # no BOS/EOS added
    assert tokenizer.decode(ids) == text


def test_tokenizer_basics(tokenizer, tiny_7b):
    assert tokenizer.vocab_size == read_config(tiny_7b)["vocab_size"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.encode("") == []
    assert tokenizer.decode(torch.tensor([1, 2])) == ""  # control tokens decode to nothing


def chat(tokenizer, messages, max_input_tokens=1000, **kwargs):
    return build_chat_ids(
        tokenizer, messages, user_token_id=3, assistant_token_id=4, max_input_tokens=max_input_tokens, **kwargs
    )


def test_chat_single_prompt(tokenizer):
    enc = tokenizer.encode
    assert chat(tokenizer, "Hello there") == ([3, *enc("Hello there"), 4], False)
    assert chat(tokenizer, "你好", system="Be brief.") == ([*enc("Be brief."), 3, *enc("你好"), 4], False)


def test_chat_multi_turn(tokenizer):
    enc = tokenizer.encode
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    expected = [*enc("You are helpful."), 3, *enc("Hi"), 4, *enc("Hello!"), 3, *enc("How are you?"), 4]
    assert chat(tokenizer, messages) == (expected, False)
    # A conversation ending with the assistant gets no extra assistant token.
    ids, _ = chat(tokenizer, messages[1:3])
    assert ids == [3, *enc("Hi"), 4, *enc("Hello!")]


def test_chat_keeps_newest_rounds(tokenizer):
    enc = tokenizer.encode
    messages = [
        {"role": "user", "content": "The first question is rather long, about the weather."},
        {"role": "assistant", "content": "The weather is nice."},
        {"role": "user", "content": "Thanks!"},
    ]
    newest = [3, *enc("Thanks!"), 4]
    full, truncated = chat(tokenizer, messages)
    assert not truncated and full[-len(newest) :] == newest
    ids, truncated = chat(tokenizer, messages, max_input_tokens=len(full) - 2)
    assert (ids, truncated) == (newest, True)  # the older round is dropped whole
    # As in Baichuan2's build_chat_input, the final assistant token is not counted when fitting
    # rounds: history that fills the budget exactly is kept and the first token cut instead.
    ids, truncated = chat(tokenizer, messages, max_input_tokens=len(full) - 1)
    assert (ids, truncated) == (full[1:], True)


def test_chat_left_truncates_newest_round(tokenizer):
    prompt = "Please write a short poem about the sea and the stars."
    ids, truncated = chat(tokenizer, prompt, max_input_tokens=5, system="System text.")
    assert truncated and len(ids) == 5
    assert ids == [3, *tokenizer.encode(prompt), 4][-5:]


def test_chat_rejects_bad_input(tokenizer):
    with pytest.raises(InputError, match="role"):
        chat(tokenizer, [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])
    with pytest.raises(InputError, match="no room"):
        chat(tokenizer, "hi", max_input_tokens=0)
