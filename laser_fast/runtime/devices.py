"""The one device resolver every loader uses, and the dtype per device."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# devices and dtypes
# --------------------------------------------------------------------------------------

def resolve_device(device: str | None = None) -> str:
    """``None`` / ``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values pass through."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def torch_dtype(device: str):
    """The dtype policy: bfloat16 on CUDA, float32 elsewhere."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AMX / AVX-512 BF16 via oneDNN)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old torch without the probe: assume no
        return False


def best_torch_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def faiss_device() -> str:
    """'cuda (faiss-gpu, N GPUs)' when faiss sees a GPU, else 'cpu'."""
    try:
        import faiss
    except ImportError:  # pragma: no cover - declared dependency
        return "unavailable"
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return f"cuda (faiss-gpu, {n} GPU{'s' if n > 1 else ''})" if n > 0 else "cpu"
