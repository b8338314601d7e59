"""The one device resolver every loader uses, and the dtype per device.

Every model in laser_fast (sentence-transformers embedders, the task classifiers, the Hugging Face
scorers, the lite scorer's SmolLM2 and MiniLM, the local judge server) picks its torch device with
:func:`torch_device`: an explicit device is used as given, ``None`` / ``""`` / ``"auto"`` mean CUDA
when torch sees a GPU, else the CPU.

k-means picks its backend with :func:`resolve_kmeans_backend` (faiss on the GPU when faiss sees
one, else torch on CUDA when torch sees a GPU, else faiss on the CPU) and reports the device it
really ran on as ``"backend:device"`` (:func:`kmeans_device_label`). :func:`check_faiss_install`
warns when two distributions of the ``faiss`` module are installed side by side.
"""
from __future__ import annotations

import functools
import logging
import os
import re
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


def planned_device(device: str | None = None) -> str:
    """The device a model of this run will run on, as the process that plans the run sees it.

    An explicit device is used as given. ``None`` / ``""`` / ``"auto"``: the device of the run's
    engine's workers when an engine runs the models elsewhere (the Ray engine: ``cuda`` when its
    cluster has GPUs or is to have them, whatever this machine has; see ``RayExecutor.worker_device``), else
    :func:`torch_device` here. The choices a driver makes from the device before any model
    loads (the dtype in a fingerprint, a judge's backend, the records per cached chunk, the
    default profile) use it, so a driver without a GPU plans for its GPU workers; the process
    that loads a model asks :func:`torch_device`.
    """
    if device in AUTO and (worker := _workers_device()):
        return worker
    return torch_device(device)


def planned_dtype(device: str | None = None) -> str:
    """The name (``bfloat16`` / ``float32``) of :func:`torch_dtype` for :func:`planned_device`: on
    the driver of an engine whose workers run the models on GPUs, bfloat16 without asking this
    machine's own GPU, which says nothing of theirs (a driver with a T4 in front of H100 workers)."""
    dev = planned_device(device)
    if dev.startswith("cuda") and _workers_device():
        return "bfloat16"
    return str(torch_dtype(dev)).replace("torch.", "")


def _workers_device() -> str | None:
    """The device of the running engine's workers (None: the local engine, or one that does not say)."""
    from laser_fast.runtime.engine import current_executor

    worker = getattr(current_executor(), "worker_device", None)
    return str(worker) if worker else None


_RE_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu|mtia)(:\d+)?")


def check_device(device: str | None, *, engine: str | None = None) -> str | None:
    """Check a device option before any work: a torch device type (``cpu``, ``cuda``, ``cuda:1``,
    ``mps``, ...) or ``auto``; a CUDA device must exist. Returns the device (``None`` for auto).

    With ``engine="ray"`` the models run on the cluster's actors, each of which sees only the GPUs
    Ray gave it (as ``cuda:0``, ...): ``cuda`` is taken whatever this machine has (the engine
    checks the cluster's GPUs when the run starts), ``cuda:N`` is refused.

    Raises:
        ValueError: the message says what to use instead.
    """
    if device in AUTO:
        return None
    dev = str(device).strip().lower()
    if not _RE_DEVICE.fullmatch(dev):
        raise ValueError(f"device {device!r} is not a torch device: use cpu, cuda, cuda:N, mps or auto")
    if engine == "ray" and dev.startswith("cuda"):
        if dev not in ("cuda", "cuda:0"):
            raise ValueError(f"device {device!r}: with --engine ray every worker sees only the GPU Ray gives it, as cuda:0; "
                             "use cuda or auto")
        return "cuda"
    if dev.startswith("cuda"):
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(dev.split(":")[1]) if ":" in dev else 0
        if index >= n:
            seen = f"{n} CUDA device(s)" if n else "no CUDA device (a CPU-only torch, or no GPU)"
            raise ValueError(f"device {device!r}: torch sees {seen}; use cpu, auto or a cuda:N below {max(n, 1)}"
                             if n else f"device {device!r}: torch sees {seen}; use cpu or auto")
    return dev


def weights_placement(device: str, gguf: str | None = None) -> dict:
    """``from_pretrained`` keywords that load a model's weights straight onto a CUDA device
    (``device_map``, through accelerate): otherwise they are read into host memory first and
    moved, and eight GPU workers of a node loading an 8B model at once hold about 128 GB of host
    memory. A GGUF file is dequantised on the host; without a usable accelerate (a dependency,
    but an image may lack it) the weights take the host route too."""
    if gguf or not str(device).startswith("cuda"):
        return {}
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():
        return {}
    import torch

    index = torch.device(device).index
    return {"device_map": {"": index if index is not None else torch.cuda.current_device()}}


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
    """The dtype policy of the Hugging Face scorers: bfloat16 on a GPU that computes in it
    (compute capability 8.0 and later: A100, H100, ...), float32 elsewhere. Older cards (T4,
    V100) only emulate bfloat16, slowly, and float16 can overflow in a large model's
    activations: they run float32 (logged once; ``dtype=`` overrides). A process that sees no GPU
    (a Ray driver building scorers for GPU workers) answers bfloat16."""
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    dev = torch.device(device)
    try:
        major = torch.cuda.get_device_capability(dev.index if dev.index is not None else torch.cuda.current_device())[0]
    except (AssertionError, RuntimeError):  # no GPU here (a Ray driver building scorers for GPU workers)
        return torch.bfloat16
    if major >= 8:
        return torch.bfloat16
    if str(dev) not in _WARNED_DTYPE:
        _WARNED_DTYPE.add(str(dev))
        logger.warning("%s (%s) has no native bfloat16: the model scorers run in float32 there", dev,
                       torch.cuda.get_device_name(dev))
    return torch.float32


_WARNED_DTYPE: set[str] = set()


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AMX / AVX-512 BF16 via oneDNN).

    ``LASER_FAST_CPU_BF16=0`` answers no (float32 everywhere, as on an AVX2-only CPU: for
    benchmarks and bit-for-bit comparisons across machines); ``=1`` answers yes.
    """
    forced = os.environ.get("LASER_FAST_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old torch without the probe: assume no
        return False


#: k-means backends: ``auto`` (see :func:`resolve_kmeans_backend`), ``faiss`` or ``torch``
KMEANS_BACKENDS = ("auto", "faiss", "torch")
#: distribution names that install the ``faiss`` module (faiss-cpu, faiss-gpu, faiss-gpu-cu12,
#: faiss-gpu-cu12-cuvs, faiss-cuda, ...), not the many packages that merely use faiss
_FAISS_DIST = re.compile(r"^faiss(?:[-_.](?:cpu|gpu|cuda)(?:[-_.].*)?)?$", re.IGNORECASE)
#: files that exist on Linux when an NVIDIA (or ROCm) driver is loaded: without any of them torch
#: cannot see a GPU, so torch is not imported just to ask
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def faiss_gpus() -> int:
    """How many GPUs faiss sees (0 when faiss is a CPU build or is not installed)."""
    try:
        import faiss
    except ImportError:
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def faiss_device() -> str:
    """'cuda (faiss-gpu, N GPUs)' when faiss sees a GPU, else 'cpu' ('unavailable' without faiss).

    This is where faiss *would* run; the device k-means really used is in each stratum's stats
    (``kmeans_device``, see :func:`kmeans_device_label`).
    """
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "unavailable"
    n = faiss_gpus()
    return f"cuda (faiss-gpu, {n} GPU{'s' if n > 1 else ''})" if n > 0 else "cpu"


def faiss_distributions() -> dict[str, str]:
    """Installed distributions that provide the ``faiss`` module, name -> version (usually one:
    ``faiss-cpu``; two means they overwrite each other's files, see :func:`check_faiss_install`)."""
    import importlib.metadata as md

    out = {}
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if _FAISS_DIST.match(name):
            out[name] = dist.version
    return dict(sorted(out.items()))


@functools.lru_cache(maxsize=1)
def check_faiss_install() -> tuple[str, ...]:
    """Warn (once per process) when more than one faiss distribution is installed.

    faiss-cpu, faiss-gpu, faiss-gpu-cu12, ... all install the same ``faiss`` module: with two of
    them the later install overwrites the earlier one file by file, and ``import faiss`` may fail
    or silently load the CPU build. Returns the names found.
    """
    dists = faiss_distributions()
    if len(dists) > 1:
        listed = ", ".join(f"{n} {v}" for n, v in dists.items())
        logger.warning(
            "%d faiss distributions are installed side by side (%s); they share the one `faiss` module, so the import may "
            "break or load the CPU build. Fix: `pip uninstall -y %s`, then install exactly one: `pip install faiss-cpu` "
            "(k-means still runs on a GPU through torch) or, without faiss-cpu, a CUDA build such as `pip install faiss-gpu-cu12`.",
            len(dists), listed, " ".join(dists))
    return tuple(dists)


def _cuda_maybe() -> bool:
    """Whether torch sees a CUDA GPU, without importing torch on a Linux machine with no GPU driver."""
    if "torch" not in sys.modules and sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _GPU_DRIVER_FILES):
        return False
    return bool(cuda_available())


def _faiss_importable() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kmeans_backend(backend: str = "auto", device: str | None = None) -> tuple[str, str]:
    """The k-means backend and device to use.

    ``backend="auto"`` picks, in order: faiss on the GPU when faiss sees one (a faiss GPU build);
    torch on CUDA when torch sees a GPU (the plain ``pip install laser_fast`` on a CUDA machine,
    whose faiss-cpu has no GPU); faiss on the CPU; torch on the CPU when faiss is not installed.
    An explicit ``device`` narrows this: ``"cpu"`` runs faiss (or torch without faiss) on the
    CPU, ``"cuda[:i]"`` runs faiss GPU when faiss sees one, else torch on that device, any other
    torch device (``"mps"``) runs torch there.

    Args:
        backend: ``"auto"``, ``"faiss"`` or ``"torch"``.
        device: ``None`` / ``"auto"`` (the best available) or a torch device string.

    Returns:
        ``(backend, device)``: ``("faiss", "cpu")``, ``("faiss", "cuda (N GPUs)")``,
        ``("torch", "cuda")``, ``("torch", "cpu")``, ...

    Raises:
        ValueError: an unknown backend, or ``backend="faiss"`` with a CUDA device that faiss does
            not see.
        ImportError: ``backend="faiss"`` without faiss installed.

    Example:
        >>> resolve_kmeans_backend("torch", "cpu")
        ('torch', 'cpu')
    """
    if backend not in KMEANS_BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}: use one of {', '.join(KMEANS_BACKENDS)}")
    dev = None if device in AUTO else str(device)
    if backend == "torch":
        return "torch", torch_device(dev)
    has_faiss = _faiss_importable()
    if has_faiss:
        check_faiss_install()
    if backend == "faiss" and not has_faiss:
        raise ImportError("k-means backend 'faiss' needs faiss: `pip install faiss-cpu` (or use backend 'torch')")
    gpus = faiss_gpus() if has_faiss else 0
    faiss_gpu = f"cuda ({gpus} GPU{'s' if gpus > 1 else ''})"
    if backend == "faiss":
        if dev is None:
            return "faiss", faiss_gpu if gpus else "cpu"
        if dev.startswith("cuda"):
            if not gpus:
                raise ValueError(f"k-means backend 'faiss' on device {dev!r}: faiss sees no GPU (faiss-cpu); use backend 'torch' or 'auto', "
                                 "or replace faiss-cpu by a CUDA build (`pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12`)")
            return "faiss", faiss_gpu
        return "faiss", "cpu"
    # auto
    if gpus and (dev is None or dev.startswith("cuda")):
        return "faiss", faiss_gpu
    if dev is None:
        if _cuda_maybe():
            return "torch", "cuda"
        return ("faiss", "cpu") if has_faiss else ("torch", "cpu")
    if dev == "cpu" and has_faiss:
        return "faiss", "cpu"
    return "torch", dev


def kmeans_device_label(backend: str, device: str) -> str:
    """``"backend:device"`` as the manifest records it: ``"torch:cuda"``, ``"faiss:cpu"``,
    ``"faiss:cuda (2 GPUs)"``."""
    return f"{backend}:{device}"
