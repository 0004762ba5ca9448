"""Tiny random Llama checkpoints written by transformers itself (save_pretrained), with a byte-level BPE
tokenizer.json trained on the fly and a ChatML-style chat template: an independent description of the
Hugging Face Llama format for the loader to be tested against."""
import functools
import json
from pathlib import Path

import torch
from make_tiny_checkpoint import _EN, _ZH

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2
# Uses what real templates use: bos_token, a default system message, raise_exception, trim/lstrip blocks.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a tiny model.<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role') }}{% endif %}\n"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=None)
def train_tokenizer_json(vocab_size: int = 400) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((_EN + _ZH) * 10, trainer)
    return tok.to_str()


def write_tiny_llama(out_dir, *, tied=True, num_kv_heads=2, eos_token_id=2, seed=0, vocab_size=None,
                     template=CHAT_TEMPLATE, **config_overrides) -> Path:
    """A LlamaForCausalLM (4 heads of 16, `num_kv_heads` KV heads, 2 layers) saved by transformers."""
    from tokenizers import Tokenizer
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(train_tokenizer_json()), bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    if template is not None:
        tok.chat_template = template
    config = LlamaConfig(
        vocab_size=vocab_size or len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0, **config_overrides,
    )
    if "rope_theta" not in config_overrides:
        config.rope_parameters = {"rope_type": "default", "rope_theta": 50000.0}
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init, so logits are peaked like a trained model's
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, p.shape[-1] ** -0.5 if "embed" not in name else 1.0)
    model.save_pretrained(out_dir)
    GenerationConfig(bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=0).save_pretrained(out_dir)
    tok.save_pretrained(out_dir, save_jinja_files=False)
    return out_dir


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
