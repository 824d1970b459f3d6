#!/usr/bin/env bash
# Cadenza's one entry point.
#   ./run.sh [--host H --port N --auth user:pw ...]   set up (if needed) and start the studio
#   ./run.sh test       set up (if needed) and run the whole test suite
#   ./run.sh <command>  set up (if needed) and run `python -m engine <command> ...` (compose, render, ...)
# Set-up creates .venv with Python 3.11 and installs requirements.txt; it is skipped when
# requirements.txt has not changed since the last successful install (a stamp file holds its hash).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${CADENZA_PYTHON:-python3.11}"
VENV=".venv"
STAMP="$VENV/.requirements.sha256"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        command -v "$PYTHON" >/dev/null || { echo "run.sh: $PYTHON not found; install Python 3.11 or set CADENZA_PYTHON" >&2; exit 1; }
        echo "run.sh: creating $VENV with $PYTHON" >&2
        "$PYTHON" -m venv "$VENV"
    fi
    want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
    if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
        echo "run.sh: installing pinned requirements (no model weights are downloaded)" >&2
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
        echo "$want" > "$STAMP"
    fi
}

setup
PY="$VENV/bin/python"
case "${1:-}" in
    test)
        shift
        exec "$PY" -m pytest -q tests "$@"
        ;;
    ""|-*)
        # The studio: http://127.0.0.1:7860 by default, offline, on the bundled model.
        exec "$PY" -m webui "$@"
        ;;
    *)
        exec "$PY" -m engine "$@"
        ;;
esac
