#!/usr/bin/env bash
# Runs tests/server/test_server.py against a hipserve binary: usage run_server_test.sh HIPSERVE BUILD_DIR [KIND]
# (KIND: release or asan; sanitized binaries get longer timeouts).
# The official `openai` client comes from PyPI into BUILD_DIR/server-venv (created once); without network the
# tests that need it skip with a message and the raw-HTTP tests still run. Exit 77 (ctest: skipped) when the
# model is missing.
set -u
HIPSERVE=$1
BUILD_DIR=$2
export HIPSERVE_BUILD_KIND=${3:-release}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OPENAI_VERSION=3.57.0

MODEL=${HIPSERVE_MODEL:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
if [ ! -r "$MODEL" ]; then
  echo "SKIP: model not found at $MODEL (run scripts/fetch_model.sh)"
  exit 77
fi

VENV=$BUILD_DIR/server-venv
PY=python3
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  PY=$VENV/bin/python
elif python3 -m venv "$VENV" >/dev/null 2>&1; then
  if timeout 300 "$VENV/bin/pip" install -q --disable-pip-version-check "openai==$OPENAI_VERSION" >/dev/null 2>&1; then
    PY=$VENV/bin/python
  else
    echo "NOTE: could not install openai==$OPENAI_VERSION from PyPI (offline?); the openai-client tests will skip"
    PY=$VENV/bin/python
  fi
else
  echo "NOTE: python3 -m venv failed (install python3-venv); the openai-client tests will skip"
fi

export HIPSERVE_MODEL=$MODEL
exec "$PY" "$HERE/test_server.py" --hipserve "$HIPSERVE" -v
