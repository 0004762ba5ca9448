"""Files of checkpoint folders: reading an untrusted one safely, and writing a new one whole or not at all."""
import contextlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

from selfspec.errors import CheckpointError, InputError, one_line, reason

# Bounds on what a checkpoint folder may ask for, far above any real checkpoint: beyond them the folder is
# refused before anything is allocated (folders are untrusted input).
MAX_JSON_BYTES, MAX_JSON_DEPTH = 64 << 20, 32  # config, generation config, index, tokenizer config


def _allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where the files of a checkpoint folder may lie once symlinks are followed: the folder, and for a
    snapshot of the Hugging Face cache (models--org--name/snapshots/REV, whose files link to ../../blobs)
    that cache entry's blobs."""
    root = Path(folder).resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root, root.parent.parent / "blobs"
    return (root,)


def checkpoint_file(folder: Path, name: str, required: bool = True) -> Path | None:
    """folder/name, checked to be a regular file inside the folder once symlinks are followed (a checkpoint
    folder is untrusted: `name` may come from its index, links may point anywhere, a fifo would block the
    reader). A missing file is None, or a CheckpointError if `required`."""
    path = Path(folder) / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte in the name, ...
        raise CheckpointError(f"{path} cannot be opened: {one_line(err)}") from None
    if not any(real.is_relative_to(root) for root in _allowed_roots(folder)):
        raise CheckpointError(f"{path} lies outside the checkpoint folder {folder}: only the folder's own files are read")
    try:  # `path`, not `real`: resolve() passes "missing/../x" lexically, where opening it fails
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if required:
            raise CheckpointError(f"{path} not found") from None
        return None
    except OSError as err:  # there, but out of reach: a folder without search permission, ...
        raise CheckpointError(f"{path} cannot be opened: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file")
    try:  # readers' own messages for an unreadable file mislead ("No such file", "not valid JSON")
        open(path, "rb").close()
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror}") from None
    return path


def read_bounded(path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of a file. A fifo that nobody writes to reads as empty instead of blocking
    for ever: it is opened without waiting for a writer, then read as usual (`<(command)` has one)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        os.set_blocking(fd, True)
        return f.read(max_bytes + 1)


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from a file of at most `max_bytes`, nested at most MAX_JSON_DEPTH deep."""
    try:
        raw = read_bounded(path, max_bytes)
        if len(raw) > max_bytes:
            raise CheckpointError(f"{path} is larger than {max_bytes >> 20} MiB")
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror}") from None
    except ValueError as err:  # not UTF-8, not JSON, or an integer of over 4,300 digits
        raise CheckpointError(f"{path} is not valid JSON: {one_line(err)}") from None
    except RecursionError:
        data = None  # nested deeper than the parser can follow: refused below
    if not isinstance(data, dict) and data is not None:
        raise CheckpointError(f"{path} is not a JSON object")
    if data is None or _json_depth(data) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path} is nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def _json_depth(data) -> int:
    """How many lists and objects nest in each other, counted without recursion up to MAX_JSON_DEPTH + 1."""
    depth, level = 0, [data]
    while depth <= MAX_JSON_DEPTH:
        containers = [item for item in level if isinstance(item, (dict, list))]
        if not containers:
            break
        depth += 1
        level = [v for c in containers for v in (c.values() if isinstance(c, dict) else c)]
    return depth


def _checked_output_target(target: Path, force: bool) -> Path:
    """output_folder's target, links followed: missing, or an empty folder (any folder with `force`). A link
    is followed to the folder it names; a dangling one is refused."""
    if target.is_symlink() and not target.exists():  # dangling, or a loop of links
        try:
            target.resolve(strict=True)  # a loop raises its own error
        except FileNotFoundError:  # writing where a dangling link points would surprise
            raise InputError(f"{target} is a link to {os.readlink(target)}, which does not exist") from None
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target} exists and is not a folder")
        if not force and any(target.iterdir()):
            raise InputError(f"{target} is not empty; choose a new folder, or pass --force to replace it")
    return target.resolve()


@contextlib.contextmanager
def output_folder(target, force: bool = False):
    """Yield a new empty folder beside `target`, to be written; when the block ends without an exception it
    becomes `target`, else it is removed. A `target` that exists must be an empty folder, unless `force`:
    then the old folder is replaced (removed after the new one is in place). So a failure, Ctrl-C included,
    never leaves a half-written folder and never mixes new files with old ones."""
    if Path(target) == Path("."):  # "" (an unset variable) or ".": replacing the working folder would surprise
        raise InputError(f"the output folder must be named, got {str(target)!r}")
    target = Path(target).expanduser().absolute()
    try:  # bytes that are not UTF-8 arrive as lone surrogates, which the writers' libraries cannot encode
        str(target).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{str(target).encode('utf-8', 'replace').decode()} is not a valid UTF-8 path") from None
    if target.name in ("", ".."):  # "/", "x/..": replacing a folder above the one named would surprise
        raise InputError(f"{target} does not name a folder of its own; name the folder itself")
    try:
        target = _checked_output_target(target, force)
    except (OSError, RuntimeError) as err:  # a name too long, a folder out of reach, a loop of links
        raise InputError(f"cannot create {target}: {reason(err)}") from None
    partial = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
    except OSError as err:
        blocking = next((p for p in target.parents if os.path.exists(p) and not os.path.isdir(p)), None)
        why = f"{blocking} is not a folder" if blocking else err.strerror  # mkdir says "File exists" for it
        raise InputError(f"cannot create {target}: {why}") from None
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
