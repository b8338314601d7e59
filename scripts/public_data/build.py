"""Build {categories,pairs,difficulty}.jsonl from public GitHub repositories' train files.

Run: python scripts/public_data/build.py --mirror DIR --out DIR
Reads bare git clones under ``--mirror`` as ``<owner>+<name>/repo`` (``git show HEAD:<path>``;
the repositories and paths are listed in docs/public_data.md) and drops every prompt that also
appears in ../shared/data or examples/pool. Deterministic (fixed seeds). Writes stats.json with
every count and the commits read. The data itself never goes into the project.
"""
import argparse
import collections
import functools
import gzip
import json
import random
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from t0_labels import label as t0_label

ROOT = Path(__file__).resolve().parents[2]
OUT = Path("public_data")
MIRROR = Path(".mirror")
STATS = {"sources": {}, "exclusion": {}, "notes": []}


def gitdir(repo, mirror=None):
    d = (mirror or MIRROR) / repo.replace("/", "+") / "repo"
    return str(d / ".git") if (d / ".git").is_dir() else str(d)


def head(repo, mirror=None):
    return subprocess.run(["git", "--git-dir", gitdir(repo, mirror), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def show(repo, path, mirror=None):
    return subprocess.run(["git", "--git-dir", gitdir(repo, mirror), "show", f"HEAD:{path}"],
                          capture_output=True, check=True).stdout.decode("utf-8")


def ls(repo, path):
    out = subprocess.run(["git", "--git-dir", gitdir(repo), "ls-tree", "--name-only", "HEAD", path + "/"],
                         capture_output=True, text=True, check=True).stdout
    return sorted(out.split())


def jsonl(text):
    return [json.loads(l) for l in text.splitlines() if l.strip()]


def norm(s):
    return re.sub(r"\s+", " ", s.lower()).strip()


PROV = {}


def prov(key, repo, path):
    PROV.setdefault(key, {"repo": repo, "commit": head(repo), "paths": []})
    if path not in PROV[key]["paths"]:
        PROV[key]["paths"].append(path)


def source_text(key, repo, path):
    """The text of ``path`` in ``repo``, recorded in the provenance under ``key``."""
    prov(key, repo, path)
    return show(repo, path)


# ---------------------------------------------------------------- exclusion set
def load_exclusion():
    texts = collections.defaultdict(set)  # set name -> raw texts
    sd = (ROOT.parent / "shared" / "data")
    if not sd.is_dir():
        sys.exit(f"{sd} not found: the exclusion sets come from the project's shared data folder beside the checkout")
    alpaca_eval = set()

    def rd(p):
        if str(p).endswith(".gz"):
            with gzip.open(p, "rt", encoding="utf-8") as f:
                return [json.loads(l) for l in f if l.strip()]
        return [json.loads(l) for l in p.read_text(encoding="utf-8").splitlines() if l.strip()]

    for r in rd(sd / "koala_test_set.jsonl"):
        texts["koala_test_set"].add(r["prompt"])
    for name in ("self_instruct_user_oriented", "self_instruct_seed_tasks"):
        for r in rd(sd / f"{name}.jsonl"):
            texts[name].add(r["instruction"])
            for inst in r.get("instances", []):
                if inst.get("input", "").strip():
                    texts[name].add(r["instruction"] + "\n\n" + inst["input"])
                    texts[name].add(r["instruction"] + "\n" + inst["input"])
    for r in rd(sd / "vicuna_bench.jsonl"):
        texts["vicuna_bench"].add(r["instruction"])
    for r in rd(sd / "pandalm_testset.jsonl"):
        texts["pandalm_testset"].add(r["instruction"])
        if r.get("input", "").strip():
            texts["pandalm_testset"].add(r["instruction"] + "\n\n" + r["input"])
    for r in rd(sd / "humaneval.jsonl"):
        texts["humaneval"].add(r["instruction"])
    for r in rd(sd / "gsm8k_test.jsonl"):
        texts["gsm8k_test"].add(r["instruction"])
    for r in rd(sd / "alpaca_eval_pool.jsonl.gz"):
        texts["alpaca_eval_pool"].add(r["instruction"])
        alpaca_eval.add(r["instruction"])
    pool = (ROOT / "examples" / "pool")
    for p in sorted(pool.glob("*.jsonl*")):
        for r in rd(p):
            if "instruction" in r:
                texts["example_pool"].add(r["instruction"])
                if r.get("input", "").strip():
                    texts["example_pool"].add(r["instruction"] + "\n\n" + r["input"])
            for m in r.get("messages", []) or []:
                if m.get("role") == "user":
                    texts["example_pool"].add(m["content"])
            for m in r.get("conversations", []) or []:
                if m.get("from") in ("human", "user"):
                    texts["example_pool"].add(m["value"])
    full, pre = {}, {}
    for name, ts in texts.items():
        for t in ts:
            n = norm(t)
            if not n:
                continue
            full.setdefault(n, name)
            pre.setdefault(n[:60], name)
    STATS["exclusion_set_sizes"] = {k: len(v) for k, v in texts.items()}
    ae_full = {norm(t) for t in alpaca_eval}
    return full, pre, ae_full


@functools.cache
def exclusion():
    """``(EX_FULL, EX_PRE, AE_FULL)`` of :func:`load_exclusion`, read on first use (importing this
    module for its mirror readers reads no data)."""
    return load_exclusion()


def excluded(text):
    ex_full, ex_pre, _ = exclusion()
    n = norm(text)
    if n in ex_full:
        return "exact:" + ex_full[n]
    if n[:60] in ex_pre:
        return "prefix60:" + ex_pre[n[:60]]
    return None


def filt(source, items, key=lambda r: r["text"]):
    """Drop excluded items; record counts per source and reason."""
    kept, drops = [], collections.Counter()
    for r in items:
        why = excluded(key(r))
        if why:
            drops[why] += 1
        else:
            kept.append(r)
    STATS["exclusion"][source] = {"candidates": len(items), "dropped": sum(drops.values()),
                                  "by_reason": dict(drops)}
    return kept


def dedupe_norm(items, key=lambda r: r["text"]):
    seen, out = set(), []
    for r in items:
        n = norm(key(r))
        if n in seen:
            continue
        seen.add(n)
        out.append(r)
    return out


# ---------------------------------------------------------------- categories
def t0_rows():
    repo = "yizhongw/self-instruct"
    base = "data/finetuning/t0_train_50k/data_per_template"
    rng = random.Random(0)  # one generator consumed over the files in sorted order
    rows, per_t, skipped = [], {}, []
    cands_all = []
    for path in ls(repo, base):
        t = path.rsplit("/", 1)[-1][:-len(".jsonl")]
        cat = t0_label(t)
        data = jsonl(show(repo, path))
        if cat is None:
            skipped.append((t, len(data)))
            continue
        prov("t0_train_50k", repo, base + "/*.jsonl (labelled templates)")
        items = dedupe_norm([{"text": d["prompt"].strip(), "category": cat, "source": "t0_train_50k",
                              "split": "train", "template": t} for d in data if d["prompt"].strip()])
        cands_all.extend(items)
        items = [r for r in items if not excluded(r["text"])]
        rng.shuffle(items)
        take = items[:40]
        per_t[t] = {"category": cat, "rows_in_file": len(data), "taken": len(take)}
        rows.extend(take)
    filt("t0_train_50k", cands_all)  # records exclusion counts over all candidates
    STATS["t0_templates"] = per_t
    STATS["t0_skipped"] = skipped
    return rows


def webquestions_rows():
    repo = "brmson/dataset-factoid-webquestions"
    items = []
    for split in ("trainmodel", "val", "devtest"):
        path = f"main/{split}.json"
        for r in json.loads(source_text("webquestions", repo, path)):
            items.append({"text": r["qText"].strip(), "category": "Factual QA", "source": "webquestions",
                          "split": "train", "orig_split": split, "id": r["qId"]})
    items = dedupe_norm(items)
    items = filt("webquestions", items)
    random.Random(0).shuffle(items)
    return items[:1500]


def math_all():
    repo = "MDX-0003/cs336-assignment5"
    path = "data/MATH/train.jsonl"
    out = []
    for r in jsonl(source_text("math", repo, path)):
        m = re.match(r"Level (\d)", r.get("level", ""))
        out.append({"text": r["problem"].strip(), "category": "Math", "source": "math", "split": "train",
                    "level": int(m.group(1)) if m else None, "subject": r["subject"],
                    "id": r.get("unique_id")})
    # sanity: no overlap with the validation file
    val = {norm(r["problem"]) for r in jsonl(show(repo, "data/MATH/validation.jsonl"))}
    n_ov = sum(norm(r["text"]) in val for r in out)
    STATS["notes"].append(f"MATH train rows whose normalised text is also in MATH validation.jsonl (dropped): {n_ov}")
    return [r for r in out if norm(r["text"]) not in val]


def math_rows(allrows):
    items = dedupe_norm(allrows)
    items = filt("math", items)
    by = collections.defaultdict(list)
    for r in items:
        by[r["subject"]].append(r)
    n_total, cap = len(items), 1500
    quotas = {s: cap * len(v) / n_total for s, v in by.items()}
    alloc = {s: int(q) for s, q in quotas.items()}
    for s in sorted(quotas, key=lambda s: -(quotas[s] - alloc[s]))[: cap - sum(alloc.values())]:
        alloc[s] += 1
    rng = random.Random(0)
    out = []
    for s in sorted(by):
        v = by[s]
        rng.shuffle(v)
        out.extend(v[: alloc[s]])
    STATS["math_alloc"] = alloc
    return out


def gsm8k_rows():
    repo = "openai/grade-school-math"
    path = "grade_school_math/data/train.jsonl"
    items = dedupe_norm([{"text": r["question"].strip(), "category": "Math", "source": "gsm8k",
                          "split": "train"} for r in jsonl(source_text("gsm8k", repo, path))])
    items = filt("gsm8k", items)
    random.Random(0).shuffle(items)
    return items[:1500]


def gpteacher_rows():
    repo = "teknium1/GPTeacher"
    out = []
    for path, cat, src, cap in (("Codegen/codegen-instruct.json", "Coding", "gpteacher_codegen", 1500),
                                ("Roleplay/roleplay-simple-deduped-roleplay-instruct.json", "Generation",
                                 "gpteacher_roleplay", 1000)):
        items = []
        for r in json.loads(source_text(src, repo, path)):
            t = r["instruction"].strip()
            if r.get("input", "").strip():
                t = t + "\n\n" + r["input"].strip()
            items.append({"text": t, "category": cat, "source": src, "split": "train"})
        items = dedupe_norm(items)
        items = filt(src, items)
        random.Random(0).shuffle(items)
        out.extend(items[:cap])
    return out


def mbpp_rows():
    repo = "OckBench/OckBench"
    path = "data/mbpp.jsonl"
    items = []
    for r in jsonl(source_text("mbpp", repo, path)):
        tid = int(r["task_id"])
        if 601 <= tid <= 974:
            split = "train"
        elif 511 <= tid <= 600:
            split = "validation"
        else:
            continue
        t = r["text"].strip() + "\nYour code should pass these tests:\n" + "\n".join(r["test_list"])
        items.append({"text": t, "category": "Coding", "source": "mbpp", "split": split, "task_id": tid})
    items = dedupe_norm(items)
    return filt("mbpp", items)


def build_categories():
    math_train = math_all()
    parts = [t0_rows(), webquestions_rows(), math_rows(math_train), gsm8k_rows(), gpteacher_rows(), mbpp_rows()]
    rows = [r for p in parts for r in p]
    # global dedupe by normalised text; drop texts that appear with two different categories
    cats = collections.defaultdict(set)
    for r in rows:
        cats[norm(r["text"])].add(r["category"])
    conflict = {n for n, c in cats.items() if len(c) > 1}
    seen, out, dup = set(), [], 0
    for r in rows:
        n = norm(r["text"])
        if n in conflict:
            continue
        if n in seen:
            dup += 1
            continue
        seen.add(n)
        out.append(r)
    STATS["categories_global"] = {"cross_source_duplicates_dropped": dup,
                                  "label_conflicts_dropped": len(conflict)}
    with open(OUT / "categories.jsonl", "w", encoding="utf-8") as f:
        for r in out:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    STATS["categories_counts"] = collections.Counter(f"{r['category']}|{r['source']}" for r in out)
    # difficulty: every MATH train problem with a level 1-5 (not capped), exclusions applied
    diff = [r for r in dedupe_norm(math_train) if r["level"] in (1, 2, 3, 4, 5) and not excluded(r["text"])]
    with open(OUT / "difficulty.jsonl", "w", encoding="utf-8") as f:
        for r in diff:
            f.write(json.dumps({"text": r["text"], "source": "math", "level": r["level"], "subject": r["subject"],
                                "split": "train"}, ensure_ascii=False) + "\n")
    STATS["difficulty_counts"] = collections.Counter(r["level"] for r in diff)
    STATS["difficulty_dropped_no_level"] = sum(1 for r in math_train if r["level"] is None)
    return out


# ---------------------------------------------------------------- pairs
def oa_pairs():
    repo = "LAION-AI/Open-Assistant"
    path = "model/model_eval/manual/data/en_100_tree.jsonl"
    pairs, skipped = [], collections.Counter()

    def ok(n):
        return not n.get("deleted") and n.get("review_result") is not False and n.get("text", "").strip()

    def walk(node, history, tree_id):
        # node is a prompter message; history is list of (role, text) before it
        if not ok(node):
            skipped["bad_prompter"] += 1
            return
        hist = history + [("User", node["text"].strip())]
        reps = [r for r in node.get("replies", []) if r.get("role") == "assistant"]
        ranked = [r for r in reps if ok(r) and r.get("rank") is not None]
        if len(ranked) >= 2:
            instr = hist[0][1] if len(hist) == 1 else "\n".join(f"{who}: {t}" for who, t in hist)
            user_turns = [t for who, t in hist if who == "User"]
            if any(norm(u) in exclusion()[2] for u in user_turns):
                skipped["alpaca_eval_match_groups"] += 1
            else:
                for a in ranked:
                    for b in ranked:
                        if a["rank"] < b["rank"] and a["text"].strip() != b["text"].strip():
                            pairs.append({
                                "instruction": instr, "chosen": a["text"].strip(), "rejected": b["text"].strip(),
                                "source": "oasst_en_100_tree", "split": "model_eval_manual", "label_kind": "human",
                                "chosen_rank": a["rank"], "rejected_rank": b["rank"],
                                "best_vs_other": a["rank"] == min(x["rank"] for x in ranked),
                                "group_id": node["message_id"], "tree_id": tree_id, "turn_depth": len(user_turns),
                                "synthetic": bool(a.get("synthetic") or b.get("synthetic") or node.get("synthetic")),
                            })
        for a in reps:
            if not ok(a):
                continue
            for p in a.get("replies", []):
                if p.get("role") == "prompter":
                    walk(p, hist + [("Assistant", a["text"].strip())], tree_id)

    for t in jsonl(source_text("oasst_en_100_tree", repo, path)):
        walk(t["prompt"], [], t["message_tree_id"])
    STATS["oa_skipped"] = dict(skipped)
    return pairs


def uf_pairs():
    repo = "kkminions888-ops/ultrafeedback-dpo-noise-study"
    out = []
    for fn, split in (("train_clean", "train"), ("eval_clean", "eval")):
        path = f"data/processed/{fn}.jsonl"
        for r in jsonl(source_text("ultrafeedback_dpo_noise_study", repo, path)):
            def last_text(x):
                if isinstance(x, list):
                    xs = [m for m in x if m.get("role") == "assistant"] or x
                    return xs[-1]["content"]
                return x
            def prompt_text(x):
                if isinstance(x, list):
                    return "\n".join(m["content"] for m in x if m.get("role") == "user")
                return x
            out.append({"instruction": prompt_text(r["prompt"]).strip(), "chosen": last_text(r["chosen"]).strip(),
                        "rejected": last_text(r["rejected"]).strip(), "source": "ultrafeedback_dpo_noise_study",
                        "split": split, "label_kind": "ai",
                        "score_chosen": r.get("metadata", {}).get("score_chosen"),
                        "score_rejected": r.get("metadata", {}).get("score_rejected"),
                        "source_index": r.get("source_index")})
    return out


def build_pairs():
    oa = oa_pairs()
    uf = uf_pairs()
    drops = collections.Counter()
    keep_uf = []
    for r in uf:
        if r["chosen"] == r["rejected"]:
            drops["identical_chosen_rejected"] += 1
        elif r["score_chosen"] is not None and r["score_chosen"] == r["score_rejected"]:
            drops["tied_scores"] += 1
        else:
            keep_uf.append(r)
    STATS["uf_drops_pre_exclusion"] = dict(drops)
    # shared-data exclusion on the prompt for both sources (OA: the first user turn)
    oa = filt("pairs:oasst_en_100_tree", oa, key=lambda r: r["instruction"].split("\nAssistant: ")[0].removeprefix("User: "))
    keep_uf = filt("pairs:ultrafeedback_dpo_noise_study", keep_uf, key=lambda r: r["instruction"])
    rows, seen, dup = [], set(), 0
    for r in oa + keep_uf:
        k = (norm(r["instruction"]), norm(r["chosen"]), norm(r["rejected"]))
        if k in seen:
            dup += 1
            continue
        seen.add(k)
        rows.append(r)
    STATS["pairs_duplicates_dropped"] = dup
    with open(OUT / "pairs.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    STATS["pairs_counts"] = collections.Counter(f"{r['source']}|{r['split']}|{r['label_kind']}" for r in rows)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="build the public training sets of the classifier and onepass heads")
    ap.add_argument("--mirror", type=Path, default=MIRROR, help="folder of bare clones named <owner>+<name>/repo")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    OUT, MIRROR = a.out, a.mirror
    OUT.mkdir(parents=True, exist_ok=True)
    build_categories()
    build_pairs()
    STATS["provenance"] = PROV
    (OUT / "stats.json").write_text(json.dumps(STATS, indent=1, default=str, ensure_ascii=False))
    print(json.dumps({k: STATS[k] for k in ("categories_counts", "exclusion", "pairs_counts",
                                            "categories_global", "difficulty_counts", "oa_skipped",
                                            "uf_drops_pre_exclusion", "pairs_duplicates_dropped", "notes",
                                            "math_alloc")}, indent=1, default=str))
