"""Errors of bad input and how command-line entry points report them: one line on stderr and an exit status,
never a traceback."""
import contextlib
import errno
import os
import signal
import sys
import threading


class InputError(Exception):
    """Bad user input (paths, checkpoints, arguments, devices).

    The CLI prints the message as one line on stderr and exits with status 2.
    """


class CheckpointError(InputError):
    """A checkpoint folder or hub id that cannot be used (missing, incomplete, corrupted, unsupported)."""


def one_line(err: Exception) -> str:
    """The first line of an error message; its first sentence if the line is long."""
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    if len(line) > 200:
        line = line.split(". ")[0][:200]
    return line or type(err).__name__


def reason(err: Exception) -> str:
    """Why an operation on a path failed: an OSError's own words without the path ("File name too long"),
    else the message's first line."""
    return getattr(err, "strerror", None) or one_line(err)


def short_repr(value, limit: int = 60) -> str:
    """repr for messages, cut: config values may be anything (long strings, deep lists). Strings keep their
    quotes, so "1e-6" does not read as the number 1e-6."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def one_line_usage_errors(parser):
    """`parser` (an argparse.ArgumentParser) with its usage errors as one `error:` line and status 2 (argparse
    prints the usage too), and what --help and --version print failing as any write does (argparse drops the
    error: `--help > /dev/full` said nothing and exited 0). Returns the parser."""
    def error(message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    def print_message(message, file=None):
        if message:
            (file or sys.stderr).write(message)

    parser.error, parser._print_message = error, print_message
    return parser


EXIT_BAD_INPUT, EXIT_WRITE_FAILED, EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 2, 1, 130, 141  # 130, 141: 128 + SIGINT, SIGPIPE
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}  # a full or failing disk, not bad input


def run_main(main) -> int:
    """Run a command-line entry point and return its exit status. Instead of a traceback:
    an InputError is one `error:` line on stderr and status 2; Ctrl-C is the line `interrupted` and 130;
    a reader that closed stdout (`| head`) ends the program quietly with 141, as SIGPIPE ends other tools;
    a full disk is one `error:` line and status 1. SIGTERM (`timeout`, `kill`) ends it with 143 as an
    exception, so that a folder being written is removed as on any other failure."""
    with _terminate_by_exception():
        return _run(main)


@contextlib.contextmanager
def _terminate_by_exception():
    """SIGTERM raises SystemExit(143) in the block, where it may be handled (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(main) -> int:
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        return _fail("error: standard output is closed", EXIT_BAD_INPUT)
    try:
        status = main() or 0
        sys.stdout.flush()  # here, so that a failed write is reported below and not at interpreter exit
        return status
    except InputError as err:  # messages may quote the checkpoint's own text: newlines are escaped
        return _fail("error: " + str(err).replace("\r", "\\r").replace("\n", "\\n"), EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_CLOSED_PIPE
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        where = err.filename or "the output"  # no file name: a stream, stdout most often
        return _fail(f"error: cannot write {where}: {err.strerror or os.strerror(err.errno)}", EXIT_WRITE_FAILED)


def _fail(line: str, status: int) -> int:
    try:
        if sys.stdout is not None:  # None: closed when the program started
            sys.stdout.flush()  # what was printed comes before the error line
    except (OSError, ValueError):  # it cannot be written (full disk, closed pipe): dropped, not retried at exit
        _discard_stdout()
    try:
        if sys.stderr is not None:  # else print would write to stdout
            print(line, file=sys.stderr, flush=True)
    except OSError:
        pass  # stderr is gone too: the status still says what happened
    return status


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at interpreter exit neither fails nor prints a warning."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by something without a file descriptor
        pass
