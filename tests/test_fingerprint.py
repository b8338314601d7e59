"""Models named by a local folder are keyed by the folder's files: one retrained or replaced in
place does not reuse the classes, vectors, scores or token counts of the model before it."""
from __future__ import annotations

import os

from laser_fast.runtime import fingerprint
from laser_fast.runtime.fingerprint import folder_fingerprint, model_identity


def _folder(tmp_path):
    d = tmp_path / "model"
    (d / "1_Pooling").mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 8}')
    (d / "model.safetensors").write_bytes(b"\x00" * 1000)
    (d / "1_Pooling" / "config.json").write_text("{}")
    return d


def test_a_folder_is_keyed_by_its_files(tmp_path, monkeypatch):
    d = _folder(tmp_path)
    first = folder_fingerprint(d)
    assert model_identity(str(d)) == f"{d}#{first}" and model_identity("org/model") == "org/model" and model_identity(None) is None
    (d / "model.safetensors").write_bytes(b"\x00" * 999 + b"\x01")  # retrained in place: the same size
    assert folder_fingerprint(d) != first
    (d / "model.safetensors").write_bytes(b"\x00" * 1000)  # the same bytes again (a new mtime): the same model
    os.utime(d / "model.safetensors", ns=(1, 1))
    assert folder_fingerprint(d) == first
    (d / ".cache").mkdir()
    (d / ".cache" / "lock").write_text("x")  # hidden entries do not count
    assert folder_fingerprint(d) == first
    (d / "1_Pooling" / "config.json").write_text('{"mean": true}')  # files in subfolders count too
    assert folder_fingerprint(d) != first
    # a file above FULL_BYTES: its ends, size and modification time
    monkeypatch.setattr(fingerprint, "FULL_BYTES", 100)
    monkeypatch.setattr(fingerprint, "_END_BYTES", 10)
    big = folder_fingerprint(d)
    os.utime(d / "model.safetensors", ns=(2, 2))
    assert folder_fingerprint(d) != big


def test_the_caches_of_each_stage_follow_the_folder(tmp_path):
    from laser_fast.classifier.models import HFClassifier
    from laser_fast.sampling.store import EmbeddingStore
    from laser_fast.scorers.models import DifficultyScorer
    from laser_fast.scorers.tokens import TokenCounter

    d = _folder(tmp_path)
    keys = lambda: (HFClassifier(str(d)).fingerprint, EmbeddingStore._label(str(d)),
                    DifficultyScorer(model=str(d)).fingerprint, TokenCounter(str(d)).fingerprint)
    before = keys()
    assert before == keys()
    (d / "model.safetensors").write_bytes(b"\x02" * 1000)
    after = keys()
    assert all(a != b for a, b in zip(before, after)), (before, after)
