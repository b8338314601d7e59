"""The one device resolver every loader uses, and the dtype per device.

Every model in laser_fast (sentence-transformers embedders, the task classifiers, the Hugging Face
scorers, the lite scorer's SmolLM2 and MiniLM, the local judge server) picks its torch device with
:func:`torch_device`: an explicit device is used as given, ``None`` / ``""`` / ``"auto"`` mean CUDA
when torch sees a GPU, else the CPU. k-means reports its faiss device with :func:`faiss_device`.
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

#: device values that mean "the best device available"
AUTO = (None, "", "auto")


def torch_device(device: str | None = None) -> str:
    """The torch device to use.

    Args:
        device: an explicit device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...), or
            ``None`` / ``""`` / ``"auto"`` for CUDA when torch sees a GPU, else the CPU.

    Returns:
        The device string.

    Example:
        >>> torch_device("cpu")
        'cpu'
    """
    if device in AUTO:
        return "cuda" if cuda_available() else "cpu"
    return str(device)


def cuda_available(*, only_if_loaded: bool = False) -> bool | None:
    """Whether torch sees a CUDA GPU.

    Args:
        only_if_loaded: answer only when torch is already imported (importing torch just to ask
            costs ~200 MB of memory); None when it is not.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        if only_if_loaded:
            return None
        import torch
    return bool(torch.cuda.is_available())


def torch_dtype(device: str):
    """The dtype policy of the Hugging Face scorers: bfloat16 on CUDA, float32 elsewhere."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AMX / AVX-512 BF16 via oneDNN)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old torch without the probe: assume no
        return False


def faiss_device() -> str:
    """'cuda (faiss-gpu, N GPUs)' when faiss sees a GPU, else 'cpu'."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - declared dependency
        return "unavailable"
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"cuda (faiss-gpu, {n} GPU{'s' if n > 1 else ''})" if n > 0 else "cpu"
