"""A stand-in gateway for the CLI's unit tests: canned answers over real HTTP on loopback (so
the CLI's own client, its errors and its exit statuses are what is tested), every request
recorded, and the ways a gateway goes away: stopped, or a connection dropped mid-answer."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

# An answer: (status, JSON body), or DROP (close the connection without answering), or a
# function of the request giving either.
DROP = "drop"
Answer = tuple[int, Any] | str
Route = Answer | Callable[["Seen"], Answer]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGateway:
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def answer(self, method: str, path: str, route: Route) -> None:
        self.routes[(method, path)] = route

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if (s.method, s.path) == (method, path)]

    def start(self) -> FakeGateway:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers),
                            json.loads(raw) if raw else None)
                fake.seen.append(seen)
                route = fake.routes.get((self.command, self.path),
                                        (404, {"error": f"no {self.path}", "problems": []}))
                answer = route(seen) if callable(route) else route
                if answer == DROP:
                    self.close_connection = True
                    self.connection.shutdown(2)  # reset: no status line, no body
                    return
                status, body = answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        """The gateway is gone: new connections are refused."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
