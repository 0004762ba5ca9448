"""Tokenizers: Baichuan2's SentencePiece tokenizer.model, or a Llama checkpoint's tokenizer.json with the
special tokens and chat template of its tokenizer_config.json."""
import base64
import contextlib
import json
import math
from pathlib import Path

import sentencepiece as spm

from selfspec.chat import render_template
from selfspec.errors import CheckpointError, one_line
from selfspec.folder import checkpoint_file, read_json
from selfspec.limits import memory_limit

MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.model, tokenizer.json (the largest public ones: about 35 MB)
MAX_TEMPLATE_CHARS = 1 << 20  # a chat template's source
TOKENIZER_FILES = {"baichuan": "tokenizer.model", "llama": "tokenizer.json"}  # per checkpoint_arch
# Memory a text's encoding may take: tokenizer.json holds 4.8 GB at its peak for 14.4 million characters. A
# tokenizer whose normalizer expands text without end fails instead of taking the machine's memory:
# SentencePiece with a MemoryError, tokenizers' Rust side by aborting the process.
ENCODE_MEMORY_BYTES, ENCODE_MEMORY_PER_CHAR = 1 << 30, 512
MAX_EXPANSION = 64  # how many times longer a tokenizer.json's normalizer or decoder may make a text (real: 1-18)
# The longest text one token may stand for (real vocabularies: a few hundred characters at most). It bounds
# what decoding an answer makes: a hostile vocabulary of a few huge pieces would otherwise fill the memory.
MAX_TOKEN_CHARS = 1024


def _bounded_encode(path: Path, encode, text: str) -> list[int]:
    """encode(text) within ENCODE_MEMORY_BYTES + ENCODE_MEMORY_PER_CHAR bytes a character of new memory."""
    limit = ENCODE_MEMORY_BYTES + ENCODE_MEMORY_PER_CHAR * len(text)
    try:
        with memory_limit(limit):
            return encode(text)
    except MemoryError:
        raise CheckpointError(f"tokenizer file {path} needs more than {limit >> 20} MiB of memory to encode "
                              f"{len(text):,} characters") from None


def _check_tokenizer_size(path: Path) -> None:
    """The tokenizer libraries read a whole file into memory: refuse one far larger than any real tokenizer."""
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise CheckpointError(f"tokenizer file {path} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")


def _check_token_lengths(path: Path, tokens) -> None:
    longest = max(map(len, tokens), default=0)
    if longest > MAX_TOKEN_CHARS:
        raise CheckpointError(f"tokenizer file {path} holds a token of {longest:,} characters "
                              f"(at most {MAX_TOKEN_CHARS:,})")


class Tokenizer:
    """SentencePiece tokenizer.model (Baichuan2); encode adds no BOS/EOS, as Baichuan2's tokenizer."""

    def __init__(self, model_file: Path):
        model_file = Path(model_file)
        if not model_file.is_file():
            raise CheckpointError(f"tokenizer file {model_file} not found")
        _check_tokenizer_size(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as err:
            raise CheckpointError(f"tokenizer file {model_file} is not a SentencePiece model: {one_line(err)}") from None
        self.model_file, self.vocab_size = model_file, self.sp.vocab_size()
        _check_token_lengths(model_file, map(self.sp.id_to_piece, range(self.vocab_size)))
        try:
            tables = _normalization_tables(self.sp.serialized_model_proto())
        except IndexError:  # SentencePiece parsed the message: a walk off its end would be this reader's fault
            raise CheckpointError(f"tokenizer file {model_file} holds a model this reader cannot walk") from None
        expansion = max(map(_longest_replacement, tables), default=1)
        if expansion > MAX_EXPANSION:  # SentencePiece applies no other rule that makes text longer
            raise CheckpointError(f"tokenizer file {model_file}: its normalization rules can make a text "
                                  f"{expansion:,} times longer (at most {MAX_EXPANSION})")
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()

    def encode(self, text: str) -> list[int]:
        return _bounded_encode(self.model_file, self.sp.encode, text)

    def decode(self, ids) -> str:
        # A padded vocabulary (config vocab_size above the tokenizer's) can emit ids with no piece: no text.
        return self.sp.decode([int(i) for i in ids if int(i) < self.vocab_size])

    def ids_by_frequency(self) -> list[int]:
        """Token ids, most frequent first, as the model file ranks them: a SentencePiece piece's score is
        its log probability (unigram) or minus its merge order (BPE), higher for more frequent pieces."""
        scores = [self.sp.get_score(i) for i in range(self.vocab_size)]
        return sorted(range(self.vocab_size), key=lambda i: -scores[i])


class HFTokenizer:
    """tokenizer.json through the `tokenizers` library (what transformers' fast tokenizers run), with
    the special tokens and chat template of tokenizer_config.json (or chat_template.jinja).

    encode(text) gives what the checkpoint's tokenizer gives for tokenizer(text): its post-processor
    decides about BOS. Rendered chat templates are encoded without it, as apply_chat_template does.
    """

    SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")

    def __init__(self, folder: Path, model_vocab_size: int | None = None):
        folder = Path(folder)
        from tokenizers import Tokenizer as FastTokenizer  # imported late: only Llama checkpoints need it

        path = checkpoint_file(folder, "tokenizer.json", required=False)
        if path is None:
            raise CheckpointError(f"tokenizer file {folder / 'tokenizer.json'} not found")
        _check_tokenizer_size(path)
        self.path, self.model_vocab_size = path, model_vocab_size
        with self._failures("is not a tokenizers JSON file"):
            self.tok = FastTokenizer.from_file(str(path))
            rules = [json.loads(part.__getstate__()) for part in (self.tok.normalizer, self.tok.decoder) if part]
        expansion = _expansion(rules)
        if expansion > MAX_EXPANSION:
            raise CheckpointError(f"tokenizer file {path}: its normalizer or decoder can make a text {expansion:.3g} "
                                  f"times longer (at most {MAX_EXPANSION})")
        _check_token_lengths(path, self.tok.get_vocab(with_added_tokens=True))
        config_path = checkpoint_file(folder, "tokenizer_config.json", required=False)
        config = read_json(config_path) if config_path is not None else {}
        # Tokens are strings or serialized AddedTokens ({"content": ...}).
        self.special_tokens = {}
        for name in self.SPECIAL_NAMES:
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                self.special_tokens[name] = value
        self.chat_template = _chat_template(folder, config)
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id, self.eos_token_id = (
            self.tok.token_to_id(self.special_tokens.get(name, "")) for name in ("bos_token", "eos_token")
        )

    @contextlib.contextmanager
    def _failures(self, what: str):
        """The library's errors as CheckpointErrors: plain Exceptions, and the Rust side's panics, which are
        BaseExceptions (pyo3's PanicException)."""
        try:
            yield
        except (KeyboardInterrupt, SystemExit, CheckpointError):
            raise
        except BaseException as err:
            raise CheckpointError(f"tokenizer file {self.path} {what}: {one_line(err)}") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The ids of `text`; an id the model has no embedding for (a vocabulary with gaps, a special token
        numbered past it) is a CheckpointError."""
        with self._failures("fails on this text"):
            ids = _bounded_encode(self.path, lambda t: self.tok.encode(t, add_special_tokens=add_special_tokens).ids,
                                  text)
        if self.model_vocab_size is not None and ids and max(ids) >= self.model_vocab_size:
            raise CheckpointError(f"tokenizer file {self.path} gives token id {max(ids)}, beyond the model's "
                                  f"vocabulary of {self.model_vocab_size}")
        return ids

    def decode(self, ids) -> str:
        with self._failures("fails to decode"):
            return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def ids_by_frequency(self) -> list[int]:
        """Token ids, most frequent first, taken as id order: a BPE vocabulary numbers its tokens in the
        order of their merges, and the earlier merges are the more frequent pairs."""
        return list(range(self.vocab_size))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The checkpoint's chat template, rendered as transformers' apply_chat_template does."""
        return render_template(self.chat_template, messages, add_generation_prompt, self.special_tokens)


def _expansion(rule) -> float:
    """How many times longer a tokenizer.json normalizer or decoder (as JSON) can make a text, through the rules
    that replace text, which a Sequence chains. Replace: content / pattern length, with a regex pattern taken
    to match nothing (content + 1: an empty match inserts the content between characters). Precompiled (a
    SentencePiece normalization table): its longest replacement, as one character may match."""
    if isinstance(rule, list):
        return math.prod(_expansion(r) for r in rule)
    if not isinstance(rule, dict):
        return 1.0
    if rule.get("type") == "Replace":
        pattern, content = rule.get("pattern") or {}, str(rule.get("content", ""))
        if isinstance(pattern.get("String"), str) and pattern["String"]:
            return max(1.0, len(content) / len(pattern["String"]))
        return len(content) + 1.0
    if rule.get("type") == "Precompiled":  # `rule` is the library's own JSON: the table in base64
        return float(max(1, _longest_replacement(base64.b64decode(rule["precompiled_charsmap"]))))
    return _expansion(rule.get("normalizers", rule.get("decoders", [])))


def _normalization_tables(model_proto: bytes) -> list[bytes]:
    """The normalization tables of a serialized SentencePiece model: the precompiled_charsmap (field 2) of its
    normalizer_spec (field 3, for encoding) and denormalizer_spec (field 5, for decoding)."""
    return [table for spec in _protobuf_fields(model_proto, (3, 5)) for table in _protobuf_fields(spec, (2,))]


def _protobuf_fields(message: bytes, numbers) -> list[bytes]:
    """The values of a protobuf message's length-delimited fields `numbers`, read from the wire format
    (SentencePiece parsed the message already: it is well formed)."""
    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while message[i] & 0x80:
            value, shift, i = value | (message[i] & 0x7F) << shift, shift + 7, i + 1
        return value | message[i] << shift, i + 1

    values, i = [], 0
    while i < len(message):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:  # a varint
            _, i = varint(i)
        elif wire == 2:  # length-delimited: bytes, strings, messages
            size, i = varint(i)
            if key >> 3 in numbers:
                values.append(message[i:i + size])
            i += size
        elif wire in (1, 5):  # 64 and 32 bits
            i += 8 if wire == 1 else 4
        # 3 and 4 start and end a group, which holds fields of its own
    return values


def _longest_replacement(table: bytes) -> int:
    """The longest text (characters) in a SentencePiece normalization table: a trie's size (4 bytes, little
    endian), the trie, then the replacement texts, each ending with a NUL byte."""
    trie_bytes = int.from_bytes(table[:4], "little")
    return max(len(text.decode("utf-8", "replace")) for text in table[4 + trie_bytes:].split(b"\0"))


def _chat_template(folder: Path, config: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: "default"), else the
    chat_template.jinja file newer transformers versions write."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        jinja_file = checkpoint_file(folder, "chat_template.jinja", required=False)
        if jinja_file is None:
            return None
        try:
            with open(jinja_file, encoding="utf-8") as f:
                template = f.read(MAX_TEMPLATE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read {jinja_file}: {one_line(err)}") from None
    if len(template) > MAX_TEMPLATE_CHARS:
        raise CheckpointError(f"{folder}: the chat template is longer than {MAX_TEMPLATE_CHARS:,} characters")
    return template


def load_tokenizer(folder: Path, arch: str, vocab_size: int) -> Tokenizer | HFTokenizer:
    """The checkpoint's tokenizer (tokenizer.model for Baichuan2, tokenizer.json for Llama), checked to fit the
    model's vocabulary."""
    name = TOKENIZER_FILES[arch]
    tokenizer = Tokenizer(checkpoint_file(folder, name)) if arch == "baichuan" else HFTokenizer(folder, vocab_size)
    if tokenizer.vocab_size > vocab_size:
        raise CheckpointError(
            f"{folder}: {name} has {tokenizer.vocab_size} tokens, more than vocab_size {vocab_size} in config.json"
        )
    return tokenizer
