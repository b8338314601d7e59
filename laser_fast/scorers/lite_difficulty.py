"""``lite_difficulty``: the ``lite-llm`` profile's stand-in for difficulty, IFD of SmolLM2-135M-Instruct
over short windows, clipped to [0, 1]."""
from __future__ import annotations

from typing import Any

import numpy as np

from laser_fast.scorers.base import Scorer


class LiteDifficulty(Scorer):
    """The ``lite`` profile's stand-in for difficulty: IFD of SmolLM2-135M-Instruct clipped to [0, 1]."""

    name = "lite_difficulty"
    gpu_share = 0.25  # SmolLM2-135M: four workers share a GPU
    outputs = ("lite_difficulty", "ifd", "ifd_cond_loss", "ifd_direct_loss")
    categories = None

    #: IFD over short windows (128 tokens) on purpose: its cut inputs are counted, not warned about
    short_by_design = True

    def __init__(self, ifd: Scorer):
        self.ifd = ifd
        self.stats = getattr(ifd, "stats", {})

    @classmethod
    def build(cls, *, device: str | None = None, **ifd_kwargs: Any) -> LiteDifficulty:
        """The registry's factory: wrap an :class:`~laser_fast.scorers.models.IFDScorer` built from
        ``ifd_kwargs`` (model, batch_tokens, the short windows), in bfloat16 on a CPU that
        multiplies it natively (about 4x faster than float32 there: a stand-in, so rounding is no
        concern) and on a GPU that computes in it (:func:`~laser_fast.scorers.lite_features.auto_dtype`)."""
        from laser_fast.scorers.lite_features import auto_dtype
        from laser_fast.scorers.models import IFDScorer

        # always a concrete dtype, so the fingerprint keeps bf16 and float32 scores apart and workers take it over
        dt = auto_dtype(device)
        if device:
            ifd_kwargs["device"] = device
        return cls(IFDScorer(dtype=dt, **ifd_kwargs))

    @property
    def fingerprint(self) -> str:
        return f"lite_difficulty=clip(ifd,0,1)|{self.ifd.fingerprint}"

    def worker_pins(self) -> dict:
        return {"dtype": self.ifd.dtype}  # chosen by this CPU's bf16 units in build()

    def apply_pins(self, pins: dict) -> None:
        if pins["dtype"] != self.ifd.dtype:  # the pins come from worker_pins of this class on the driver
            self.ifd.release()
            self.ifd.dtype = pins["dtype"]

    def release(self) -> None:
        self.ifd.release()

    def host_memory_mb(self) -> int | None:
        return self.ifd.host_memory_mb()

    @property
    def used_device(self) -> str | None:
        return self.ifd.used_device

    def score(self, batch, *, batch_size=None, show_progress=None):
        out = self.ifd.score(batch, batch_size=batch_size, show_progress=show_progress)
        self.stats = getattr(self.ifd, "stats", {})
        ifd = np.asarray(out["ifd"], dtype=np.float64)
        return {"lite_difficulty": np.clip(ifd, 0.0, 1.0), **{k: np.asarray(out[k], dtype=np.float64) for k in ("ifd", "ifd_cond_loss", "ifd_direct_loss")}}
