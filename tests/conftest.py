import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "pool"
SHARED = ROOT.parent / "shared" / "data"
EXAMPLE_FILES = [EXAMPLES / "chat_messages.jsonl", EXAMPLES / "sharegpt.jsonl.gz", EXAMPLES / "alpaca.jsonl"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """One work directory per test session, so embeddings/categories are computed once."""
    return str(tmp_path_factory.mktemp("laser_work"))


@pytest.fixture(scope="session")
def example_files():
    return [str(p) for p in EXAMPLE_FILES]


def shared_or_skip(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present (the shared data folder sits beside the project in development and CI only)")
    return p
