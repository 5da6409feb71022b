"""A local OpenAI-compatible server for tests: real HTTP on 127.0.0.1, scripted answers.

    with FakeOpenAI() as server:
        server.add("Hypothesis: ...", {"status": 429}, {"hang": 5})
        ... OPENAI_BASE_URL=server.url ...
        server.requests  # the JSON bodies of the chat requests received

Each POST /v1/chat/completions takes the next scripted item: a string is the answer's content (with a `usage`
block: tokens estimated as characters/4, or given as {"content": ..., "usage": [prompt, completion]}); {"status": N}
answers HTTP N with an OpenAI-style error body; {"hang": S} sends nothing for S seconds; a callable gets the request
body and returns one of these. When the script is empty, `respond` (if given) answers every request, e.g. a real
local model. GET /v1/models lists one model.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self, model: str = "fake", respond=None):
        self.model = model
        self.respond = respond
        self.script: deque = deque()
        self.requests: list[dict] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def add(self, *items) -> None:
        self.script.extend(items)

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _next(self, body: dict):
        with self._lock:
            self.requests.append(body)
            if self.script:
                return self.script.popleft()
        if self.respond is not None:
            return self.respond
        return {"status": 400, "message": "fake server: no scripted answer left"}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "created": 0, "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                item = server._next(body)
                if callable(item):
                    item = item(body)
                if isinstance(item, dict) and "hang" in item:
                    server.stopping.wait(item["hang"])
                    item = item.get("then", "Hypothesis: too late")
                if isinstance(item, dict) and "status" in item:
                    status = item["status"]
                    headers = {"retry-after-ms": "10"} if status == 429 else {}
                    self._send(status, {"error": {"message": item.get("message", f"scripted HTTP {status}"),
                                                  "type": "rate_limit_exceeded" if status == 429 else "error",
                                                  "param": None, "code": None}}, headers)
                    return
                content = item if isinstance(item, str) else item["content"]
                if isinstance(item, dict) and "usage" in item:
                    prompt, completion = item["usage"]
                else:
                    prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
                    completion = len(content) // 4
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", server.model),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion},
                })

        return Handler
