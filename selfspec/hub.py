"""A checkpoint argument -> a local folder: a folder as is, or a hub id from the cache or the hub. Only data
files are downloaded (json, tokenizer files, weights), never the .py files hub checkpoints ship for
trust_remote_code."""
import re
from pathlib import Path

from selfspec.errors import CheckpointError, one_line, reason

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # "org/name": no leading / or ., one slash
HUB_PATTERNS = ["*.json", "*.jinja", "*.model", "*.safetensors", "*.bin"]  # never *.py


def resolve_model_path(path_or_id: str) -> Path:
    """Local folder as is; otherwise an "org/name" hub id from the cache, else downloaded (data files only)."""
    if not path_or_id:  # an unset variable: not the working folder
        raise CheckpointError("the model path is empty")
    try:
        path = Path(path_or_id).expanduser()
        exists = path.exists()
    except (OSError, RuntimeError) as err:  # a name too long, a folder out of reach, "~" without a home
        raise CheckpointError(f"model path {path_or_id} cannot be used: {reason(err)}") from None
    if not exists and path.is_symlink():
        raise CheckpointError(f"model path {path_or_id} is a link that leads nowhere (a missing path or a loop of links)")
    if exists:
        if not path.is_dir():
            raise CheckpointError(f"model path {path} is not a folder")
        return path
    if not HUB_ID.match(path_or_id):
        raise CheckpointError(f"model path {path_or_id} does not exist")
    from huggingface_hub import snapshot_download  # imported late: only hub ids need it

    try:
        return Path(snapshot_download(path_or_id, local_files_only=True))
    except Exception:
        pass  # not cached: try the hub
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:
        raise CheckpointError(
            f"{path_or_id} is not a local folder, not in the Hugging Face cache, and could not be downloaded "
            f"({one_line(err)}); pass a local checkpoint folder with --repo-id-or-model-path"
        ) from None
