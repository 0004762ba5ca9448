"""Runs a bench script with some of this package's kernel settings changed (MODULE.NAME=VALUE, a module of
selfspec.accel), for an A/B of whole runs:

    python bench/with_settings.py attention.BLOCK_KV=64 -- bench/benchmark.py --shapes 7b
"""
import runpy
import sys
from pathlib import Path

if not __package__:  # run as a file: the packages live in the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import apply_settings, parser  # noqa: E402
from selfspec.errors import InputError, run_main  # noqa: E402


def main():
    p = parser(__doc__)
    p.add_argument("words", nargs="*", metavar="SETTING ... -- SCRIPT ARGS")
    words = sys.argv[1:]
    if "--" not in words:
        p.parse_args(words)  # --help
        raise InputError("name the script after `--`: SETTING ... -- SCRIPT ARGS")
    split = words.index("--")
    settings, command = words[:split], words[split + 1:]
    if not command:
        raise InputError("name the script after `--`: SETTING ... -- SCRIPT ARGS")
    if not Path(command[0]).is_file():
        raise InputError(f"no script file {command[0]}")
    apply_settings(settings)
    sys.argv = command
    runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    sys.exit(run_main(main))
