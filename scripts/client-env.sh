#!/usr/bin/env bash
# The real clients the API is tested with (tests/clients/): the official
# `openai` Python package, the MCP SDK (`mcp`) and an OpenAPI validator for
# /openapi.json in a virtual environment, and `playwright-core`
# from npm driving Debian's Chromium. Idempotent; prints two lines:
#   RAG_CLIENT_PYTHON=<python with openai and mcp>
#   RAG_CLIENT_NODE_MODULES=<node_modules with playwright-core>
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${RAG_CLIENT_DIR:-target/clients}
mkdir -p "$DIR"
if [ ! -x "$DIR/venv/bin/python" ] || ! "$DIR/venv/bin/python" -c "import openai, openapi_spec_validator, mcp" 2>/dev/null; then
    python3 -m venv "$DIR/venv" >&2
    "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check \
        openai==2.8.1 openapi-spec-validator==0.7.2 mcp==2.3.0 >&2
fi
if [ ! -d "$DIR/node/node_modules/playwright-core" ]; then
    mkdir -p "$DIR/node"
    npm install --silent --no-audit --no-fund --prefix "$DIR/node" playwright-core@1.57.0 >&2
fi
echo "RAG_CLIENT_PYTHON=$PWD/$DIR/venv/bin/python"
echo "RAG_CLIENT_NODE_MODULES=$PWD/$DIR/node/node_modules"
