"""A checkpoint, from folder or hub id to a ready model: validate everything cheap (configs, weight headers,
tokenizer, memory) before reading any weight, then load.

Only data files are read (json, tokenizer files, weights); the .py files that hub checkpoints ship for
trust_remote_code are never imported or downloaded.
"""
from dataclasses import dataclass
from pathlib import Path

import torch

from selfspec.chat import build_chat_ids, build_template_chat_ids
from selfspec.config import (
    SAMPLING_DEFAULTS, checkpoint_arch, load_config, model_args_from_config, read_generation_config, sampling_errors,
)
from selfspec.errors import CheckpointError
from selfspec.folder import checkpoint_file
from selfspec.hub import resolve_model_path
from selfspec.memory import check_memory
from selfspec.model import ModelArgs, Transformer
from selfspec.tokenizer import TOKENIZER_FILES, HFTokenizer, Tokenizer, load_tokenizer
from selfspec.weights import check_weights_match_config, find_weight_files, load_model

BAICHUAN2_USER, BAICHUAN2_ASSISTANT, BAICHUAN2_EOS = 195, 196, 2  # Baichuan2-Chat's, where its configs are silent


@dataclass(frozen=True)
class Checkpoint:
    """A validated checkpoint folder and its tokenizer. Its generation_config.json gives the chat and
    end-of-sequence ids (where it is silent, Baichuan2-Chat's) and sampling values (None where it is silent)."""

    folder: Path
    config: dict
    args: ModelArgs
    weight_files: list[Path]
    tokenizer: Tokenizer | HFTokenizer
    arch: str = "baichuan"
    user_token_id: int = BAICHUAN2_USER
    assistant_token_id: int = BAICHUAN2_ASSISTANT
    eos_token_ids: tuple[int, ...] = (BAICHUAN2_EOS,)  # every end-of-sequence id, the one generate() stops at first
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    @property
    def eos_token_id(self) -> int:
        """The end-of-sequence id generate() stops at."""
        return self.eos_token_ids[0]

    def sampling(self, temperature=None, top_k=None, top_p=None) -> dict:
        """Sampling settings: those given, else this checkpoint's (as transformers' generate takes a model's
        generation config), else SAMPLING_DEFAULTS."""
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        settings = {name: next(v for v in (given[name], getattr(self, name), default) if v is not None)
                    for name, default in SAMPLING_DEFAULTS.items()}
        errors = sampling_errors(**settings)
        if errors:  # the flags were checked before: the value comes from the checkpoint
            flag = "--" + errors[0].split()[0].replace("_", "-")
            raise CheckpointError(f"{self.folder / 'generation_config.json'}: {errors[0]}; pass {flag}")
        return settings

    def chat_ids(self, tokenizer, messages_or_prompt, *, system: str = "", max_input_tokens: int):
        """(ids, truncated) in the checkpoint's chat format: Baichuan2's marker tokens or the chat template.
        `messages_or_prompt`: one user prompt or a list of {"role", "content"} messages."""
        if self.arch == "baichuan":
            return build_chat_ids(
                tokenizer, messages_or_prompt, system=system, user_token_id=self.user_token_id,
                assistant_token_id=self.assistant_token_id, max_input_tokens=max_input_tokens,
            )
        ids, truncated = build_template_chat_ids(
            tokenizer, messages_or_prompt, system=system, max_input_tokens=max_input_tokens
        )
        if not ids:
            raise CheckpointError(f"{self.folder}: the chat template gives no tokens for this conversation")
        return ids, truncated


def _llama_eos_ids(declared: tuple[int, ...], tokenizer, folder: Path) -> tuple[int, ...]:
    """A Llama checkpoint's end-of-sequence ids, the one generation stops at first: the tokenizer's when the
    configs declare none. With several (Llama 3 lists <|end_of_text|>, <|eom_id|>, <|eot_id|>), the
    tokenizer's own EOS (what chat turns end with) goes first."""
    own = tokenizer.eos_token_id
    if not declared:
        if own is None:
            raise CheckpointError(f"{folder}: no eos_token_id in the configs or the tokenizer")
        return (own,)
    return (own, *(i for i in declared if i != own)) if own in declared else declared


def open_checkpoint(path_or_id: str, max_seq_len: int | None = None) -> Checkpoint:
    """Cheap validation (config, generation config, weight files, tokenizer) without reading weights."""
    folder = resolve_model_path(str(path_or_id))
    config = load_config(folder)
    arch = checkpoint_arch(config)
    args = model_args_from_config(config, max_seq_len)
    weight_files = find_weight_files(folder)
    check_weights_match_config(config, args, weight_files)
    if checkpoint_file(folder, TOKENIZER_FILES[arch], required=False) is None:
        raise CheckpointError(f"{folder} has no {TOKENIZER_FILES[arch]}")
    values = read_generation_config(folder, config)
    if arch == "baichuan":
        values["eos_token_ids"] = values["eos_token_ids"] or (BAICHUAN2_EOS,)
    ids = {"eos_token_id": values["eos_token_ids"]}
    if arch == "baichuan":  # Llama chat formats need no marker tokens
        ids.update(user_token_id=[values.get("user_token_id", BAICHUAN2_USER)],
                   assistant_token_id=[values.get("assistant_token_id", BAICHUAN2_ASSISTANT)])
    for key, found in ids.items():
        for value in found:
            if not 0 <= value < args.vocab_size:
                raise CheckpointError(f"{folder}: {key} {value} is outside the vocabulary ({args.vocab_size})")
    tokenizer = load_tokenizer(folder, arch, args.vocab_size)
    if arch == "llama":
        values["eos_token_ids"] = _llama_eos_ids(values["eos_token_ids"], tokenizer, folder)
    tokenizer.eos_token_id = values["eos_token_ids"][0]  # the one generation stops at
    return Checkpoint(folder=folder, config=config, args=args, weight_files=weight_files, tokenizer=tokenizer,
                      arch=arch, **values)


def load_checkpoint(
    path_or_id: str, dtype: torch.dtype, device: torch.device | str, max_seq_len: int | None = None,
    draft_group_size: int | None = None,
) -> tuple[Checkpoint, Transformer, Tokenizer | HFTokenizer]:
    """Resolve -> validate -> tokenizer -> model; everything cheap fails before weights are read, including a
    model (plus the draft `make_draft` will add, given its group size) larger than the GPU's memory."""
    ckpt = open_checkpoint(path_or_id, max_seq_len)
    if draft_group_size:
        odd = [f"{name} {getattr(ckpt.args, name)}" for name in ("hidden_size", "intermediate_size")
               if getattr(ckpt.args, name) % 2]
        if odd:
            raise CheckpointError(f"{ckpt.folder}: the INT4 draft packs two weights a byte, so its layers need even "
                                  f"widths, not {', '.join(odd)}; --no-speculative decodes without it")
    check_memory(ckpt, dtype, device, draft_group_size)
    model = load_model(ckpt.folder, dtype, device, max_seq_len)
    return ckpt, model, ckpt.tokenizer
