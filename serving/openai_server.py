"""An OpenAI-compatible HTTP endpoint over an EngineLoop, on the standard library alone (no torch, no web framework):
POST /v1/chat/completions (whole or streamed as server-sent events), GET /v1/models[/{id}], GET /health and GET /metrics
(the engine loop's counts, in Prometheus' format).

Each connection gets a thread (ThreadingHTTPServer). A request's thread parses the body, submits it to the loop and
waits on a queue.Queue that the loop's callbacks only put into, so a slow client never holds up the engine's thread.
While it waits it watches its socket: a client that went away is cancelled, and its batch row goes to the next one.
"""
import json
import logging
import queue
import select
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from runtime.errors import InputError
from runtime.inflight import Cancelled
from runtime.sampling import GREEDY
from serving import openai_response as shape
from serving.engine_loop import EngineLoop, Overloaded, Unavailable
from serving.openai_request import RequestError, parse_chat
from serving.stream_text import StreamText

log = logging.getLogger("prunevlm.serving.openai")

MAX_BODY_BYTES = 32 << 20  # room for one 20 MiB image (openai_request.MAX_IMAGE_BYTES) in base64
POLL_S = 0.2  # how often a request waiting on the engine checks that its client is still connected


class HttpError(Exception):
    """An answer other than 200: its status, the message the client sees, extra headers; close: the connection
    cannot be reused (the body was left unread)."""

    def __init__(self, status: int, message: str, headers: dict | None = None, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close


class ClientGone(Exception):
    """The client closed its connection (or stopped reading) before the answer was sent."""


class OpenAIServer:
    def __init__(self, loop: EngineLoop, model_name: str, host: str = "127.0.0.1", port: int = 9000,
                 local_images: Path | None = None, max_body_bytes: int = MAX_BODY_BYTES, socket_timeout: float = 60.0):
        """port 0 binds a free port (read `.port` after start()). local_images: the folder image paths may name
        (None: data: URLs only). socket_timeout: how long a connection may idle, or a client stall a send."""
        self.loop, self.model_name, self.host, self.port = loop, model_name, host, port
        self.local_images, self.max_body_bytes, self.socket_timeout = local_images, max_body_bytes, socket_timeout
        self.created = int(time.time())
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL OpenAI clients take."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "OpenAIServer":
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.app = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"prunevlm-openai-{self.port}", daemon=True)
        self._thread.start()
        log.info("serving %s at %s", self.model_name, self.url)
        return self

    def stop(self):
        """Stops accepting connections and closes the listening socket; requests in progress end with the loop."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a connection's thread never keeps the process (or stop()) waiting
    app: OpenAIServer

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # a client that left an idle keep-alive connection
            log.debug("connection from %s ended: %s", client_address[0], error)
        else:
            log.warning("connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: JSON answers carry Content-Length, streams are chunked
    server_version = "prunevlm"
    server: _HTTPServer

    def setup(self):
        self.app = self.server.app
        self.timeout = self.app.socket_timeout
        # started: a status line went out, so no error answer can follow; body_read: the connection may go on
        self.status, self.started, self.body_read = None, False, False
        super().setup()

    # ------------------------------------------------------------------ routing
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def _route(self, path: str):
        """(handler, the method it takes) for a path, or (None, None)."""
        if path == "/v1/chat/completions":
            return self._chat, "POST"
        if path == "/v1/models":
            return self._models, "GET"
        if path.startswith("/v1/models/"):
            return self._model, "GET"
        if path == "/health":
            return self._health, "GET"
        if path == "/metrics":
            return self._metrics, "GET"
        return None, None

    def _dispatch(self, method: str):
        start, self.status, self.started, self.body_read = time.perf_counter(), None, False, False
        path = unquote(urlsplit(self.path).path)
        try:
            handler, allowed = self._route(path)
            if handler is None:
                raise HttpError(404, f"there is no {path} here; this server answers POST /v1/chat/completions, "
                                     "GET /v1/models, GET /health and GET /metrics")
            if method != allowed:
                raise HttpError(405, f"{path} takes {allowed}, not {method}", {"Allow": allowed})
            handler(path)
        except HttpError as e:
            self._error(e.status, e.message, e.headers, e.close)
        except ClientGone:
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", method, path)
            self._error(500, "internal server error: the request failed on the server; its log has the details")
        log.info('%s "%s %s" %s %.0f ms', self.client_address[0], method, path, self.status,
                 (time.perf_counter() - start) * 1e3)

    # ------------------------------------------------------------------ endpoints
    def _models(self, path: str):
        self._json(200, {"object": "list", "data": [self._card()]})

    def _model(self, path: str):
        name = path.removeprefix("/v1/models/")
        if name != self.app.model_name:
            raise HttpError(404, f"model {name!r} is not served here; this server serves {self.app.model_name!r}")
        self._json(200, self._card())

    def _card(self) -> dict:
        return {"id": self.app.model_name, "object": "model", "created": self.app.created, "owned_by": "prunevlm"}

    def _health(self, path: str):
        self._json(200, {"status": "ok", "model": self.app.model_name, "loop": self.app.loop.stats()})

    def _metrics(self, path: str):
        self._reply(200, shape.metrics(self.app.loop.stats(), self.app.model_name).encode(),
                    "text/plain; version=0.0.4")

    def _chat(self, path: str):
        body = self._body()
        try:
            chat = parse_chat(body, self.app.model_name, self.app.local_images)
        except RequestError as e:
            raise HttpError(e.status, e.message) from None
        events = queue.Queue()  # the loop's thread only puts here; this thread waits
        on_token = (lambda token, text: events.put(("token", text))) if chat.stream else None
        try:
            job = self.app.loop.submit(chat.request, on_token, lambda result, error: events.put(("done", result, error)))
        except Overloaded as e:
            raise HttpError(429, str(e), {"Retry-After": "1"}) from None
        except Unavailable as e:
            raise HttpError(503, str(e)) from None
        try:
            # A stream's 200 waits for its first token, so a request the engine refuses still gets its error status.
            event = self._next(events)
            if event[0] == "done" and event[2] is not None:
                raise engine_error(event[2])
            reply = shape.Completion(self.app.model_name)
            if chat.stream:
                self._stream(chat, reply, event, events)
            else:
                self._json(200, reply.whole(event[1], self.app.loop.g.vision_tokens))
        except BaseException:
            self.app.loop.cancel(job)  # a no-op once it ended; frees its row when the client left
            raise

    def _stream(self, chat, reply: shape.Completion, event: tuple, events: queue.Queue):
        self.chunked = self.request_version != "HTTP/1.0"  # an HTTP/1.0 client reads the stream to the close instead
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header(*(("Transfer-Encoding", "chunked") if self.chunked else ("Connection", "close")))
        self._end_headers()
        self._event(reply.chunk({"role": "assistant", "content": ""}))
        text = StreamText((chat.request.sampling or GREEDY).stop)
        while event[0] == "token":
            delta = text.update(event[1])
            if delta:
                self._event(reply.chunk({"content": delta}))
            event = self._next(events)
        _, result, error = event
        if error is not None:  # after the 200: the error goes in the stream, as OpenAI's does
            e = engine_error(error)
            self._event(shape.error(e.status, e.message))
        else:
            delta = text.finish(result.text)
            if text.sent != result.text:
                log.warning("the streamed text %r differs from the result's %r", text.sent, result.text)
            if delta:
                self._event(reply.chunk({"content": delta}))
            self._event(reply.chunk({}, result.finish_reason, prunevlm=shape.extension(result)))
            if chat.include_usage:
                self._event(reply.chunk(usage=shape.usage(result, self.app.loop.g.vision_tokens)))
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")  # the end of the chunked body

    # ------------------------------------------------------------------ reading and waiting
    def _body(self) -> bytes:
        length, limit = self.headers.get("Content-Length"), self.app.max_body_bytes
        if length is None:
            raise HttpError(411, "send the request body with a Content-Length header", close=True)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise HttpError(400, f"Content-Length {length!r} is not a byte count", close=True) from None
        if n > limit:  # refused before reading it: the connection then closes, the body unread
            raise HttpError(413, f"the request body is {n} bytes, over this server's limit of {limit} bytes",
                            close=True)
        try:
            body = self.rfile.read(n)
        except OSError:
            raise ClientGone from None
        if len(body) < n:
            raise ClientGone
        self.body_read = True
        return body

    def _next(self, events: queue.Queue) -> tuple:
        """The next event of the request, raising ClientGone if the client disconnects meanwhile."""
        while True:
            try:
                return events.get(timeout=POLL_S)
            except queue.Empty:
                if self._client_gone():
                    raise ClientGone from None

    def _client_gone(self) -> bool:
        """A readable socket with nothing to read is one the client closed (a pipelined request would be data)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # ------------------------------------------------------------------ writing
    def _json(self, status: int, body: dict, headers: dict | None = None):
        self._reply(status, json.dumps(body).encode(), "application/json", headers)

    def _reply(self, status: int, data: bytes, content_type: str, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._end_headers()
        self._write(data)

    def _error(self, status: int, message: str, headers: dict | None = None, close: bool = False):
        if self.started:  # a stream broke after its 200: nothing to answer with but closing
            self.close_connection = True
            return
        headers = dict(headers or {})
        if close or (self._has_body() and not self.body_read):  # unread body bytes would read as the next request
            headers["Connection"] = "close"  # send_header then sets close_connection
        try:
            self._json(status, shape.error(status, message), headers)
        except ClientGone:
            self.close_connection = True

    def _has_body(self) -> bool:
        headers = getattr(self, "headers", None)  # None where http.server refused the request line itself
        return headers is not None and (headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers)

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a malformed request line, an unknown method) as OpenAI-shaped JSON too."""
        self.started = False  # it refuses before its do_* method: nothing of this request's answer went out
        self._error(code, message or HTTPStatus(code).phrase, close=True)

    def _end_headers(self):
        self.started = True
        try:
            self.end_headers()
        except OSError:
            raise ClientGone from None

    def _event(self, body: dict):
        self._chunk(b"data: " + json.dumps(body).encode() + b"\n\n")

    def _chunk(self, data: bytes):
        """One piece of a stream's body; b"" ends it."""
        if self.chunked:
            self._write(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self._write(data)

    def _write(self, data: bytes):
        try:
            self.wfile.write(data)
        except OSError:  # BrokenPipeError, ConnectionResetError, or a send that timed out
            raise ClientGone from None

    def log_request(self, code="-", size="-"):
        self.status = int(code) if str(code).isdigit() else code  # _dispatch logs one line per request

    def log_message(self, format, *args):
        log.debug("%s " + format, self.client_address[0], *args)


def engine_error(error: Exception) -> HttpError:
    """The status and message of a request the loop ended with an error."""
    if isinstance(error, InputError):
        return HttpError(400, str(error))
    if isinstance(error, (Unavailable, Cancelled)):
        return HttpError(503, str(error))
    log.error("the engine failed on a request", exc_info=error)
    return HttpError(500, f"the engine failed on this request ({type(error).__name__}); the server's log has the "
                          "details")
