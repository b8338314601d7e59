"""End-to-end selection on the bundled example pool: schemas, strategies, modes, budgets,
determinism, cache reuse, outputs."""
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from laser_fast.categories import CATEGORIES
from laser_fast.config import SelectOptions
from laser_fast.errors import LaserError, MissingScoreError
from laser_fast.io.output import write_outputs
from laser_fast.pipeline import run_selection, select


def _run(example_files, workdir, **kw):
    kw.setdefault("show_progress", False)
    return run_selection(example_files, SelectOptions(**kw), workdir=workdir)


@pytest.fixture(scope="session")
def score_file(example_files, workdir, tmp_path_factory):
    """Synthetic model scores keyed by data_id (the model scorers arrive with a later issue)."""
    from laser_fast.io.ingest import read_records

    recs, _ = read_records(example_files)
    rng = np.random.default_rng(7)
    n = recs.height
    df = pl.DataFrame({"data_id": recs["data_id"], **{m: rng.normal(size=n) for m in ("quality", "complexity", "if_quality", "process_reward", "code_quality")}, "difficulty_v2": rng.random(n)})
    p = tmp_path_factory.mktemp("scores") / "scores.parquet"
    df.write_parquet(p)
    return str(p)


def test_kmeans_longest_end_to_end(example_files, workdir, tmp_path):
    run = _run(example_files, workdir, budget=100, strategy="longest", mode="kmeans")
    pool, sel = run.pool, run.selected_rows
    assert sel.size == 100 and len(set(sel.tolist())) == 100
    m = run.manifest
    assert sum(m["targets"].values()) == 100
    assert m["counts"]["total_pool"] == pool.height
    # the three schemas and multi-turn records are all in the pool
    assert set(pool["schema"].unique().to_list()) == {"messages", "sharegpt", "alpaca"}
    assert (pool["n_turns"] > 1).sum() > 20
    # every category present and classified
    assert set(pool["category"].unique().to_list()) <= set(CATEGORIES)
    chosen = pool[sel.tolist()]
    assert set(chosen["selected_by"].unique().to_list()) <= {"cluster_best", "fill", "top"}
    assert chosen["cluster"].null_count() < 100
    # per-category counts match the targets where the pool had enough
    got = chosen.group_by("category").len()
    for c, k in got.iter_rows():
        assert k == m["targets"][c]
    # cluster bests are above the threshold of their category and unique per cluster
    for c, st in m["strata"].items():
        rows = chosen.filter((pl.col("category") == c) & (pl.col("selected_by") == "cluster_best"))
        if rows.height:
            assert (rows["preference"] > st["threshold"]).all()
            assert rows["cluster"].n_unique() == rows.height
    out = write_outputs(run, tmp_path)
    lines = Path(out["selected"]).read_text().splitlines()
    assert len(lines) == 100
    rec = json.loads(lines[0])
    for key in ("messages", "data_id", "origin", "category", "preference", "cluster", "selected_by", "last_resp_length"):
        assert key in rec
    assert rec["messages"][-1]["role"] == "assistant"
    assert (tmp_path / "report.html").read_text().count("<img") >= 3
    dec = pl.read_parquet(tmp_path / "decisions.parquet")
    assert dec.height == pool.height and (dec["status"] == "selected").sum() == 100


def test_passthrough_fields_survive(example_files, workdir):
    df = select(example_files, budget=504, strategy="longest", mode="none", workdir=workdir, show_progress=False, proportions="none", max_seq_length=None, keep_non_english=True)
    assert df.height == 504
    alp = df.filter(pl.col("origin") == "alpaca")
    assert (alp["source"] == "laser-fast-example").all() if "source" in alp.columns else False
    sg = df.filter(pl.col("origin") == "sharegpt")
    assert sg["id"].str.starts_with("p2-sg-").all()


@pytest.mark.parametrize("mode", ["kmeans", "greedy", "kmeans+greedy", "none"])
@pytest.mark.parametrize("strategy", ["random", "longest", "deita", "difficulty", "quality", "dedicated_quality", "combination"])
def test_every_strategy_and_mode(example_files, workdir, score_file, strategy, mode):
    run = _run(example_files, workdir, budget=60, strategy=strategy, mode=mode, scores=[score_file], min_distance=0.2)
    sel = run.pool[run.selected_rows.tolist()]
    if mode in ("greedy", "kmeans+greedy"):
        assert 0 < sel.height <= 60
        assert set(sel["selected_by"].to_list()) <= {"greedy", "cluster_best", "top"}
    else:
        assert sel.height == 60
    if mode == "none":
        # top by preference within each category
        for c in CATEGORIES:
            cand = run.pool.filter((pl.col("category") == c) & pl.col("status").is_in(["selected", "not_selected"]))
            s = cand.filter(pl.col("status") == "selected")
            if s.height and cand.height > s.height:
                assert s["preference"].min() >= cand.filter(pl.col("status") == "not_selected")["preference"].max()


def test_greedy_selection_respects_min_distance(example_files, workdir):
    run = _run(example_files, workdir, budget=80, strategy="longest", mode="greedy", min_distance=0.3, embedding_model="minilm")
    from laser_fast.sampling.embed import texts_for
    from laser_fast.sampling.store import EmbeddingStore

    sel = run.pool[run.selected_rows.tolist()]
    emb, _ = EmbeddingStore(workdir).get(texts_for(sel, "response"), show_progress=False)
    e = np.asarray(emb, dtype=np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    for c in CATEGORIES:
        idx = np.flatnonzero(sel["category"].to_numpy() == c)
        if idx.size > 1:
            sim = e[idx] @ e[idx].T
            np.fill_diagonal(sim, -1)
            assert (1 - sim.max()) > 0.3 - 2e-3  # float16 storage tolerance


def test_token_budget_and_natural_proportions(example_files, workdir):
    run = _run(example_files, workdir, token_budget=20_000, strategy="longest", mode="kmeans", proportions="natural")
    sel = run.pool[run.selected_rows.tolist()]
    used = (sel["inst_length"] + sel["resp_length"]).sum()
    assert 0 < used <= 20_000
    assert run.manifest["budget"]["unit"] == "tokens"
    # natural proportions: shares follow the pool's own mix
    props = run.manifest["proportions"]
    counts = run.manifest["counts"]["eligible"]
    tot = sum(counts.values())
    for c, v in counts.items():
        assert props[c] == pytest.approx(v / tot)


def test_custom_proportions_setfit_limits_and_short_categories(example_files, workdir):
    run = _run(example_files, workdir, budget=200, strategy="longest", mode="none", proportions={"Math": 0.5, "Extraction": 0.5}, setfit_limits={"Math": 0.3})
    t = run.manifest["targets"]
    assert t["Math"] == 60  # capped at 0.3 x 200
    assert t["Coding"] == 0 and t["Generation"] == 0
    assert t["Extraction"] == run.manifest["counts"]["eligible"]["Extraction"]  # short: all taken
    assert run.manifest["redistribution"]


def test_output_orders(example_files, workdir, score_file):
    run = _run(example_files, workdir, budget=50, strategy="combination", mode="none", scores=[score_file], order="difficulty")
    d = run.pool[run.selected_rows.tolist()]["difficulty"].to_numpy()
    assert (np.diff(d) >= 0).all()
    run = _run(example_files, workdir, budget=50, strategy="longest", mode="none", order="category")
    cats = run.pool[run.selected_rows.tolist()]["category"].to_list()
    ranks = [CATEGORIES.index(c) for c in cats]
    assert ranks == sorted(ranks)
    run = _run(example_files, workdir, budget=50, strategy="longest", mode="none", order="length")
    s = run.pool[run.selected_rows.tolist()]
    ln = (s["inst_length"] + s["resp_length"]).to_numpy()
    assert (np.diff(ln) >= 0).all()


def test_max_seq_length_filter_counts(example_files, workdir):
    run = _run(example_files, workdir, budget=50, strategy="longest", mode="none", max_seq_length=150)
    too_long = run.pool.filter(pl.col("status") == "too_long")
    assert too_long.height > 0 and ((too_long["inst_length"] + too_long["resp_length"]) > 150).all()
    assert sum(run.manifest["counts"]["too_long_excluded"].values()) == too_long.height


def test_non_english_flagged_and_excluded(example_files, workdir):
    run = _run(example_files, workdir, budget=50, strategy="longest", mode="none")
    non = run.pool.filter(pl.col("status") == "non_english")
    assert non.height >= 3
    assert not non["is_english"].any()


def test_determinism_and_cache_reuse(example_files, workdir, tmp_path):
    # a first run fills the caches (when this test runs alone the embeddings are not cached yet,
    # and the report names the device only when vectors were computed)
    _run(example_files, workdir, budget=90, strategy="longest", mode="kmeans+greedy", seed=3)
    outs = []
    for i in range(2):
        run = _run(example_files, workdir, budget=90, strategy="longest", mode="kmeans+greedy", seed=3)
        d = tmp_path / f"run{i}"
        write_outputs(run, d)
        outs.append(d)
        if i == 1:
            assert run.manifest["embedding"]["cache_hit"] is True
            assert run.manifest["classification"]["cache_hit"] is True
    for name in ("selected.jsonl", "report.html", "decisions.parquet"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
    m0, m1 = (json.loads((o / "manifest.json").read_text()) for o in outs)
    for m in (m0, m1):
        m.pop("timings_seconds"), m.pop("peak_rss_mb_after_stage")  # measurements of the process, not of the run's content
        m["embedding"].pop("cache_hit"), m["embedding"].pop("seconds"), m["embedding"].pop("device"), m["embedding"].pop("computed", None)
        m["classification"].pop("cache_hit")
    assert m0 == m1
    # another seed changes the selection
    run = _run(example_files, workdir, budget=90, strategy="random", mode="kmeans", seed=4)
    run2 = _run(example_files, workdir, budget=90, strategy="random", mode="kmeans", seed=5)
    assert set(run.selected_rows.tolist()) != set(run2.selected_rows.tolist())


def test_parquet_output_and_dataframe_input(example_files, workdir, tmp_path):
    from laser_fast.io.ingest import read_records

    recs, _ = read_records(example_files[:1])
    frame = pl.DataFrame({"messages": recs["messages"], "note": [f"n{i}" for i in range(recs.height)]})
    df = select(frame, budget=30, strategy="longest", mode="kmeans", workdir=workdir, show_progress=False)
    assert df.height == 30 and "note" in df.columns and df["data_id"].n_unique() == 30
    run = _run(example_files, workdir, budget=40, strategy="longest", mode="none", format="parquet")
    out = write_outputs(run, tmp_path)
    back = pl.read_parquet(out["selected"])
    assert back.height == 40 and "messages" in back.columns


def test_missing_scores_stop_with_named_scorer(example_files, workdir):
    with pytest.raises(MissingScoreError, match="scorer"):
        _run(example_files, workdir, budget=40, strategy="combination", profile="none")


def test_no_budget_is_an_error(example_files, workdir):
    with pytest.raises(LaserError, match="budget"):
        _run(example_files, workdir, strategy="longest")


def test_scores_from_input_columns_and_score_file_keyed_by_id(tmp_path, workdir):
    rows = []
    for i in range(40):
        rows.append({"data_id": f"r{i}", "category": "Math" if i % 2 else "Coding",
                     "messages": [{"role": "user", "content": f"Compute {i} plus {i * 3}, and show the steps."}, {"role": "assistant", "content": f"{i} + {3 * i} = {4 * i}."}],
                     "quality": float(i), "complexity": float(40 - i) if i != 5 else None})
    f = tmp_path / "scored.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(MissingScoreError, match="complexity"):
        run_selection([str(f)], SelectOptions(budget=10, strategy="deita", mode="none", profile="none", show_progress=False), workdir=workdir)
    # the gap is filled from a score file keyed by data_id (in shuffled order: never by line)
    (tmp_path / "s.csv").write_text("data_id,complexity_scores\nr7,1\nr5,3.5\n")
    run = run_selection([str(f)], SelectOptions(budget=10, strategy="deita", mode="none", proportions="natural", scores=[str(tmp_path / "s.csv")], profile="none", show_progress=False), workdir=workdir)
    pool = run.pool
    assert pool.filter(pl.col("data_id") == "r5")["complexity"][0] == 3.5
    assert pool.filter(pl.col("data_id") == "r7")["complexity"][0] == 33.0  # input column wins over the file
    assert run.manifest["classification"]["given"] == 40  # categories came from the input
    sel = pool[run.selected_rows.tolist()]
    assert sel.height == 10 and set(sel["category"].unique().to_list()) == {"Math", "Coding"}


@pytest.mark.parametrize("mode", ["none", "kmeans"])
def test_output_frame_matches_a_frame_built_from_the_rows(tmp_path, workdir, mode):
    """The selected frame is assembled column by column; it must equal the frame polars builds
    from the output dicts (the JSONL rows): extra fields of mixed presence and type, nested values, an extra
    field named like a provenance column, and oversampled copies."""
    from laser_fast.config import SourceSpec
    from laser_fast.io.output import output_frame, output_rows

    rows = []
    for i in range(60):
        r = {"instruction": f"Explain item {i} and why it matters in a short paragraph.", "output": f"Item {i} matters because of reason {i % 7}."}
        if i % 3 == 0:
            r["note"] = f"n{i}"
        if i % 4 == 0:
            r["meta"] = {"k": i, "tags": ["a", "b"][: i % 3]}
        if i % 5 == 0:
            r["weight"] = i / 2 if i % 2 else i
        if i % 6 == 0:
            r["category"] = "Math" if i % 12 else "Coding"  # an input column the output overrides
        if i == 7:
            r["copy"] = "mine"  # kept where the record is not a copy
        rows.append(r)
    f = tmp_path / "pool.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    opts = SelectOptions(budget=50, strategy="longest", mode=mode, proportions="none", keep_non_english=True, max_seq_length=None,
                         sources=[SourceSpec(path=str(f), oversampling=1.5)], show_progress=False)
    run = run_selection([], opts, workdir=workdir)
    sel = run.selected_rows
    assert (run.pool["copy"].to_numpy()[sel] > 0).any()
    want = pl.DataFrame(output_rows(run.pool, sel), infer_schema_length=None)
    got = output_frame(run.pool, sel)
    assert got.columns == want.columns
    # one deliberate difference: a column that is null throughout (cluster, in mode none) keeps
    # its type instead of polars' Null
    assert got["cluster"].dtype == pl.Int64
    assert want["cluster"].dtype == (pl.Null if mode == "none" else pl.Int64)
    want = want.with_columns(pl.col("cluster").cast(pl.Int64))
    assert got.schema == want.schema
    assert got.to_dicts() == want.to_dicts()
    # no selection: the documented empty frame
    assert output_frame(run.pool, np.zeros(0, dtype=np.int64)).columns == ["messages", "data_id", "category", "preference", "selected_by"]


def test_language_mask_is_cached_by_instruction_texts(tmp_path, monkeypatch):
    import laser_fast.classifier.language as clf
    from laser_fast.classifier.stage import english_mask
    from laser_fast.io.ingest import records_from_frame

    recs, _ = records_from_frame(pl.DataFrame({"instruction": ["What is the capital of France?", "¿Dónde está la biblioteca de la ciudad?", "今天天气怎么样？"],
                                               "output": ["Paris.", "Allí.", "晴天。"]}), origin="t")
    first = english_mask(recs, str(tmp_path))
    assert first.tolist() == [True, False, False]
    assert len(list((tmp_path / "cache").glob("language-*.npz"))) == 1

    def boom(texts):
        raise AssertionError("the model ran again")

    monkeypatch.setattr(clf, "detect_languages", boom)
    assert english_mask(recs, str(tmp_path)).tolist() == first.tolist()  # from the cache
    other = recs.with_columns(pl.Series("instruction", ["Bonjour, où est la gare la plus proche de la ville ?", "Name three colours.", "Hi"]))
    with pytest.raises(AssertionError, match="ran again"):
        english_mask(other, str(tmp_path))  # other texts: another key


def test_an_infinite_score_is_refused_where_it_is_given(tmp_path):
    """An infinite score cannot be ranked or robust-scaled: a score file (CSV text, JSONL number,
    Parquet) or an input field holding one is an error naming the file, row and key, not a record
    silently read as missing."""
    from laser_fast.errors import InputError
    from laser_fast.io.ingest import records_from_frame
    from laser_fast.io.score_files import read_score_file, scores_from_extra
    from laser_fast.scorers.preference import _require

    (tmp_path / "s.csv").write_text("data_id,quality\nr1,0.5\nr2,inf\n")
    (tmp_path / "s.jsonl").write_text('{"data_id": "r1", "quality": 0.5}\n{"data_id": "r2", "quality": "-Infinity"}\n')
    pl.DataFrame({"data_id": ["r1", "r2"], "quality": [0.5, float("inf")]}).write_parquet(tmp_path / "s.parquet")
    for name, given in (("s.csv", "'inf'"), ("s.jsonl", "'-Infinity'"), ("s.parquet", "inf")):
        with pytest.raises(InputError, match=r"row 1.*'quality' is infinite \(" + given) as e:
            read_score_file(tmp_path / name)
        assert name in str(e.value) and "finite number" in str(e.value)
    (tmp_path / "ok.csv").write_text("data_id,quality\nr1,0.5\nr2,NaN\n")
    assert np.isnan(read_score_file(tmp_path / "ok.csv")["quality"][1])  # NaN is missing, as before
    df, _ = records_from_frame(pl.DataFrame({"instruction": ["a", "b"], "output": ["x", "y"], "quality": [1.0, float("-inf")]}))
    with pytest.raises(InputError, match="'quality' is infinite"):
        scores_from_extra(df)
    # a scorer's infinite output is named as such when a strategy needs the metric
    with pytest.raises(MissingScoreError, match=r"missing or infinite \(1 infinite\) for 2 record\(s\)"):
        _require("quality", np.array([np.inf, np.nan, 1.0]), np.ones(3, dtype=bool), "deita", np.array(["Math"] * 3, dtype=object))
