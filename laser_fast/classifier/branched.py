"""One MiniLM pass for the default (``tuned``) classifier and the work directory's instruction vectors.

The tuned head fine-tunes only MiniLM's top layers (``layers.npz``: layers 3-5 of 6), so below
them its encoder is the plain all-MiniLM-L6-v2 that the embedding store, the ``onepass`` scorer
and ``--embed-field instruction`` read. :class:`BranchedEncoder` runs the shared bottom layers
once per text and then both top stacks: the plain ones (the stored ``instruction`` vector) and the
fine-tuned ones (the classifier's vector). Both vectors equal those of two separate full passes
(the same layer calls on the same inputs); the instruction costs 9 layer passes instead of 12.
When only the classifier's vector is wanted, the forward stops at the branch (6 layers).
"""
from __future__ import annotations

import copy
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from laser_fast.errors import ModelLoadError
from laser_fast.sampling.embed import _Encoder


def read_tuned_layers(st: Any, path: Path) -> dict[int, dict[str, np.ndarray]]:
    """The fine-tuned parameters of ``layers.npz`` (``scripts/train_classifier.py --finetune K``:
    float16 arrays named ``<layer>.<parameter>``, e.g. ``5.attention.self.query.weight``), per
    layer index, checked against the encoder ``st``'s parameter names and shapes."""
    try:
        z = np.load(path)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelLoadError(f"cannot read the classifier's fine-tuned layers {path}: {e}. Retrain the head "
                             "with `python scripts/train_classifier.py --finetune 3` (docs/classifier.md).") from e
    layers = st[0].auto_model.encoder.layer
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        idx, name = key.split(".", 1)
        try:
            target = layers[int(idx)].get_parameter(name)
        except (ValueError, IndexError, AttributeError) as e:
            raise ModelLoadError(f"{path}: {key!r} names no parameter of the MiniLM encoder ({e})") from e
        if tuple(target.shape) != arr.shape:
            raise ModelLoadError(f"{path}: {key!r} has shape {arr.shape}, the encoder's is {tuple(target.shape)}")
        out.setdefault(int(idx), {})[name] = arr
    if not out:
        raise ModelLoadError(f"{path} holds no layer parameters. Retrain the head with `python scripts/train_classifier.py --finetune 3`.")
    return out


class BranchedEncoder:
    """A plain MiniLM and a copy of its top layers with fine-tuned weights, run as one pass.

    Args:
        st: the plain (float32) ``SentenceTransformer``; it is not modified, apart from a forward
            pre-hook on the first fine-tuned layer that records that layer's inputs (per thread,
            only while :meth:`encode` runs).
        tuned: :func:`read_tuned_layers` of the head: the parameters that differ, per layer.

    The top stack holds every layer from the lowest fine-tuned one up, with the fine-tuned
    parameters put in place.
    """

    def __init__(self, st: Any, tuned: dict[int, dict[str, np.ndarray]]):
        import torch

        self.st = st
        layers = st[0].auto_model.encoder.layer
        self.branch = min(tuned)
        top = []
        with torch.no_grad():
            for i in range(self.branch, len(layers)):
                layer = copy.deepcopy(layers[i])
                for name, arr in tuned.get(i, {}).items():
                    layer.get_parameter(name).copy_(torch.from_numpy(arr.astype(np.float32)))
                top.append(layer.eval())
        self.top = torch.nn.ModuleList(top)
        self._seen = seen = threading.local()

        def record(_module, args, kwargs):  # a plain function: copying the model copies no encoder state
            if getattr(seen, "on", False):
                seen.inputs = (args, kwargs)
                if seen.stop:  # the plain top layers are not wanted: end the forward here
                    raise _Stop

        layers[self.branch].register_forward_pre_hook(record, with_kwargs=True)

    def tuned_layer(self, i: int) -> Any:
        """Layer ``i`` of the fine-tuned encoder (an index of the full encoder)."""
        return self.top[i - self.branch] if i >= self.branch else self.st[0].auto_model.encoder.layer[i]

    def encode(self, texts: Sequence[str], show_progress: bool = False, *, plain: bool = True,
               exact: bool | None = None) -> tuple[np.ndarray | None, np.ndarray]:
        """``(plain, tuned)``: float32 unit vectors (n, d) of both encoders, in input order,
        batched as :func:`~laser_fast.sampling.embed.encode_texts` batches (the same vectors).
        ``plain=False`` runs the fine-tuned encoder alone (6 layers) and returns ``(None, tuned)``;
        ``exact`` as in :func:`~laser_fast.sampling.embed.encode_texts`."""
        from laser_fast.runtime.progress import progress_bar

        enc = _Branches(self, plain, exact)
        ids, off = enc.tokenize(texts)
        with progress_bar(total=len(texts), desc="embed", unit="rec", show=show_progress) as bar:
            both = enc.run(texts, ids, off, bar=bar)
        if not plain:
            return None, both
        d = enc.dim // 2
        return both[:, :d], both[:, d:]


class _Stop(Exception):
    """Raised by the recording hook to end a forward at the branch layer."""


class _Branches(_Encoder):
    """:class:`~laser_fast.sampling.embed._Encoder` whose batches yield both vectors side by side."""

    def __init__(self, owner: BranchedEncoder, plain: bool = True, exact: bool | None = None):
        super().__init__(owner.st, None, None, exact=exact)
        self.owner = owner
        self.plain = plain
        if plain:
            self.dim *= 2

    def forward_batch(self, texts, ids, off, rows) -> np.ndarray:
        import torch

        if not self.fast:  # never for the bundled MiniLM, whose tokenization _Encoder checks on the first texts
            raise ModelLoadError("the classifier's encoder preprocesses texts in its own way, so its fine-tuned layers "
                                 "cannot branch off the plain pass; use `--classifier minilm` or retrain the head")
        seen = self.owner._seen
        f = {k: (v.to(self.m.device) if isinstance(v, torch.Tensor) else v) for k, v in self._features(ids, off, rows).items()}
        seen.on, seen.inputs, seen.stop = True, None, not self.plain
        plain = None
        try:
            try:
                plain = self.m(f)["sentence_embedding"].float()
            except _Stop:
                pass
            if seen.inputs is None:
                raise ModelLoadError(f"the classifier's encoder never called its layer {self.owner.branch} as a module, so the "
                                     "fine-tuned layers cannot branch off it; use `--classifier minilm` or retrain the head")
            args, kwargs = seen.inputs
        finally:
            seen.on, seen.inputs, seen.stop = False, None, False
        hidden, rest = (args[0], args[1:]) if args else (kwargs["hidden_states"], ())
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        for layer in self.owner.top:
            out = layer(hidden, *rest, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        feats = {**f, "token_embeddings": hidden}
        for module in list(self.m)[1:]:  # pooling (and normalisation) as the plain model applies them
            feats = module(feats)
        tuned = torch.nn.functional.normalize(feats["sentence_embedding"].float(), p=2, dim=1)
        if plain is None:
            return tuned.cpu().numpy()
        return torch.cat([torch.nn.functional.normalize(plain, p=2, dim=1), tuned], dim=1).cpu().numpy()
