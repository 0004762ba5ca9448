"""selfspec.hub: local folders as they are, hub ids from the cache, downloads of data files only."""
import shutil

import huggingface_hub
import huggingface_hub.constants
import pytest

from selfspec.checkpoint import open_checkpoint
from selfspec.errors import CheckpointError
from selfspec.hub import resolve_model_path


def test_missing_path(tmp_path):
    for path in (tmp_path / "nope", "./nope", "a/b/c"):
        with pytest.raises(CheckpointError, match="does not exist"):
            resolve_model_path(str(path))


def test_a_path_that_cannot_be_looked_at_is_one_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="the model path is empty"):
        resolve_model_path("")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(CheckpointError, match="is a link that leads nowhere"):
        resolve_model_path(str(tmp_path / "loop"))
    with pytest.raises(CheckpointError, match="cannot be used: File name too long"):
        resolve_model_path(str(tmp_path / ("a" * 300)))
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr("pwd.getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))  # a user without a home
    with pytest.raises(CheckpointError, match="cannot be used: Could not determine home directory"):
        resolve_model_path("~/model")


def test_path_is_a_file(tiny_7b):
    with pytest.raises(CheckpointError, match="not a folder"):
        open_checkpoint(str(tiny_7b / "config.json"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_hub_id_not_cached_offline(hub_cache):
    with pytest.raises(CheckpointError) as info:
        resolve_model_path("baichuan-inc/Baichuan2-7B-Chat")
    message = str(info.value)
    assert "not in the Hugging Face cache" in message and "--repo-id-or-model-path" in message
    assert "\n" not in message


def test_hub_id_from_cache(hub_cache, tiny_7b):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--org--tiny"
    shutil.copytree(tiny_7b, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    folder = resolve_model_path("org/tiny")
    assert folder == repo / "snapshots" / commit
    assert open_checkpoint("org/tiny").args.position_encoding == "rope"


def test_hub_download_skips_code(monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not cached")
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(CheckpointError, match="could not be downloaded"):
        resolve_model_path("org/name")
    assert calls[0] == {"local_files_only": True}
    assert "*.safetensors" in calls[1]["allow_patterns"]
    assert not any(p.endswith(".py") for p in calls[1]["allow_patterns"])
