#!/usr/bin/env bash
# Builds `rag`, installs the default models, ingests the fixture wiki and
# answers a sample question on the embedded default (no server to install).
# Then: `./target/release/rag serve` for the HTTP API.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked -p rag-api
RAG=./target/release/rag

"$RAG" models fetch
"$RAG" ingest fixtures/wiki
"$RAG" ask "How many vacation days do employees get per year?"

echo
echo "Try your own question:  $RAG ask \"What is the hotel limit in Europe?\""
echo "Serve the chat page:    $RAG serve   (then open http://localhost:8080/ ; OpenAI clients: base_url http://localhost:8080/v1, model \"rag\")"
