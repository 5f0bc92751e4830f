"""The official `openai` package against `rag serve`: a normal and a streamed
completion, citations read from both, RAG options through `extra_body`, and
the SDK's own error types for our error statuses.

    python openai_client.py BASE_URL     (BASE_URL ends in /v1)

Prints one JSON line; an assertion error fails the run.
"""

import json
import sys

import openai
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key=sys.argv[2] if len(sys.argv) > 2 else "none", max_retries=0)
question = [{"role": "user", "content": "Which password manager does the company use?"}]

models = [m.id for m in client.models.list()]
assert models[0] == "rag", models

full = client.chat.completions.create(model="rag", messages=question, temperature=0)
content = full.choices[0].message.content
extra = full.model_extra
assert extra["abstained"] is False, extra
assert extra["citations"][0]["source"] == "it/passwords-and-2fa.md", extra["citations"]
assert "[1]" in content, content
assert full.usage.prompt_tokens > 0 and full.usage.completion_tokens > 0, full.usage
assert full.usage.model_extra["retrieval_ms"] >= 0 and full.usage.model_extra["generation_ms"] > 0

text, last = "", None
for chunk in client.chat.completions.create(model="rag", messages=question, temperature=0, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    last = chunk
assert text == content, (text, content)
assert last.model_extra["citations"] == extra["citations"]
assert last.choices[0].finish_reason in ("stop", "length")

# RAG options ride in extra_body: a collection with nothing in it abstains.
empty = client.chat.completions.create(
    model="rag", messages=question, extra_body={"rag": {"collection": "no-such-collection"}}
)
assert empty.model_extra["abstained"] is True, empty

try:
    client.chat.completions.create(model="gpt-4", messages=question)
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as e:
    assert "GET /v1/models" in str(e), e
try:
    client.chat.completions.create(model="rag", messages=question, max_tokens=0)
    raise AssertionError("max_tokens 0 must fail")
except openai.BadRequestError as e:
    assert "max_tokens" in str(e), e

# The OpenAPI document is valid OpenAPI 3.1 and describes every endpoint.
import urllib.request  # noqa: E402

from openapi_spec_validator import validate  # noqa: E402

spec = json.load(urllib.request.urlopen(sys.argv[1].removesuffix("/v1") + "/openapi.json"))
validate(spec)
for path, method in [
    ("/v1/chat/completions", "post"), ("/v1/ask", "post"), ("/v1/retrieve", "post"), ("/v1/models", "get"),
    ("/v1/documents", "post"), ("/v1/documents", "get"), ("/v1/documents/{id}", "get"),
    ("/v1/documents/{id}", "delete"), ("/v1/jobs/{id}", "get"), ("/healthz", "get"), ("/readyz", "get"),
    ("/metrics", "get"),
]:
    assert method in spec["paths"].get(path, {}), (path, method)

print(json.dumps({"models": models, "answer": content, "citations": len(extra["citations"]), "streamed_chars": len(text)}))
