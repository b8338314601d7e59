"""Token-budget batching: length-sorted batches under a padded-token budget."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from laser_fast.errors import LaserError
from laser_fast.runtime.progress import progress_bar

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------

#: least share of real tokens a padded batch keeps (:func:`plan_batches`); a packed batch, whose
#: padding costs no compute, plans with 0
MIN_FILL = 0.9


def new_stats() -> dict[str, float]:
    """Zeroed scorer stats: records, forward_passes, tokens, padded_tokens, seconds,
    ``truncated`` (inputs cut to the scorer's ``max_length`` before scoring) and ``oom_splits``
    (batches run again as two halves after running out of GPU memory)."""
    return {"records": 0, "forward_passes": 0, "tokens": 0, "padded_tokens": 0, "seconds": 0.0, "truncated": 0, "oom_splits": 0}


def plan_batches(lengths, batch_tokens: int, max_batch_size: int, *, min_fill: float = MIN_FILL,
                 min_rows: int = 4) -> list[np.ndarray]:
    """Pack sequences into batches under a token budget.

    Sequences are sorted by length (stable, longest first so an out-of-memory shows at once) and
    cut into runs where ``len(batch) * longest_in_batch <= batch_tokens`` and
    ``len(batch) <= max_batch_size``. A run also ends before the share of real (non-padding)
    tokens in it would fall below ``min_fill``, once it holds ``min_rows`` sequences: in the
    short tail of a length distribution the budget admits many rows of very different lengths,
    and padding them to the longest would waste compute. A sequence longer than the budget gets
    a batch of its own.

    Args:
        lengths: token count of each sequence.
        batch_tokens: padded-token budget per forward.
        max_batch_size: most sequences per forward (1 = one per forward).
        min_fill: least share of real tokens a batch of more than ``min_rows`` rows keeps.
        min_rows: rows a batch may always take, whatever its fill.

    Returns:
        Index arrays (int64) into ``lengths``; together they hold every index exactly once.
    """
    lens = np.asarray(lengths, dtype=np.int64).ravel()
    budget = max(1, int(batch_tokens))
    cap = max(1, int(max_batch_size))
    order = np.argsort(-lens, kind="stable")
    sorted_lens = np.maximum(lens[order], 1)
    batches: list[np.ndarray] = []
    start = 0
    n = order.size
    while start < n:
        longest = int(sorted_lens[start])  # sorted descending: the first is the longest
        size = min(cap, max(1, budget // longest), n - start)
        if size > min_rows:
            # fill after taking j + 1 rows; it only falls as rows get shorter
            fill = np.cumsum(sorted_lens[start:start + size]) / (longest * np.arange(1, size + 1))
            bad = np.flatnonzero(fill[min_rows:] < min_fill)
            if bad.size:
                size = min_rows + int(bad[0])
        batches.append(order[start:start + size].astype(np.int64))
        start += size
    return batches


def oom_halves(rows: np.ndarray, error: str, lens: np.ndarray, stats: dict | None, *, desc: str, unit: str, fix: str,
               retry_hint: str = "", padded: Callable[[np.ndarray], int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two halves a batch of ``rows`` runs again as after its forward ran out of GPU memory.

    Token budgets are planned from the free memory, not measured, so a batch may not fit (other
    work took memory meanwhile); a row's result does not depend on its batch. Call this after the
    ``except`` block, with the error's text, not the error (its traceback holds the failed
    forward's tensors); the cache is emptied here. ``stats`` counts the split (``oom_splits``),
    and the halves' forwards and padding replace the batch's there (the caller counts the
    batch's once the halves are back).

    Args:
        rows: the batch's row indices into ``lens`` (token counts).
        error: the ``torch.cuda.OutOfMemoryError``'s text (its first line goes into the messages).
        desc, unit: what runs and what one row is, for the messages.
        fix: what to do when a single row does not fit.
        retry_hint: appended to the warning.
        padded: padded tokens of a batch (default: rows times the longest).

    Raises:
        LaserError: a single row does not fit.
    """
    import torch

    torch.cuda.empty_cache()
    first_line = (error.splitlines() or [""])[0][:200]
    if rows.size == 1:
        raise LaserError(f"{desc}: one {unit} of {int(lens[rows[0]]):,} tokens does not fit in the GPU's free memory ({first_line}); {fix}")
    logger.warning("%s: a batch of %d %ss (%d tokens) ran out of GPU memory; it runs again as two halves%s",
                   desc, rows.size, unit, int(lens[rows].sum()), retry_hint)
    half = rows.size // 2
    first, second = rows[:half], rows[half:]
    if stats is not None:
        pad = padded or (lambda r: r.size * int(lens[r].max()))
        stats["oom_splits"] = stats.get("oom_splits", 0) + 1
        stats["forward_passes"] += 1
        stats["padded_tokens"] += pad(first) + pad(second) - pad(rows)
    return first, second


def run_batched(
    seqs: Sequence[Sequence[int]],
    fn: Callable[[Any, Any, np.ndarray, np.ndarray], Sequence[Any]],
    *,
    batch_tokens: int,
    max_batch_size: int,
    pad_id: int,
    device: str,
    stats: dict | None = None,
    show_progress: bool = False,
    desc: str = "score",
    min_fill: float = MIN_FILL,
) -> list[Any]:
    """Run ``fn`` over right-padded token-budget batches and return its per-sequence results in
    the original order.

    Args:
        seqs: token ids per sequence; empty sequences are not run (their result is None).
        fn: ``fn(input_ids, attention_mask, lengths, index) -> per-row results`` where the tensors
            are ``(B, L)`` on ``device``, ``lengths`` the real lengths and ``index`` the positions
            in ``seqs`` of the rows; results must already be on the CPU.
        batch_tokens, max_batch_size: see :func:`plan_batches`.
        pad_id: token id used for padding (masked out).
        device: torch device.
        stats: dict updated in place (forward_passes, tokens, padded_tokens, seconds).
        show_progress: a tqdm bar over tokens.
        min_fill: :func:`plan_batches`' fill rule; 0 turns it off (padding-free forwards, whose
            padding costs no compute: fewer, larger forwards under the same padded-token bound).

    On the CPU each forward runs on one torch thread, several side by side
    (:func:`one_thread_per_forward`), so a result does not depend on torch's thread count (a Ray
    actor runs one thread, the local engine all cores). ``fn`` must not tokenize.

    Returns:
        list of ``len(seqs)`` results (None for empty sequences).
    """
    import torch

    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    todo = np.flatnonzero(lens > 0)
    results: list[Any] = [None] * len(seqs)
    if todo.size == 0:
        return results
    batches = [todo[b] for b in plan_batches(lens[todo], batch_tokens, max_batch_size, min_fill=min_fill)]
    bar = progress_bar(total=int(lens.sum()), desc=desc, unit="tok", unit_scale=True, show=bool(show_progress))

    def forward(idx: np.ndarray):
        bl = lens[idx]
        width = int(bl.max())
        ids = np.full((idx.size, width), pad_id, dtype=np.int64)
        mask = np.zeros((idx.size, width), dtype=np.int64)
        for k, i in enumerate(idx):
            ids[k, :bl[k]] = seqs[i]
            mask[k, :bl[k]] = 1
        try:
            with torch.inference_mode():  # thread-local: set in each worker thread
                return fn(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device), bl, idx)
        except torch.cuda.OutOfMemoryError as e:
            oom = str(e)  # the error itself would keep the failed forward's tensors alive (its traceback)
        del ids, mask
        first, second = oom_halves(idx, oom, lens, stats, desc=desc, unit="sequence",
                                   fix="lower the model's max_length, or free the GPU", retry_hint=" (lower --batch-tokens to avoid the retry)")
        return list(forward(first)) + list(forward(second))

    t0 = time.perf_counter()
    try:
        with one_thread_per_forward(str(device).startswith("cpu")) as run_all:
            for idx, out in run_all(forward, batches):
                bl = lens[idx]
                for k, i in enumerate(idx):
                    results[i] = out[k]
                if stats is not None:
                    stats["forward_passes"] += 1
                    stats["tokens"] += int(bl.sum())
                    stats["padded_tokens"] += int(idx.size * int(bl.max()))
                bar.update(int(bl.sum()))
    finally:
        bar.close()
        if stats is not None:
            stats["seconds"] += time.perf_counter() - t0
    return results


@contextlib.contextmanager
def one_thread_per_forward(on: bool, side_by_side: bool = True) -> Iterator[Callable]:
    """A runner ``run_all(fn, batches)`` yielding ``(batch, fn(batch))`` in order. With ``on``,
    torch runs each forward on one thread and, with ``side_by_side``, up to torch's thread count
    of forwards run at once in Python threads (torch releases the GIL inside its kernels), so a
    batch's result does not depend on the thread count and the cores stay busy; torch's thread
    count is restored after. ``side_by_side=False`` where ``fn`` tokenizes: a fast tokenizer
    used from two threads at once can fail ("Already borrowed").

    With ``on`` (the CPU), the C heap's free pages go back to the OS between forwards, at most
    every ``TRIM_EVERY_S`` (:class:`~laser_fast.runtime.memory.HeapTrim`): batches of
    many shapes leave freed activations scattered through glibc's heap, which it keeps. Measured
    with the bundled classifier head (2 Intel Xeon cores with AVX-512 and AMX, float32): after 8,000 instructions on one thread a
    worker held 1,917 MB, of which ``malloc_trim`` returned 960 MB; on both cores, 2,000 texts of
    3-202 words peaked at 944-951 MB instead of 1,500-1,513 MB, in 25.6-26.3 s against 23.2-25.8 s
    (two runs each)."""
    def one_by_one(fn, batches):
        return ((b, fn(b)) for b in batches)

    if not on:
        yield one_by_one
        return
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from laser_fast.runtime.memory import HeapTrim

    def trimmed(run):
        def run_all(fn, batches):
            trim = HeapTrim()
            for b, out in run(fn, batches):
                trim()
                yield b, out
        return run_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads <= 1 or not side_by_side:
            yield trimmed(one_by_one)
        else:
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="laser-forward")

            def side_by_side_run(fn, batches):
                batches = list(batches)
                return zip(batches, pool.map(fn, batches))

            try:
                yield trimmed(side_by_side_run)
            finally:  # on an error the batches not yet started are dropped, not run first
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# budgets from free GPU memory
# --------------------------------------------------------------------------------------

def head_dim_of(config) -> int | None:
    """The attention head size of a transformers config: ``head_dim``, else hidden size over heads
    (None when the config names neither)."""
    cfg = getattr(config, "text_config", None) or config
    hd = getattr(cfg, "head_dim", None)
    if not hd and getattr(cfg, "num_attention_heads", None) and getattr(cfg, "hidden_size", None):
        hd = cfg.hidden_size // cfg.num_attention_heads
    return int(hd) if hd else None


def activation_bytes_per_token(config, *, kv_cache: bool = False, bytes_per_value: int = 2) -> int:
    """Bytes of GPU memory one token needs during a forward of a decoder (or encoder) layer stack.

    The live tensors of one layer at its widest point (residual, norm, q/k/v, attention output;
    gate, up, activation and down projections of the MLP): about ``6 * hidden + 3 * intermediate``
    values per token; with ``kv_cache`` the keys and values of every layer are added
    (``2 * layers * kv_heads * head_dim``; for latent attention the cache this transformers keeps,
    :func:`~laser_fast.runtime.model_memory.caches_latent`, plus one layer's expanded keys and
    values).
    """
    cfg = getattr(config, "text_config", None) or config
    h = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 1024)
    inter = int(getattr(cfg, "intermediate_size", 0) or 4 * h)
    per = 6 * h + 3 * inter
    if kv_cache:
        from laser_fast.runtime.model_memory import caches_latent, config_widths

        w = config_widths(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg)))
        layers = w["layers"] or 1
        if w["latent_width"] and caches_latent(w["model_type"]):
            per += 2 * layers * w["latent_width"] + 2 * w["kv_width"]
        else:
            per += 2 * layers * (w["kv_width"] or h)
    return per * int(bytes_per_value)


#: The share of its GPU this process holds (a Ray actor given a fraction of one); budgets plan
#: within it (:func:`hold_gpu_share`).
_GPU_SHARE = 1.0


def hold_gpu_share(share: float) -> None:
    """Say that this process holds ``share`` of its GPU (0 < share < 1: a Ray actor of a
    fractional GPU; anything else: the whole GPU). :func:`cuda_batch_tokens` then plans with at
    most that share of the GPU's memory, less what this process already holds, instead of all
    the memory free now, which the other actors on the GPU are about to take too."""
    global _GPU_SHARE
    _GPU_SHARE = float(share) if 0 < float(share) < 1 else 1.0


def cuda_batch_tokens(model, *, kv_cache: bool = False, share: float = 0.5, floor: int = 8192,
                      ceiling: int = 262144, free_bytes: int | None = None) -> int:
    """A token budget per batch from the free GPU memory and the model's shape.

    ``share`` of the memory free now (after the model is loaded) divided by
    :func:`activation_bytes_per_token`, rounded down to a power of two and kept within
    ``[floor, ceiling]``. On an H200 with an 8B model this gives the ceiling; on a 24 GB card
    with the same model, 16,384 tokens. The power of two keeps the budget, and so the batches
    and the bits of every score, the same from run to run when a little more or less memory is
    free; ``batch_tokens`` pins it for byte-identical runs on a GPU that other work shares.

    Args:
        model: a loaded model (its ``config`` and dtype are read).
        kv_cache: count the key/value cache too (generation).
        free_bytes: the free memory to plan with (None = ``torch.cuda.mem_get_info`` on the
            model's device, plus the memory torch's allocator has cached there but not in use;
            in a process holding a share of its GPU, :func:`hold_gpu_share`, at most that share
            of the GPU's memory less what this process has allocated).
    """
    bpv = 2
    try:
        p = next(model.parameters())
        bpv = int(p.element_size())
        dev = p.device
    except (StopIteration, AttributeError, TypeError):
        dev = None
    if free_bytes is None:
        import torch

        if dev is None or dev.type != "cuda":
            return int(floor)
        # what the driver has free, plus what torch's caching allocator holds unused (the cache of an
        # earlier model or batch in this process, which the driver counts as taken)
        free_bytes = int(torch.cuda.mem_get_info(dev)[0])
        free_bytes += max(0, int(torch.cuda.memory_reserved(dev)) - int(torch.cuda.memory_allocated(dev)))
        if _GPU_SHARE < 1:  # the other actors on this GPU take the rest
            mine = int(_GPU_SHARE * torch.cuda.get_device_properties(dev).total_memory) - int(torch.cuda.memory_allocated(dev))
            free_bytes = min(free_bytes, max(0, mine))
    per = activation_bytes_per_token(model.config, kv_cache=kv_cache, bytes_per_value=bpv)
    bt = int(share * free_bytes) // max(1, per)
    bt = 1 << (bt.bit_length() - 1) if bt > 0 else 0
    return int(max(floor, min(ceiling, bt)))
