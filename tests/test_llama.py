"""Llama checkpoints (written by transformers' save_pretrained): weights, GQA, tied heads, tokenizer.json,
chat template, EOS lists; transformers is the reference throughout."""
import json

import pytest
import torch
from helpers import assert_clean_error, run_cli
from safetensors.torch import load_file, save_file
from tiny_llama import CHAT_TEMPLATE, read_json, write_tiny_llama

from selfspec.checkpoint import load_checkpoint, open_checkpoint
from selfspec.errors import CheckpointError, InputError
from selfspec.generate import generate
from selfspec.draft import make_draft
from selfspec.weights import model_from_state_dict

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tied_gqa(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama-tied-gqa"), tied=True, num_kv_heads=2)


@pytest.fixture(scope="module")
def untied_mha(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama-untied"), tied=False, num_kv_heads=4, seed=1)


def reference_logits(folder, tokens):
    model = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


@pytest.mark.parametrize("fixture", ["tied_gqa", "untied_mha"])
def test_logits_match_transformers(fixture, request):
    folder = request.getfixturevalue(fixture)
    ckpt, model, _ = load_checkpoint(str(folder), torch.float32, "cpu")
    tokens = torch.randint(0, ckpt.args.vocab_size, (45,), generator=torch.Generator().manual_seed(0)).tolist()
    actual = model(torch.tensor([tokens]), torch.arange(len(tokens)))[0]
    torch.testing.assert_close(actual, reference_logits(folder, tokens), atol=1e-5, rtol=1e-5)
    # Incremental decoding through the (grouped) KV cache gives the same logits.
    step = model(torch.tensor([[tokens[-1]]]), torch.tensor([len(tokens) - 1]))[0]
    torch.testing.assert_close(step[0], actual[-1], atol=1e-5, rtol=1e-5)


def test_gqa_and_tied_head(tied_gqa, untied_mha):
    ckpt, model, _ = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    assert (ckpt.arch, ckpt.args.num_heads, ckpt.args.num_kv_heads) == ("llama", 4, 2)
    assert model.model.layers[0].self_attn.kv_cache.k.shape[1] == 2  # the cache holds KV heads only
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied: one tensor
    # The head is a plain linear layer: not row-normalized as Baichuan2's NormHead.
    assert not torch.allclose(model.lm_head.weight.norm(dim=1), torch.ones(1), atol=0.1)
    _, untied, _ = load_checkpoint(str(untied_mha), torch.float32, "cpu")
    assert untied.lm_head.weight.data_ptr() != untied.model.embed_tokens.weight.data_ptr()
    assert untied.args.num_kv_heads == 4


def test_speculative_equals_plain(tied_gqa):
    ckpt, model, tokenizer = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    draft = make_draft(model, group_size=32)
    for seed, prompt in enumerate(["Hello, how are you today?", "今天天气很好", "Write a Python function."]):
        ids, _ = ckpt.chat_ids(tokenizer, prompt, max_input_tokens=100)
        plain, _ = generate(model, ids, 40, eos_token_id=ckpt.eos_token_id)
        spec, stats = generate(model, ids, 40, draft=draft, eos_token_id=ckpt.eos_token_id, th_stop_draft=0.1 * seed)
        assert spec == plain and stats.drafted > 0


@pytest.mark.parametrize("text", ["Hello, how are you today?", "  two  spaces\nand 12345",
                                  "今天天气很好，我们去公园散步吧。", "龘 emoji 🌊"])
def test_tokenizer_matches_transformers(tied_gqa, text):
    _, _, tokenizer = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    reference = transformers.AutoTokenizer.from_pretrained(tied_gqa)
    ids = tokenizer.encode(text)
    assert ids == reference(text)["input_ids"]
    assert tokenizer.decode(ids) == reference.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(ids + [10**6]) == text  # an id of a padded vocabulary: no text, no error


CONVERSATIONS = [
    "What is the capital of France?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": " Sea? "}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],  # ends with the assistant
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_chat_template_matches_apply_chat_template(tied_gqa, conversation):
    ckpt, _, tokenizer = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    reference = transformers.AutoTokenizer.from_pretrained(tied_gqa).apply_chat_template(
        messages, add_generation_prompt=messages[-1]["role"] != "assistant", tokenize=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert ckpt.chat_ids(tokenizer, conversation, max_input_tokens=1000) == (reference, False)


def test_system_argument_and_truncation(tied_gqa):
    ckpt, _, tokenizer = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    with_system, _ = ckpt.chat_ids(tokenizer, "Hi", system="Be brief.", max_input_tokens=1000)
    assert tokenizer.decode(with_system).startswith("system\nBe brief.")
    messages = [{"role": "user", "content": "The first question is rather long, about the weather."},
                {"role": "assistant", "content": "The weather is nice."}, {"role": "user", "content": "Thanks!"}]
    full, truncated = ckpt.chat_ids(tokenizer, messages, max_input_tokens=1000)
    newest, _ = ckpt.chat_ids(tokenizer, messages[2:], max_input_tokens=1000)
    assert not truncated
    assert ckpt.chat_ids(tokenizer, messages, max_input_tokens=len(full) - 1) == (newest, True)  # oldest round dropped
    ids, truncated = ckpt.chat_ids(tokenizer, messages, max_input_tokens=5)
    assert truncated and ids == newest[-5:]
    with pytest.raises(InputError, match="unknown role|role"):
        ckpt.chat_ids(tokenizer, [{"role": "tool", "content": "x"}], max_input_tokens=100)


def test_eos_list_prefers_the_tokenizers_eos(tmp_path):
    folder = write_tiny_llama(tmp_path / "ckpt", eos_token_id=[0, 2])  # tokenizer's eos is <|im_end|> = 2
    assert open_checkpoint(str(folder)).eos_token_ids == (2, 0)  # final when opened: the tokenizer's EOS first
    ckpt, _, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu")
    assert (ckpt.eos_token_id, ckpt.eos_token_ids, tokenizer.eos_token_id) == (2, (2, 0), 2)
    (folder / "generation_config.json").unlink()
    config = read_json(folder / "config.json")
    del config["eos_token_id"]
    (folder / "config.json").write_text(json.dumps(config))
    ckpt, _, _ = load_checkpoint(str(folder), torch.float32, "cpu")  # no EOS declared: the tokenizer's
    assert ckpt.eos_token_ids == (2,)


def test_config_variants(tmp_path):
    # transformers 4 configs: top-level rope_theta; tied heads saved anyway; RoPE tables in the weights.
    folder = write_tiny_llama(tmp_path / "ckpt")
    config = read_json(folder / "config.json")
    config.pop("rope_parameters", None)
    config["rope_theta"] = 50000.0
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(state, str(folder / "model.safetensors"))
    ckpt, model, _ = load_checkpoint(str(folder), torch.float32, "cpu")
    assert ckpt.args.rope_theta == 50000.0
    tokens = list(range(3, 40))
    torch.testing.assert_close(model(torch.tensor([tokens]), torch.arange(len(tokens)))[0],
                               reference_logits(folder, tokens), atol=1e-5, rtol=1e-5)


def test_model_from_state_dict(tied_gqa):
    config = read_json(tied_gqa / "config.json")
    state = load_file(tied_gqa / "model.safetensors")
    model = model_from_state_dict(config, state, torch.float32, "cpu", max_seq_len=64)
    _, loaded, _ = load_checkpoint(str(tied_gqa), torch.float32, "cpu")
    tokens = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(tokens, torch.arange(3)), loaded(tokens, torch.arange(3)))
    with pytest.raises(CheckpointError, match="missing"):
        model_from_state_dict(config, {k: v for k, v in state.items() if "layers.1.mlp" not in k}, torch.float32, "cpu")


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "RoPE scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 32}, "head_dim"),
    ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
    ({"rope_parameters": ["x"]}, r"rope_parameters must be an object, got \['x'\]"),
    ({"head_dim": "16"}, "head_dim '16' != hidden_size"),  # a string: quoted, so it does not read as 16
])
def test_unsupported_llama_configs(tmp_path, change, message):
    folder = write_tiny_llama(tmp_path / "ckpt")
    (folder / "config.json").write_text(json.dumps({**read_json(folder / "config.json"), **change}))
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(str(folder))


def test_missing_tokenizer_and_template(tmp_path):
    folder = write_tiny_llama(tmp_path / "ckpt", template=None)
    ckpt, _, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu")
    with pytest.raises(InputError, match="no chat template.*--raw-prompt"):
        ckpt.chat_ids(tokenizer, "hi", max_input_tokens=100)
    # A chat_template.jinja file (newer transformers' layout) is found too.
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    ckpt, _, tokenizer = load_checkpoint(str(folder), torch.float32, "cpu")
    assert ckpt.chat_ids(tokenizer, "hi", max_input_tokens=100)[0][0] == 1  # bos_token <|im_start|>
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        open_checkpoint(str(folder))


def test_cli_on_a_llama_checkpoint(tied_gqa):
    def run(*args, status=0):
        return run_cli("--repo-id-or-model-path", tied_gqa, "--n-predict", 24, "--dtype", "float32", "--warmup", 0,
                       "--json", *args, check_exit=status)

    def answer(decoding):
        result = run("--prompt", "Tell me about the sea.", "--system", "Be brief.", decoding)
        return json.loads(result.stdout.splitlines()[-1])

    spec, plain = answer("--speculative"), answer("--no-speculative")
    assert spec["token_ids"] == plain["token_ids"] and spec["drafted"] > 0
    # A message longer than the room the answer leaves is refused, not cut (from the left, as it was).
    refused = run("--prompt", "the sea " * 300, "--raw-prompt", status=2)
    assert_clean_error(refused)
    assert refused.stderr.startswith("error: --n-predict 24 leaves room for 232 prompt tokens")
