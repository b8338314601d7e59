"""Preference data (issue 19): DPO pairs and KTO pairs, selected as units.

Inputs in TRL's formats, detected per file (or ``--schema dpo|kto``; the reference's
``type_dataset: dpo|kto`` config key checks them):

* DPO: ``prompt`` (a string or a list of messages; optional) with ``chosen`` and ``rejected``
  (strings, or lists of messages). Without ``prompt`` (TRL's implicit prompt) ``chosen`` and
  ``rejected`` are whole conversations sharing every turn but their last answer.
* KTO: ``prompt`` with ``completion`` and a boolean ``label``, in the layout the reference's KTO
  configs read: a desirable completion (``label: true``) followed by an undesirable one of the
  same prompt (``label: false``); each such couple is one unit.

One pool row per unit: its conversation is the prompt with the chosen (desirable) answer, so
classification, difficulty, language, dedup, decontamination and embeddings see the prompt and
the chosen answer; the rejected answer rides along in the ``_rejected`` column. The quality
scorers run on both answers (:func:`rejected_records`), and the unit's quality is the margin,
chosen minus rejected, per quality metric (a pair whose chosen answer is much better than its
rejected one teaches the most); the preference then combines it with the prompt's difficulty as
for SFT records. The reference itself keeps one line-aligned score per unit; the margin is this
project's reading of "quality of a pair". The output is the units in TRL's format, as they came
(prompt/chosen/rejected, or the two KTO lines), plus the provenance columns.
"""
from __future__ import annotations

import json

import numpy as np
import polars as pl

from laser_fast.errors import LaserError
from laser_fast.io.schemas import pair_sides

#: the preference-data schemas
PAIR_SCHEMAS = ("dpo", "kto")
#: the fields of a unit in TRL's format, per schema (train.jsonl)
TRL_FIELDS = {"dpo": ("prompt", "chosen", "rejected"), "kto": ("prompt", "completion", "label")}
#: pool columns of preference units: the rejected answer's text; KTO: the undesirable line
PAIR_COLUMNS = ("_rejected", "_rejected_record")
#: score columns of units: each quality metric of both answers (``chosen_quality``, ``rejected_quality``, ...)
PAIR_SCORE_PREFIXES = ("chosen_", "rejected_")


def pair_format(records: pl.DataFrame) -> str | None:
    """``"dpo"``, ``"kto"`` or None (SFT records) for a pool with :func:`attach_pairs` applied."""
    if "_rejected" not in records.columns or records.height == 0:
        return None
    return str(records["schema"][0])


def attach_pairs(records: pl.DataFrame, type_dataset: str | None = None) -> pl.DataFrame:
    """The pool as units: DPO rows get their rejected answer (``_rejected``); KTO rows are joined
    in couples (the desirable line keeps the unit, the undesirable one goes to ``_rejected_record``).

    Raises:
        LaserError: pairs mixed with SFT records or DPO with KTO, a KTO line without its partner,
            or a pool that is not of ``type_dataset`` (the reference's config key).
    """
    schema = records["schema"]
    is_pair = schema.is_in(PAIR_SCHEMAS).to_numpy()
    kinds = sorted(set(schema.unique().to_list()))
    want = None if type_dataset in (None, "") else str(type_dataset).lower()
    if want == "sft" and is_pair.any() or want in PAIR_SCHEMAS and kinds != [want]:
        raise LaserError(f"the config's type_dataset is '{want}', but the inputs hold {', '.join(kinds)} records; give {want.upper()} "
                         + (f"files ({' / '.join(TRL_FIELDS[want])} fields)" if want in TRL_FIELDS else "conversations") + " or drop type_dataset")
    if not is_pair.any():
        return records
    if not is_pair.all() or len(kinds) > 1:
        sft = records["source"][int(np.argmin(is_pair))] if not is_pair.all() else None
        raise LaserError(f"a pool holds one kind of record, got {', '.join(kinds)}" + (f" (e.g. {sft})" if sft else "")
                         + ": select preference pairs and SFT conversations in separate runs")
    extras = [json.loads(e) for e in records["extra"].to_list()]
    if kinds == ["dpo"]:
        rejected = [pair_sides(e, "chosen", "rejected")[2] for e in extras]
        return records.with_columns(pl.Series("_rejected", rejected, dtype=pl.String), pl.lit(None, dtype=pl.String).alias("_rejected_record"))
    return _kto_units(records, extras)


def _kto_units(records: pl.DataFrame, extras: list[dict]) -> pl.DataFrame:
    """KTO lines joined in (desirable, undesirable) couples of one prompt, as the reference reads them."""
    src = records["source"].to_list()
    ids = records["data_id"].to_list()
    group = records["_source_index"].to_list() if "_source_index" in records.columns else [0] * records.height
    keep, rejected, negative = [], [], []
    hint = ("KTO inputs come in couples, as the reference's KTO configs read them: a desirable completion (label true) "
            "directly followed by an undesirable one (label false) of the same prompt")
    i, n = 0, records.height
    while i < n:
        if extras[i]["label"] is not True:
            raise LaserError(f"{src[i]}: a KTO record with label false has no desirable partner before it. {hint}")
        j = i + 1
        if j >= n or group[j] != group[i] or extras[j]["label"] is not False:
            raise LaserError(f"{src[i]}: a KTO record with label true is not followed by its undesirable partner. {hint}")
        (p_i, _, _), (p_j, ans_j, _) = pair_sides(extras[i], "completion", None), pair_sides(extras[j], "completion", None)
        if p_i != p_j:
            raise LaserError(f"{src[j]}: its prompt differs from the desirable record before it ({src[i]}). {hint}")
        keep.append(i)
        rejected.append(ans_j)
        negative.append(json.dumps({"data_id": ids[j], "source": src[j], "fields": extras[j]}, ensure_ascii=False))
        i += 2
    return records[keep].with_columns(pl.Series("_rejected", rejected, dtype=pl.String), pl.Series("_rejected_record", negative, dtype=pl.String))


def rejected_records(records: pl.DataFrame) -> pl.DataFrame:
    """The units' rejected conversations: the same rows with the last answer replaced by
    ``_rejected`` (``data_id`` gets ``:rejected``, so the score cache keeps both sides)."""
    rej = pl.col("_rejected")
    last = pl.struct(pl.lit("assistant").alias("role"), rej.alias("content"))
    head = pl.col("messages").list.len() - 1
    return records.with_columns(
        pl.col("messages").list.head(head).list.concat(pl.concat_list(last)).alias("messages"),
        pl.col("responses").list.head(pl.col("responses").list.len() - 1).list.concat(pl.concat_list(rej)).alias("responses"),
        rej.alias("response"),
        (pl.col("data_id") + ":rejected").alias("data_id"),
    )


def unit_rows(d: dict, rejected_record: str | None) -> list[dict]:
    """A selected unit's output rows in TRL's format: the provenance-bearing dict of
    :func:`laser_fast.io.output.iter_output_rows` without ``messages``; KTO: then the
    undesirable line (its own fields, ``data_id`` and location, the unit's provenance)."""
    d.pop("messages", None)
    if not rejected_record:
        return [d]
    neg = json.loads(rejected_record)
    prov = {k: v for k, v in d.items() if k not in set(TRL_FIELDS["kto"]) and k not in neg["fields"]}
    second = {**neg["fields"], **prov, "data_id": neg["data_id"], "input_location": neg["source"]}
    return [d, second]


def pair_facts(records: pl.DataFrame) -> dict | None:
    """The manifest's ``pairs`` entry: the format and the number of units (None for SFT pools)."""
    fmt = pair_format(records)
    return None if fmt is None else {"format": fmt, "units": records.height, "records_read": records.height * (2 if fmt == "kto" else 1)}
