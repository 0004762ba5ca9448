"""Baichuan2 FP16 inference with self-speculative decoding (INT4 draft of the same weights)."""

__version__ = "0.1.0"


class InputError(Exception):
    """Bad user input (paths, checkpoints, arguments, devices).

    The CLI prints the message as one line on stderr and exits with status 2.
    """


from selfspec.cli import run_main  # noqa: E402  (after InputError, which selfspec.cli imports)
