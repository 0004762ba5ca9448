"""Baichuan2 FP16 inference with self-speculative decoding (INT4 draft of the same weights)."""
import sys

__version__ = "0.1.0"


class InputError(Exception):
    """Bad user input (paths, checkpoints, arguments, devices).

    The CLI prints the message as one line on stderr and exits with status 2.
    """


def run_main(main) -> int:
    """Run a command-line entry point: an InputError becomes one `error:` line on stderr and status 2."""
    try:
        return main() or 0
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
