"""selfspec.tokenizer: Baichuan2's SentencePiece tokenizer."""
import pytest
import torch
from helpers import read_config

from selfspec.checkpoint import load_checkpoint
from selfspec.errors import CheckpointError
from selfspec.tokenizer import Tokenizer


def test_invalid_tokenizer(tiny_copy):
    folder = tiny_copy()
    (folder / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="tokenizer.model is not a SentencePiece model"):
        load_checkpoint(str(folder), torch.float32, "cpu")


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
