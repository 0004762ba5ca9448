"""selfspec.chat: Baichuan2's chat ids, rounds kept from the newest, truncation."""
import pytest

from selfspec.chat import build_chat_ids
from selfspec.errors import InputError
from selfspec.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_7b):
    return Tokenizer(tiny_7b / "tokenizer.model")


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
