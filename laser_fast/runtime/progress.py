"""Progress bars that follow the log level (shown when INFO is enabled and show is None)."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def want_progress(show: bool | None) -> bool:
    if show is not None:
        return bool(show)
    return logging.getLogger("laser_fast").isEnabledFor(logging.INFO)


def progress_bar(*, total: int | None, desc: str, unit: str = "it", initial: int = 0, show: bool | None = None, unit_scale: bool = False,
                 leave: bool = True, mininterval: float = 1.0):
    """A tqdm bar (with rate) or a disabled one: the one place the package builds a counting bar
    (``total=None``: a counter without a known end)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, disable=not want_progress(show),
                leave=leave, mininterval=mininterval, dynamic_ncols=True)


def progress_iter(iterable: Iterable[T], *, desc: str, unit: str = "it", total: int | None = None, show: bool | None = None) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar when progress is wanted (see :func:`want_progress`),
    else ``iterable`` itself: the one place the package builds a bar over an iterable."""
    if not want_progress(show):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=1.0, dynamic_ncols=True)
