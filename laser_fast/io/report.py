"""``report.html``: the category mix before/after against the target, score distributions per
category, cluster sizes, and selected vs not — plots embedded as PNG images, no network needed.

The page is deterministic for the same decisions (PNG metadata stripped, fixed fonts/sizes), so
two identical runs give byte-identical reports.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from laser_fast.categories import CATEGORIES

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.small{color:#666;font-size:.85em}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(header: list[str], rows: list[list]) -> str:
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _fmt(x) -> str:
    if isinstance(x, float):
        return "" if not np.isfinite(x) else f"{x:.4g}"
    return str(x)


def _removed_rows(manifest: dict) -> list[list]:
    """Rows of what deduplication and decontamination left out: per mode or benchmark file, with
    the counts per category and per source."""
    counts = manifest.get("counts") or {}
    rows = []
    d = manifest.get("dedup") or {}
    if d.get("duplicates"):
        rows.append([f"duplicates ({d.get('mode')})", int(d["duplicates"]), json.dumps(counts.get("duplicate_excluded") or {}),
                     json.dumps(d.get("per_origin") or {})])
    c = manifest.get("decontamination") or {}
    if c.get("contaminated"):
        per = ", ".join(f"{k}: {v}" for k, v in (c.get("per_benchmark") or {}).items())
        rows.append([f"benchmark items ({per}; {c.get('ngram')}-grams)", int(c["contaminated"]),
                     json.dumps(counts.get("contaminated_excluded") or {}), json.dumps(c.get("per_origin") or {})])
    return rows


def build_report(decisions: pl.DataFrame, manifest: dict) -> str:
    """Return the report page as a string (see module docstring)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "laser", "font.size": 9})
    cats = [c for c in CATEGORIES if c in set(decisions["category"].to_list())] + sorted(set(decisions["category"].to_list()) - set(CATEGORIES))
    status = decisions["status"].to_numpy()
    cat = decisions["category"].to_numpy()
    sel = status == "selected"
    n_sel = max(int(sel.sum()), 1)
    n_pool = max(decisions.height, 1)
    targets = manifest.get("targets", {})
    one = set(targets) == {"all"}  # --proportions none: one stratum over every category, no target per category
    unit = str(manifest.get("budget", {}).get("unit") or "records")
    tsum = max(sum(targets.values()), 1) if targets else 1
    tokens = None  # with a token budget, the selected share is one of tokens, as the targets are
    if unit == "tokens" and {"inst_length", "resp_length"} <= set(decisions.columns):
        tokens = (decisions["inst_length"].fill_null(0) + decisions["resp_length"].fill_null(0)).to_numpy().astype(float)

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>laser_fast report</title><style>{_STYLE}</style></head><body>"]
    opts = manifest.get("options", {})
    parts.append(f"<h1>laser_fast selection report{(': ' + html.escape(str(manifest.get('name')))) if manifest.get('name') else ''}</h1>")
    parts.append(
        f"<p>Strategy <b>{html.escape(str(opts.get('strategy')))}</b>, mode <b>{html.escape(str(opts.get('mode')))}</b>, "
        f"budget {manifest.get('budget', {}).get('value')} {manifest.get('budget', {}).get('unit')}, seed {manifest.get('seed')}. "
        f"Selected {int(sel.sum())} of {decisions.height} records.</p>"
    )

    # 1. category mix
    rows = []
    pool_share, sel_share, tgt_share = [], [], []
    sel_tokens = max(float(tokens[sel].sum()), 1.0) if tokens is not None else None
    for c in cats:
        n_c = int((cat == c).sum())
        s_c = int((sel & (cat == c)).sum())
        t_c = int(targets.get(c, 0)) if targets else 0
        share = float(tokens[sel & (cat == c)].sum()) / sel_tokens if tokens is not None else s_c / n_sel
        row = [c, n_c, f"{100 * n_c / n_pool:.1f}%", "-" if one else t_c, s_c]
        if tokens is not None:
            row.append(int(tokens[sel & (cat == c)].sum()))
        rows.append([*row, f"{100 * share:.1f}%"])
        pool_share.append(n_c / n_pool)
        sel_share.append(share)
        tgt_share.append(t_c / tsum)
    parts.append("<h2>Category mix</h2>")
    if one:
        parts.append(f"<p>One stratum over every category (<code>--proportions none</code>): target {int(targets['all'])} {unit} in all.</p>")
    head = ["category", "pool", "pool share", f"target ({unit})", "selected"]
    parts.append(_table([*head, *(["selected tokens"] if tokens is not None else []), f"selected share ({'tokens' if tokens is not None else 'records'})"], rows))
    fig, ax = plt.subplots(figsize=(8, 3.2))
    x = np.arange(len(cats))
    ax.bar(x - 0.27, pool_share, 0.27, label="pool", color="#9db4c0")
    if not one:
        ax.bar(x, tgt_share, 0.27, label=f"target ({unit})", color="#5c6b73")
    ax.bar(x + 0.27, sel_share, 0.27, label="selected", color="#e07a5f")
    ax.set_xticks(x, cats, rotation=20)
    ax.set_ylabel("share")
    ax.legend()
    parts.append(f"<img alt='category mix' src='{_png(fig)}'>")

    # status table
    st_vals, st_cnt = np.unique(status.astype(str), return_counts=True)
    parts.append("<h2>What happened to every record</h2>")
    parts.append(_table(["status", "records"], [[a, int(b)] for a, b in zip(st_vals, st_cnt)]))
    sb = decisions.filter(pl.col("status") == "selected")["selected_by"].to_numpy().astype(str)
    if sb.size:
        v, cnt = np.unique(sb, return_counts=True)
        parts.append(_table(["selected_by", "records"], [[a, int(b)] for a, b in zip(v, cnt)]))
    removed = _removed_rows(manifest)
    if removed:
        parts.append("<h2>Removed before scoring</h2>")
        parts.append(_table(["what", "records", "per category", "per source"], removed))
    red = manifest.get("redistribution") or []
    if red:
        parts.append("<p class='small'>Redistribution of short categories: " + html.escape(json.dumps(red)) + "</p>")

    # 2. score distributions per category: selected vs not
    metrics = [m for m in ("preference", "quality", "complexity", "difficulty", "if_quality", "process_reward", "code_quality", "last_resp_length") if m in decisions.columns]
    parts.append("<h2>Score distributions per category (selected vs not selected)</h2>")
    elig = np.isin(status, ["selected", "not_selected"])
    for m in metrics:
        v = decisions[m].cast(pl.Float64).to_numpy()
        if not np.isfinite(v[elig]).any():
            continue
        fig, axes = plt.subplots(1, len(cats), figsize=(min(2.2 * len(cats), 15), 2.2), squeeze=False)
        for ax, c in zip(axes[0], cats):
            m_c = (cat == c) & elig & np.isfinite(v)
            a, b = v[m_c & sel], v[m_c & ~sel]
            lo_hi = (np.min(v[m_c]), np.max(v[m_c])) if m_c.any() else (0, 1)
            bins = np.linspace(lo_hi[0], lo_hi[1] if lo_hi[1] > lo_hi[0] else lo_hi[0] + 1, 21)
            ax.hist(b, bins=bins, color="#9db4c0", label="not selected")
            ax.hist(a, bins=bins, color="#e07a5f", alpha=0.8, label="selected")
            ax.set_title(c, fontsize=8)
            ax.tick_params(labelsize=6)
        axes[0][0].set_ylabel(m)
        axes[0][0].legend(fontsize=6)
        parts.append(f"<h3>{html.escape(m)}</h3><img alt='{html.escape(m)}' src='{_png(fig)}'>")
    # per-category mean table
    rows = []
    pv = decisions["preference"].to_numpy().astype(float)
    for c in cats:
        m_c = (cat == c) & elig
        rows.append([c, float(np.nanmean(pv[m_c & sel])) if (m_c & sel).any() else float("nan"), float(np.nanmean(pv[m_c & ~sel])) if (m_c & ~sel).any() else float("nan")])
    parts.append(_table(["category", "mean preference selected", "mean preference not selected"], rows))

    # 3. cluster sizes
    if "cluster" in decisions.columns and decisions["cluster"].drop_nulls().len():
        parts.append("<h2>Cluster sizes</h2>")
        fig, ax = plt.subplots(figsize=(8, 3))
        rows = []
        for c in (["all categories (one stratum)"] if one else cats):
            where = pl.col("cluster").is_not_null() if one else (pl.col("category") == c) & pl.col("cluster").is_not_null()
            cl = decisions.filter(where)["cluster"].to_numpy()
            if cl.size == 0:
                continue
            sizes = np.bincount(cl)
            sizes = sizes[sizes > 0]
            rows.append([c, int(sizes.size), int(sizes.min()), float(np.median(sizes)), int(sizes.max())])
            ax.hist(sizes, bins=min(30, max(int(sizes.max()), 1)), histtype="step", label=c)
        ax.set_xlabel("records per cluster")
        ax.set_ylabel("clusters")
        ax.legend(fontsize=7)
        parts.append(_table(["category", "clusters", "min size", "median size", "max size"], rows))
        parts.append(f"<img alt='cluster sizes' src='{_png(fig)}'>")

    parts.append("<h2>Run</h2>")
    # whether torch saw CUDA is known only where torch was loaded (not on a run answered from its caches):
    # the page leaves it out, so it is the same whatever the caches held
    dev = {k: v for k, v in manifest.get("devices", {}).items() if k != "torch_cuda"}
    parts.append(f"<p class='small'>laser_fast {html.escape(str(manifest.get('laser_fast')))}; devices: {html.escape(json.dumps(dev))}; inputs: "
                 + html.escape(", ".join(f"{i.get('path')} ({i.get('rows')} rows)" for i in manifest.get("inputs", []))) + "</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_report(path: str | Path, decisions: pl.DataFrame, manifest: dict) -> None:
    """Build the report and write it atomically."""
    from laser_fast.io.output import write_text

    write_text(path, build_report(decisions, manifest))


def report_from_dir(output_dir: str | Path) -> Path:
    """Rebuild ``report.html`` from a run's ``decisions.parquet`` and ``manifest.json``."""
    from laser_fast.errors import InputError

    d = Path(output_dir)
    dec, man = d / "decisions.parquet", d / "manifest.json"
    for p in (dec, man):
        if not p.exists():
            raise InputError(str(p), "not found", "point laser-fast report at the --output-dir of a laser-fast select run")
    write_report(d / "report.html", pl.read_parquet(dec), json.loads(man.read_text()))
    return d / "report.html"
