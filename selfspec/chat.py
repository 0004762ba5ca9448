"""Chat prompts: Baichuan2's user/assistant marker tokens, or a checkpoint's Jinja chat template rendered in a
bounded sandbox; the newest rounds that fit the context are kept."""
import contextlib
import json
import signal
import threading
from datetime import datetime

from selfspec.errors import CheckpointError, InputError, one_line
from selfspec.limits import memory_limit

# A chat template is a program from the checkpoint: its time, memory and output are bounded (its source:
# selfspec.tokenizer).
TEMPLATE_SECONDS = 1.0
TEMPLATE_OUTPUT_CHARS, TEMPLATE_MEMORY_BYTES = 1 << 20, 256 << 20  # plus 8 chars, 64 bytes per conversation char
MAX_TEMPLATE_INT_BITS = 1 << 16  # for * and ** on integers, which run in C without a chance to stop them


def render_template(template: str | None, messages: list[dict], add_generation_prompt: bool,
                    special_tokens: dict) -> str:
    """A checkpoint's chat template, rendered as transformers' apply_chat_template does, its special tokens
    (bos_token, eos_token, ...) as variables."""
    if template is None:
        raise InputError("the checkpoint has no chat template (tokenizer_config.json); use --raw-prompt")
    import jinja2  # imported late: only Llama checkpoints need it

    conversation = sum(len(m["content"]) for m in messages)
    max_chars, max_bytes = TEMPLATE_OUTPUT_CHARS + 8 * conversation, TEMPLATE_MEMORY_BYTES + 64 * conversation
    try:
        # The timer is the inner bound: it is stopped before the memory bound is lifted, so that it
        # cannot fire in between and leave the process bounded.
        with memory_limit(max_bytes), _time_limit(TEMPLATE_SECONDS):
            chunks, size = [], 0
            stream = _compile_template(template).generate(
                messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
            )
            for chunk in stream:
                size += len(chunk)
                if size > max_chars:
                    raise TemplateLimit(f"writes more than {max_chars:,} characters")
                chunks.append(chunk)
    except jinja2.TemplateError as err:
        raise InputError(f"the chat template rejected the conversation: {one_line(err)}") from None
    except TemplateLimit as err:
        raise CheckpointError(f"the checkpoint's chat template {err}: refused") from None
    except MemoryError:
        raise CheckpointError(f"the checkpoint's chat template needs more than {max_bytes >> 20} MiB of memory: "
                              "refused") from None
    except RecursionError:
        raise CheckpointError("the checkpoint's chat template recurses too deeply: refused") from None
    except Exception as err:  # the template is the checkpoint's code: any failure of it is the checkpoint's
        raise CheckpointError(f"the checkpoint's chat template failed: {type(err).__name__}: {one_line(err)}") from None
    return "".join(chunks)


class TemplateLimit(BaseException):
    """A chat template went past a bound. A BaseException, so that no `except Exception` on the way
    (Jinja's, or one the template reaches) swallows it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupt the block after `seconds` (SIGALRM: in the main thread, where there is one; else unbounded)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TemplateLimit(f"runs longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _bounded_binop(operator: str, left, right):
    """* and ** of the sandbox, refusing integers and repeated sequences too large to compute in a bound."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "**" and ints and right > 0 and left.bit_length() * right > MAX_TEMPLATE_INT_BITS:
        raise TemplateLimit(f"computes an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
    if operator == "*":
        if ints and left.bit_length() + right.bit_length() > MAX_TEMPLATE_INT_BITS:
            raise TemplateLimit(f"computes an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
        count, sequence = (left, right) if isinstance(left, int) else (right, left)
        if isinstance(count, int) and hasattr(sequence, "__len__") and count * len(sequence) > TEMPLATE_OUTPUT_CHARS:
            raise TemplateLimit(f"repeats a sequence past {TEMPLATE_OUTPUT_CHARS:,} items")
    return left ** right if operator == "**" else left * right


_templates: dict = {}


def _compile_template(source: str):
    """A sandboxed Jinja environment configured like transformers' (templates come from the hub), whose
    * and ** are bounded (see render_chat for the bounds on time, memory and output)."""
    if source not in _templates:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class BoundedEnvironment(ImmutableSandboxedEnvironment):
            intercepted_binops = frozenset({"*", "**"})  # also keeps them from being folded at compile time

            def call_binop(self, context, operator, left, right):
                return _bounded_binop(operator, left, right) if operator in ("*", "**") else super().call_binop(
                    context, operator, left, right)

        def raise_exception(message):
            raise jinja2.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = BoundedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = tojson
        env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        _templates[source] = env.from_string(source)
    return _templates[source]


def _chat_rounds(messages_or_prompt, system: str) -> tuple[str, list[list[dict]]]:
    """(system text, rounds): a round is a user message and the replies after it. A leading system
    message replaces `system`."""
    if isinstance(messages_or_prompt, str):
        messages = [{"role": "user", "content": messages_or_prompt}]
    else:
        messages = list(messages_or_prompt)
    if messages and messages[0].get("role") == "system":
        system = messages.pop(0)["content"]
    rounds = []
    for message in messages:
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InputError(f"chat message role must be user or assistant (system only first), got {role!r}")
        if not isinstance(message.get("content"), str):
            raise InputError(f"chat message content must be a string, got {message.get('content')!r}")
        if role == "user" or not rounds:
            rounds.append([])
        rounds[-1].append({"role": role, "content": message["content"]})
    return system, rounds


def build_chat_ids(
    tokenizer,
    messages_or_prompt,
    *,
    system: str = "",
    user_token_id: int,
    assistant_token_id: int,
    max_input_tokens: int,
) -> tuple[list[int], bool]:
    """Token ids as Baichuan2's build_chat_input; returns (ids, truncated).

    `messages_or_prompt` is one user prompt or a list of {"role": "system"|"user"|"assistant",
    "content": str}. Whole rounds (a user turn and its replies) are kept from the newest while they
    fit, the newest one always; the result is then cut from the left to max_input_tokens.
    """
    if max_input_tokens <= 0:
        raise InputError(f"no room for the prompt: max input tokens is {max_input_tokens}")
    system, rounds = _chat_rounds(messages_or_prompt, system)
    round_ids = []
    for messages in rounds:
        round_ids.append([])
        for message in messages:
            marker = user_token_id if message["role"] == "user" else assistant_token_id
            round_ids[-1] += [marker] + tokenizer.encode(message["content"])
    system_ids = tokenizer.encode(system) if system else []
    # Like the reference, the final assistant token is not budgeted here: a history that fills the
    # budget exactly loses its first token to the left cut below (kept so prompts match the reference).
    max_history = max_input_tokens - len(system_ids)
    history, kept = [], 0
    for ids in reversed(round_ids):
        if history and len(history) + len(ids) > max_history:
            break
        history, kept = ids + history, kept + 1
        if len(history) >= max_history:
            break
    ids = system_ids + history
    if not rounds or rounds[-1][-1]["role"] != "assistant":
        ids.append(assistant_token_id)
    truncated = kept < len(rounds) or len(ids) > max_input_tokens
    return ids[-max_input_tokens:], truncated


def build_template_chat_ids(
    tokenizer, messages_or_prompt, *, system: str = "", max_input_tokens: int
) -> tuple[list[int], bool]:
    """Token ids of the checkpoint's chat template (generation prompt added unless the conversation
    ends with the assistant); returns (ids, truncated). As for Baichuan2, the newest rounds that fit are
    kept (the newest always), then the ids are cut from the left to max_input_tokens."""
    if max_input_tokens <= 0:
        raise InputError(f"no room for the prompt: max input tokens is {max_input_tokens}")
    system, rounds = _chat_rounds(messages_or_prompt, system)
    head = [{"role": "system", "content": system}] if system else []
    open_turn = not rounds or rounds[-1][-1]["role"] != "assistant"

    def ids_keeping(n):
        messages = head + [m for r in rounds[len(rounds) - n :] for m in r]
        return tokenizer.encode(tokenizer.render_chat(messages, open_turn), add_special_tokens=False)

    for kept in range(len(rounds), 0, -1):
        ids = ids_keeping(kept)
        if len(ids) <= max_input_tokens or kept == 1:
            break
    else:
        ids, kept = ids_keeping(0), 0
    truncated = kept < len(rounds) or len(ids) > max_input_tokens
    return ids[-max_input_tokens:], truncated
