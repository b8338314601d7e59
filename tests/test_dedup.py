"""Issue 19, first slice: duplicates are found before scoring (exact, normalised, or by
instruction), never scored, left out of the selection with the ``data_id`` they repeat, and
counted in the manifest."""
from __future__ import annotations

import json

import polars as pl
import pytest

from laser_fast.cli import main
from laser_fast.io.ingest import records_from_frame
from laser_fast.sampling.dedup import find_duplicates

ROWS = [
    ("Name a colour.", "Blue."),          # 0
    ("Name a colour.", "Blue."),          # 1: exact copy of 0
    ("NAME a colour!!", "blue"),          # 2: a normalised copy of 0
    ("Ｎａｍｅ   a colour", "Blue…"),       # 3: full-width letters, spaces, an ellipsis: normalised copy of 0
    ("Name a colour.", "Red."),           # 4: same instruction, other answer
    ("Name a fruit.", "Apple."),          # 5
    ("Name a fruit.", "Apple."),          # 6: exact copy of 5
]


def _recs():
    recs, _ = records_from_frame(pl.DataFrame({"instruction": [r[0] for r in ROWS], "output": [r[1] for r in ROWS]}))
    return recs


@pytest.mark.parametrize("mode,dups", [("none", {}), ("exact", {1: 0, 6: 5}), ("normalized", {1: 0, 2: 0, 3: 0, 6: 5}),
                                       ("instruction", {1: 0, 2: 0, 3: 0, 4: 0, 6: 5})])
def test_each_mode_finds_exactly_the_planted_copies_and_keeps_the_first(mode, dups):
    recs = _recs()
    ids = recs["data_id"].to_list()
    got = find_duplicates(recs, mode).tolist()
    assert got == [ids[dups[i]] if i in dups else None for i in range(len(ROWS))]


def test_duplicates_are_not_scored_not_selected_and_counted(tmp_path):
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps({"instruction": a, "output": b}) + "\n" for a, b in ROWS))
    args = ["select", str(f), "--budget", "7", "--profile", "lite", "--strategy", "combination", "--proportions", "natural",
            "--keep-non-english", "-q", "--workdir", str(tmp_path / "w")]
    assert main([*args, "--dedup", "normalized", "--dedup-keep", "first", "--output-dir", str(tmp_path / "o")]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["dedup"] == {"mode": "normalized", "keep": "first", "duplicates": 4, "per_origin": {"pool": 4}}
    assert sum(man["counts"]["duplicate_excluded"].values()) == 4 and man["counts"]["total_selected"] == 3
    assert "duplicates (normalized)" in (tmp_path / "o" / "report.html").read_text()  # the report's removals table
    (onepass,) = man["scoring"]["scorers"]
    assert onepass["records"] == 3  # the copies were never scored
    dec = pl.read_parquet(tmp_path / "o" / "decisions.parquet")
    ids = dec["data_id"].to_list()
    assert dec.filter(pl.col("status") == "duplicate")["duplicate_of"].to_list() == [ids[0], ids[0], ids[0], ids[5]]
    assert dec.filter(pl.col("status") != "duplicate")["duplicate_of"].null_count() == 3
    sel = [json.loads(x)["data_id"] for x in (tmp_path / "o" / "selected.jsonl").read_text().splitlines()]
    assert sorted(sel) == sorted([ids[0], ids[4], ids[5]])
    assert main([*args, "--dedup", "none", "--output-dir", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "manifest.json").read_text())["counts"]["total_selected"] == 7
    assert main([*args, "--dedup", "fuzzy", "--output-dir", str(tmp_path / "bad")]) == 2


def test_the_default_is_exact():
    from laser_fast.config import SelectOptions
    from laser_fast.errors import ConfigError

    assert SelectOptions(budget=1).validate().dedup == "exact"
    with pytest.raises(ConfigError, match="dedup"):
        SelectOptions(budget=1, dedup="fuzzy").validate()


def test_near_copies_by_minhash():
    from laser_fast.sampling.dedup import find_near_duplicates

    base = ("The committee met on Tuesday to review the budget for the new library, and after a long discussion "
            "about costs, staffing and opening hours it agreed to start building in the spring of next year")
    texts = [
        base,                                                    # 0
        base + " at the latest",                                 # 1: a near copy of 0 (Jaccard ~0.91)
        base.upper().replace(",", " ;"),                         # 2: the same words re-cased and re-punctuated: a copy
        base.replace("Tuesday", "Friday").replace("spring", "autumn"),  # 3: two words changed: Jaccard ~0.6, kept
        "A recipe for bread: mix flour, water, salt and yeast, knead for ten minutes, let it rise for an hour, then bake it hot",
        "",                                                      # 5: no words: never a near copy
    ]
    recs, _ = records_from_frame(pl.DataFrame({"instruction": [t or "?" for t in texts], "output": ["Noted."] * len(texts)}))
    ids = recs["data_id"].to_list()
    got = find_near_duplicates(recs, 0.8).tolist()
    assert got == [None, ids[0], ids[0], None, None, None]
    assert find_near_duplicates(recs, 0.5).tolist()[3] == ids[0]  # a lower threshold takes the two-word change too
    assert find_near_duplicates(recs, 0.8).tolist() == got  # deterministic


def test_near_mode_in_a_run(tmp_path):
    f = tmp_path / "pool.jsonl"
    base = "Explain how a refrigerator keeps food cold, covering the compressor, the refrigerant and the heat exchange"
    answer = ("A pump called the compressor squeezes the refrigerant gas, which heats it; the hot gas gives its heat to the "
              "room through the coils at the back, turns liquid, then expands through a valve inside the fridge, where it "
              "evaporates and takes heat from the food.")
    rows = [(base, answer), (base, answer + " Hope this helps."), ("Name a fruit.", "Apple.")]
    f.write_text("".join(json.dumps({"instruction": a, "output": b}) + "\n" for a, b in rows))
    assert main(["select", str(f), "--budget", "3", "--profile", "none", "--strategy", "random", "-q", "--dedup", "near",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "o")]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["dedup"]["mode"] == "near" and man["dedup"]["duplicates"] == 1


def _scored_pool(tmp_path, rows):
    """A pool whose records carry their category and scores (nothing is scored by a model)."""
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps({"instruction": a, "output": b, "category": "Factual QA", "quality": q, "difficulty": 1.0}) + "\n"
                         for a, b, q in rows))
    return f


def test_the_best_scored_copy_of_each_group_is_kept(tmp_path):
    """Planted exact, normalised and near copies: exactly the planted copies go, and of each group
    the copy with the best preference stays (the first one only where `--dedup-keep first`)."""
    base = ("Explain how a refrigerator keeps food cold, covering the compressor, the refrigerant, the coils at the back "
            "and the way heat leaves the inside of the box")
    rows = [
        ("Name a colour.", "Blue.", 0.2),          # 0
        ("Name a colour.", "Blue.", 0.2),          # 1: exact copy of 0
        ("NAME a colour!!", "blue", 0.9),          # 2: normalised copy of 0, the best of its group
        ("Name a colour", "Blue", 0.5),            # 3: normalised copy of 0
        (base, "It pumps heat out.", 0.3),         # 4
        (base, "It pumps heat out. Hope this helps.", 0.8),  # 5: near copy of 4 (not a normalised one), the best
        ("Name a fruit.", "Apple.", 0.6),          # 6: no copy
    ]
    f = _scored_pool(tmp_path, rows)
    common = ["select", str(f), "--budget", "7", "--profile", "none", "--strategy", "quality", "--proportions", "natural",
              "--keep-non-english", "-q", "--workdir", str(tmp_path / "w")]

    def run(name, *extra):
        assert main([*common, *extra, "--output-dir", str(tmp_path / name)]) == 0
        dec = pl.read_parquet(tmp_path / name / "decisions.parquet")
        ids = dec["data_id"].to_list()
        dups = {ids.index(i): ids.index(d) for i, d in zip(ids, dec["duplicate_of"].to_list()) if d is not None}
        assert set(dec.filter(pl.col("status") == "duplicate")["data_id"].to_list()) == {ids[i] for i in dups}
        return dups, json.loads((tmp_path / name / "manifest.json").read_text())

    dups, man = run("norm", "--dedup", "normalized")
    assert dups == {0: 2, 1: 2, 3: 2}  # the exact copy too names the kept one
    assert man["dedup"]["duplicates"] == 3 and man["dedup"]["kept_not_first"] == 1 and man["dedup"]["keep"] == "best"
    dups, _ = run("first", "--dedup", "normalized", "--dedup-keep", "first")
    assert dups == {1: 0, 2: 0, 3: 0}
    dups, _ = run("near", "--dedup", "near")
    assert dups == {0: 2, 1: 2, 3: 2, 4: 5}  # short texts: one shingle of all their words, equal once normalised
    dups, _ = run("exact", "--dedup", "exact")
    assert dups == {1: 0}
    dups, man = run("rand", "--dedup", "normalized", "--strategy", "random")
    assert dups == {1: 0, 2: 0, 3: 0} and man["dedup"]["kept_not_first"] == 0  # random preference is noise: the first stays


def test_only_the_differing_copies_are_scored(tmp_path):
    f = tmp_path / "pool.jsonl"
    f.write_text("".join(json.dumps({"instruction": a, "output": b}) + "\n" for a, b in ROWS))
    assert main(["select", str(f), "--budget", "7", "--profile", "lite", "--strategy", "combination", "--proportions", "natural",
                 "--keep-non-english", "-q", "--workdir", str(tmp_path / "w"), "--dedup", "normalized",
                 "--output-dir", str(tmp_path / "o")]) == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    (onepass,) = man["scoring"]["scorers"]
    assert onepass["records"] == 5  # rows 1 and 6 repeat 0 and 5 character for character: not scored
    dec = pl.read_parquet(tmp_path / "o" / "decisions.parquet")
    group = dec[:4]  # rows 0-3: one group; the kept one has the best preference among those scored
    kept = group.filter(pl.col("duplicate_of").is_null())
    assert kept.height == 1 and kept["preference"][0] == group["preference"].drop_nans().max()
    assert set(group["duplicate_of"].drop_nulls().to_list()) == {kept["data_id"][0]}


def test_keep_best_unit():
    import numpy as np

    from laser_fast.sampling.dedup import keep_best

    root = np.array([0, 0, 0, 3, 3, 5])
    pref = np.array([0.1, 0.7, 0.7, np.nan, np.nan, 0.0])
    assert keep_best(root, pref).tolist() == [1, 1, 1, 3, 3, 5]  # a tie: the first of the best; no preference: the first
    assert keep_best(root, pref, np.array([1, 0, 1, 1, 1, 1], bool)).tolist() == [2, 2, 2, 3, 3, 5]
    # an ineligible first member: the first eligible one, though nobody has a preference; none eligible: the first
    assert keep_best(root, pref, np.array([1, 1, 1, 0, 1, 0], bool)).tolist() == [1, 1, 1, 4, 4, 5]
    assert keep_best(root, np.full(6, np.nan), np.array([0, 0, 1, 0, 0, 1], bool)).tolist() == [2, 2, 2, 3, 3, 5]


def test_a_kept_copy_is_one_the_selection_can_take(tmp_path):
    """The best-scored copy of a group that is too long for ``--max-seq-length`` is not the kept one:
    its group keeps a copy that fits (else the copies were left out as duplicates of a record that
    was then dropped, and the whole group lost)."""
    long = " ".join(["This answer goes on and on about the topic."] * 30)
    rows = []
    for i in range(12):
        rows += [(f"Question {i}: name a thing.", "A thing.", 0.2), (f"Question {i}: name a thing.", long, 0.9)]
    f = _scored_pool(tmp_path, rows)
    out = tmp_path / "o"
    assert main(["select", str(f), "--budget", "50", "--profile", "none", "--strategy", "quality", "--proportions", "natural",
                 "--keep-non-english", "--dedup", "instruction", "--max-seq-length", "100", "-q", "--mode", "none",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(out)]) == 0
    dec = pl.read_parquet(out / "decisions.parquet")
    counts = dict(dec["status"].value_counts().iter_rows())
    assert counts == {"selected": 12, "duplicate": 12}, counts
    picked = [json.loads(line)["messages"][-1]["content"] for line in (out / "selected.jsonl").read_text().splitlines()]
    assert picked == ["A thing."] * 12


def test_compiled_minhash_equals_the_numpy_formula():
    """The compiled signatures equal the definition computed with numpy (min over shingles of
    (a*h + b) mod 2^64, masked to 61 bits), also when a row's hashes come in several runs."""
    import numpy as np

    from laser_fast.sampling.dedup import minhash_signatures

    rng = np.random.default_rng(3)
    rows = np.r_[np.sort(rng.integers(0, 40, size=3000)), [5, 5, 39]]  # row 5 and 39 again at the end
    h = rng.integers(0, 2**62, size=rows.size, dtype=np.int64).astype(np.uint64)
    sig = minhash_signatures(rows, h, 41, perms=16, seed=7)
    g = np.random.default_rng(7)
    a = g.integers(1, (1 << 61) - 1, size=16, dtype=np.uint64)
    b = g.integers(0, (1 << 61) - 1, size=16, dtype=np.uint64)
    v = (h[:, None] * a[None] + b[None]) & np.uint64((1 << 61) - 1)
    for r in range(41):
        want = v[rows == r].min(axis=0) if (rows == r).any() else np.full(16, np.iinfo(np.uint64).max, dtype=np.uint64)
        assert np.array_equal(sig[r], want)


def test_band_keys_equal_exactly_when_bands_are_equal():
    import numpy as np

    from laser_fast.sampling.dedup import band_keys

    rng = np.random.default_rng(0)
    sig = rng.integers(0, 2**61, size=(50, 16), dtype=np.int64).astype(np.uint64)
    sig[7, 4:8] = sig[3, 4:8]  # record 7 shares band 1 (rows 4-7) with record 3, nothing else
    k = band_keys(sig, 4)
    assert k.shape == (50, 4)
    assert k[7, 1] == k[3, 1] and (k[7, [0, 2, 3]] != k[3, [0, 2, 3]]).all()
    assert len(np.unique(k[:, 0])) == 50


def test_the_same_record_in_two_inputs_is_a_duplicate_not_an_error(tmp_path):
    """Content-hashed ids are numbered across inputs as within one (h..., h...-2): a conversation
    in two files no longer stops the run with a data_id clash; dedup then leaves the copy out.
    Explicit ids that clash still stop it."""
    rows = [{"instruction": "Name a colour.", "output": "Blue."}, {"instruction": "Name a fruit.", "output": "Apple."}]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for f in (a, b):
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["select", str(a), str(b), "--budget", "4", "--profile", "none", "--strategy", "random", "--keep-non-english", "-q",
            "--workdir", str(tmp_path / "w")]
    assert main([*args, "--output-dir", str(tmp_path / "o")]) == 0
    dec = pl.read_parquet(tmp_path / "o" / "decisions.parquet")
    ids = dec["data_id"].to_list()
    assert ids[2:] == [ids[0] + "-2", ids[1] + "-2"]
    assert dec["duplicate_of"].to_list() == [None, None, ids[0], ids[1]]
    c = tmp_path / "c.jsonl"
    c.write_text("".join(json.dumps({**r, "data_id": f"x{i}"}) + "\n" for i, r in enumerate(rows)))
    assert main(["select", str(c), str(c), "--budget", "2", "--profile", "none", "--strategy", "random", "-q",
                 "--workdir", str(tmp_path / "w"), "--output-dir", str(tmp_path / "bad")]) == 2


def test_hashed_ids_skip_an_explicit_id_of_the_same_form(tmp_path):
    from laser_fast.config import SelectOptions
    from laser_fast.io.ingest import load_pool, read_records

    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"instruction": "Hi there?", "output": "Hello."}) + "\n")
    (h,) = read_records([a])[0]["data_id"].to_list()
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps({"instruction": "Other?", "output": "Yes.", "data_id": f"{h}-2"}) + "\n"
                 + json.dumps({"instruction": "Hi there?", "output": "Hello."}) + "\n")
    recs, _, _ = load_pool([str(a), str(b)], SelectOptions(budget=1).validate())
    assert recs["data_id"].to_list() == [h, f"{h}-2", f"{h}-3"] and "_id_hashed" not in recs.columns
