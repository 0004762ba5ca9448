"""What every command-line entry point shares: one-line errors and exit statuses, and output folders that
appear whole or not at all."""
import contextlib
import errno
import os
import secrets
import shutil
import sys
from pathlib import Path

from selfspec import InputError

EXIT_BAD_INPUT, EXIT_WRITE_FAILED, EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 2, 1, 130, 141  # 130, 141: 128 + SIGINT, SIGPIPE
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO}  # a full or failing disk, not bad input


def run_main(main) -> int:
    """Run a command-line entry point and return its exit status. Instead of a traceback:
    an InputError is one `error:` line on stderr and status 2; Ctrl-C is the line `interrupted` and 130;
    a reader that closed stdout (`| head`) ends the program quietly with 141, as SIGPIPE ends other tools;
    a full disk is one `error:` line and status 1."""
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
        sys.stdout.flush()  # what was printed comes before the error line
    except (OSError, ValueError):  # it cannot be written (full disk, closed pipe): dropped, not retried at exit
        _discard_stdout()
    try:
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


@contextlib.contextmanager
def output_folder(target, force: bool = False):
    """Yield a new empty folder beside `target`, to be written; when the block ends without an exception it
    becomes `target`, else it is removed. A `target` that exists must be an empty folder, unless `force`:
    then the old folder is replaced (removed after the new one is in place). So a failure, Ctrl-C included,
    never leaves a half-written folder and never mixes new files with old ones."""
    target = Path(target).expanduser().absolute()
    if target.is_symlink():
        target = target.resolve()  # the folder the link names is the one to replace
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target} exists and is not a folder")
        if not force and any(target.iterdir()):
            raise InputError(f"{target} is not empty; choose a new folder, or pass --force to replace it")
    partial = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
    except OSError as err:
        raise InputError(f"cannot create {target}: {err.strerror}") from None
    try:
        yield partial
        if target.exists() and any(target.iterdir()):
            old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
            target.rename(old)
            partial.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(target)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
