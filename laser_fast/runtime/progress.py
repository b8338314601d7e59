"""Progress bars that follow the log level (shown when INFO is enabled and show is None)."""
from __future__ import annotations

import logging


def want_progress(show: bool | None) -> bool:
    if show is not None:
        return bool(show)
    return logging.getLogger("laser_fast").isEnabledFor(logging.INFO)


def progress_bar(*, total: int, desc: str, unit: str = "it", initial: int = 0, show: bool | None = None):
    """A tqdm bar (with rate) or a no-op stand-in."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not want_progress(show), mininterval=1.0, dynamic_ncols=True)
