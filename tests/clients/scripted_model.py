"""A scripted model server for the answer checks: an OpenAI-compatible
`/v1/chat/completions` (plain and streamed) whose reply is chosen by the
`(case N)` in the question, from a JSON file of `{"N": "reply"}`.

    python scripted_model.py PORT REPLIES.json

It stands in for the model only, to make it say exactly what a test needs
(a right answer, or one with a changed number, name or negation); the
server under test, its retrieval and its checks are the real ones.
`[@Title]` in a reply becomes the number of the passage titled so in the
prompt, so a reply cites what retrieval put where. Standard library only.
"""

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
REPLIES = json.load(open(sys.argv[2]))


def reply_for(messages):
    prompt = "\n".join(m.get("content", "") for m in messages)
    case = re.findall(r"\(case (\d+)\)", prompt)
    text = REPLIES.get(case[-1], "The documents do not cover this question.") if case else "No case."

    def number(m):
        found = re.search(r"\[(\d+)\] \(" + re.escape(m.group(1)), prompt)
        return "[" + (found.group(1) if found else "1") + "]"

    return re.sub(r"\[@([^\]]+)\]", number, text)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_json({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        text = reply_for(request["messages"])
        usage = {"prompt_tokens": 100, "completion_tokens": len(text.split()), "total_tokens": 100 + len(text.split())}
        if not request.get("stream"):
            self.send_json({
                "id": "x", "object": "chat.completion", "model": "scripted",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage,
            })
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()

        def event(value):
            self.wfile.write(b"data: " + json.dumps(value).encode() + b"\n\n")
            self.wfile.flush()

        # Word by word, as a model streams: a sentence arrives in pieces.
        for piece in re.findall(r"\S+\s*", text):
            event({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        event({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        event({"id": "x", "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
