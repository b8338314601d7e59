"""Benchmark decontamination before scoring (issue 19): records that contain a benchmark test
item are left out, each naming the item it matched, so the trained model is never evaluated on
what it was trained on.

``--decontaminate FILE|DIR ...`` names benchmark test sets (JSONL, JSONL.gz or Parquet; a folder:
every such file in it). An item's texts are its prompt fields (``prompt``, ``instruction``,
``question``, ``problem``, ``input``, ``query``, ``text``) and answer fields (``output``,
``answer``, ``response``, ``solution``, ``canonical_solution``, ``completion``, ``target``). A
record is contaminated when:

* its instruction or response shares a word n-gram (13 words by default, ``--decontaminate-ngram``;
  the common practice of GPT-3 and later) with a benchmark text, or
* its instruction, normalised, equals a benchmark prompt (short prompts have no 13-gram).

Texts are normalised as for deduplication (:func:`~laser_fast.sampling.dedup.normalized_text`:
NFKC, lower case, punctuation and symbols removed, whitespace collapsed), so re-spaced or
re-punctuated copies match too. n-grams are built and hashed column-wise in polars
(:func:`~laser_fast.sampling.dedup.word_ngrams`; no Python object per n-gram), in chunks of records.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from laser_fast.errors import InputError
from laser_fast.runtime.stage import Resources, StageResult, StageSpec, StageStats
from laser_fast.sampling.dedup import normalized_text, word_ngrams

PROMPT_FIELDS = ("prompt", "instruction", "question", "problem", "input", "query", "text")
ANSWER_FIELDS = ("output", "answer", "response", "solution", "canonical_solution", "completion", "target")
_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_CHUNK = 50_000


def ngram_hashes(texts: pl.Series, n: int) -> pl.DataFrame:
    """``(row, h)``: the 64-bit hash of every word n-gram of each normalised text (texts with fewer
    than ``n`` words give none)."""
    return word_ngrams(texts, n, 7)


def _files(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        q = Path(p).expanduser()
        if q.is_dir():
            found = sorted(f for f in q.iterdir() if f.is_file() and f.name.lower().endswith(_SUFFIXES))
            if not found:
                raise InputError(str(q), "holds no benchmark file (.jsonl, .jsonl.gz, .json or .parquet)", "Pass the test set files")
            out += found
        elif q.is_file():
            out.append(q)
        else:
            raise InputError(str(q), "benchmark file not found", "Check the --decontaminate path")
    return out


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path) if path.name.lower().endswith(".parquet") else pl.read_ndjson(path, infer_schema_length=None)
    except Exception as e:  # noqa: BLE001 - polars' parse errors: one clear message
        raise InputError(str(path), f"cannot read the benchmark file ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                         "Give JSONL or Parquet with prompt and/or answer fields") from None


class Benchmarks:
    """The n-grams and normalised prompts of benchmark test sets.

    Args:
        paths: files or folders (see the module text).
        n: words per n-gram.

    Raises:
        InputError: a path that does not exist or holds no benchmark, or a file with no prompt or
            answer field.
    """

    def __init__(self, paths: Sequence[str], n: int = 13):
        self.n = int(n)
        ids, texts, prompts = [], [], []
        self.files: dict[str, int] = {}
        for f in _files(paths):
            df = _read(f)
            fields = [c for c in (*PROMPT_FIELDS, *ANSWER_FIELDS) if c in df.columns and df.schema[c] == pl.String]
            if not fields:
                raise InputError(str(f), f"has no prompt or answer field (columns: {', '.join(df.columns[:12])})",
                                 f"Name the texts one of: {', '.join(PROMPT_FIELDS + ANSWER_FIELDS)}")
            key = df["data_id"].cast(pl.String) if "data_id" in df.columns else (df["id"].cast(pl.String) if "id" in df.columns else None)
            labels = [f"{f.name}:{k if key is not None and key[i] is not None else i}" for i, k in enumerate(key if key is not None else range(df.height))]
            self.files[f.name] = df.height
            for c in fields:
                col = df[c].fill_null("")
                ids += labels
                texts += col.to_list()
                if c in PROMPT_FIELDS:
                    prompts.append(pl.DataFrame({"label": labels, "t": col}))
        self.labels = np.asarray(ids, dtype=object)
        grams = ngram_hashes(pl.Series(texts, dtype=pl.String), self.n)
        first = grams.group_by("h", maintain_order=True).agg(pl.col("row").first())
        self._grams = first.rename({"row": "item"})
        p = pl.concat(prompts) if prompts else pl.DataFrame({"label": [], "t": []}, schema={"label": pl.String, "t": pl.String})
        p = p.select("label", normalized_text(pl.col("t")).alias("t")).filter(pl.col("t") != "")
        self._prompts = p.group_by("t", maintain_order=True).agg(pl.col("label").first())
        self.items = int(sum(self.files.values()))

    def match(self, instructions: pl.Series, responses: pl.Series) -> np.ndarray:
        """Per record, the label (``file:id``) of the benchmark item it contains, or None."""
        n = len(instructions)
        out = np.full(n, None, dtype=object)
        for s in range(0, n, _CHUNK):
            ins, res = instructions.slice(s, _CHUNK), responses.slice(s, _CHUNK)
            hits = (pl.concat([ngram_hashes(ins, self.n), ngram_hashes(res, self.n)])
                    .join(self._grams, on="h", how="inner").group_by("row").agg(pl.col("item").min()))
            for row, item in zip(hits["row"].to_list(), hits["item"].to_list()):
                out[s + row] = self.labels[item]
            exact = (pl.DataFrame({"t": ins}).with_row_index("row").select("row", normalized_text(pl.col("t")).alias("t"))
                     .join(self._prompts, on="t", how="inner"))
            for row, label in zip(exact["row"].to_list(), exact["label"].to_list()):
                if out[s + row] is None:
                    out[s + row] = label
        return out


DECONTAMINATE = StageSpec("decontaminate", "laser_fast.sampling.decontam:decontaminate_stage", reads=("instruction", "response"),
                          writes=("contaminated_by",), resources=Resources(num_cpus=1, row_wise=False))


def decontaminate_stage(records: pl.DataFrame, opts, *, workdir=None, columns: Mapping[str, np.ndarray] | None = None) -> StageResult:
    """``contaminated_by`` per record (None: clean) when ``opts.decontaminate`` names benchmarks;
    stats: the benchmarks, their items and the matches per benchmark file and per source."""
    if not opts.decontaminate:
        return StageResult({}, StageStats("decontaminate", benchmarks=[]))
    bench = Benchmarks(opts.decontaminate, opts.decontaminate_ngram)
    hit = bench.match(records["instruction"], records["response"])
    flagged = hit != None  # noqa: E711 - elementwise
    per_file: dict[str, int] = {}
    per_origin: dict[str, int] = {}
    if flagged.any():
        for lab in hit[flagged]:
            name = str(lab).rsplit(":", 1)[0]
            per_file[name] = per_file.get(name, 0) + 1
        vals, cnt = np.unique(records["origin"].to_numpy()[flagged].astype(str), return_counts=True)
        per_origin = {str(v): int(c) for v, c in zip(vals, cnt)}
    return StageResult({"contaminated_by": hit}, StageStats("decontaminate", benchmarks=bench.files, ngram=bench.n,
                                                            contaminated=int(flagged.sum()), per_benchmark=per_file, per_origin=per_origin))
