"""uvicorn's httptools protocol with V2 infer requests answered without the ASGI layer.

At batch 1 a small model costs less than the request around it, and half of the event
loop's busy time went to uvicorn's per-request ASGI machinery (scope dict, request
cycle, Event, message dicts) and to writing the response head and body in two sends.
This subclass keeps everything uvicorn does for connections (parsing with httptools,
keep-alive, flow control, graceful shutdown) and every other route, and takes a
``POST .../infer`` straight to ``answer_infer``, writing the answer in one send.

It leans on uvicorn's protocol internals, so it is used only with the uvicorn versions
it was tested with (``supported``); any other version serves through plain ASGI.
"""

from __future__ import annotations

import asyncio

from slimserve.serve.app import HEADER_LENGTH, ServerState, infer_target, refusal, reply_infer

TESTED_UVICORN = ((0, 54), (0, 55))  # [from, to): versions whose internals it was run on


def supported() -> bool:
    """True when the installed uvicorn is one this protocol was tested against."""
    try:
        import uvicorn
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: F401
    except ImportError:
        return False
    version = tuple(int(p) for p in uvicorn.__version__.split(".")[:2] if p.isdigit())
    return TESTED_UVICORN[0] <= version < TESTED_UVICORN[1]


class _Answering:
    """Stands in for uvicorn's request cycle while an infer request is answered, so that
    uvicorn's own code queues pipelined requests behind it (``response_complete``),
    marks it on disconnect and asks it to close on shutdown (``keep_alive``)."""

    __slots__ = ("disconnected", "keep_alive", "message_event", "response_complete", "waiting")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive
        self.message_event = asyncio.Event()
        self.waiting = False  # counted in ServerState.http_waiting


def protocol_class(state: ServerState) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to the server's state."""
    import orjson
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    config = state.config

    class InferProtocol(HttpToolsProtocol):
        # The request being read: (model, version) and its body so far; ``infer_refused``
        # when it was answered from its head (401, 413) and its body is to be skipped.
        infer_target: tuple[str, str | None] | None = None
        infer_refused = False
        infer_body: list[bytes]
        infer_size = 0
        infer_header_length: bytes | None = None
        answering: _Answering

        def on_message_begin(self) -> None:
            # uvicorn builds the ASGI scope here; only the requests it serves need one.
            self.url = b""
            self.expect_100_continue = False
            self.headers = []

        def on_headers_complete(self) -> None:
            self.infer_target = None
            self.infer_refused = False
            target = None
            if (
                (self.cycle is None or self.cycle.response_complete)  # else: pipelined
                and self.parser.get_method() == b"POST"
                and not self.expect_100_continue
                and not self.parser.should_upgrade()
            ):
                path = self.url.split(b"?", 1)[0]
                if b"%" not in path:
                    target = infer_target("POST", path.decode("latin-1"))
            if target is None:
                url, headers = self.url, self.headers
                super().on_message_begin()
                self.url, self.headers = url, headers
                self.scope["headers"] = headers
                super().on_headers_complete()
                return
            self.answering = _Answering(keep_alive=self.parser.should_keep_alive())
            self.cycle = self.answering  # type: ignore[assignment]  # uvicorn reads 4 fields
            fields = dict(self.headers)
            refused = refusal(config, fields)  # the checks _Front makes for other routes
            if refused is not None:
                self._refuse(*refused)
                return
            self.infer_target = target
            self.infer_header_length = fields.get(HEADER_LENGTH)
            self.infer_body = []
            self.infer_size = 0

        def connection_lost(self, exc: Exception | None) -> None:
            answering = getattr(self, "answering", None)
            if answering is not None:  # gone: no longer a client that waits
                _settle(answering)
            super().connection_lost(exc)

        def _refuse(self, status: int, message: str) -> None:
            # Answered from the head; the connection closes rather than read the body.
            self.infer_target = None
            self.infer_refused = True
            self.answering.keep_alive = False
            self._write(self.answering, status, orjson.dumps({"error": message}), [])

        def on_body(self, body: bytes) -> None:
            if self.infer_refused:
                return
            if self.infer_target is None:
                super().on_body(body)
            else:
                self.infer_size += len(body)
                if self.infer_size > config.max_body_bytes:  # chunked: no Content-Length
                    self._refuse(
                        413, f"Request body is over the {config.max_body_bytes}-byte limit."
                    )
                    return
                self.infer_body.append(body)

        def on_message_complete(self) -> None:
            target = self.infer_target
            if self.infer_refused:
                self.infer_refused = False
                return
            if target is None:
                super().on_message_complete()
                return
            self.infer_target = None
            body = self.infer_body[0] if len(self.infer_body) == 1 else b"".join(self.infer_body)
            self.infer_body = []
            answering = self.answering
            parsing = True
            if state.http_connections is None:
                state.http_connections = self.connections  # uvicorn's set of them all
            answering.waiting = True  # before submit: the batcher counts this one
            state.http_waiting += 1

            def reply(answer: tuple[int, bytes, list[tuple[bytes, bytes]]]) -> None:
                _settle(answering)
                if parsing:  # refused before the model: answer once httptools is done
                    self.loop.call_soon(self._write, answering, *answer)
                else:
                    self._write(answering, *answer)

            # No task per request: the answer is written from the batch's callback.
            try:
                reply_infer(state, target, self.infer_header_length, body, reply)
            except Exception:  # reply_infer answers every error itself: a bug if here
                self.logger.exception("Exception answering a V2 infer request")
                answering.keep_alive = False
                reply((500, b'{"error": "Internal Server Error"}', []))
            parsing = False

        def _write(
            self,
            cycle: _Answering,
            status: int,
            payload: bytes,
            headers: list[tuple[bytes, bytes]],
        ) -> None:
            # ``cycle``, not self.cycle: a pipelined request may have taken that slot.
            cycle.response_complete = True
            if cycle.disconnected or self.transport.is_closing():
                return
            head = [STATUS_LINE[status]]
            if not headers:
                headers = [(b"content-type", b"application/json")]
            for name, value in (*self.server_state.default_headers, *headers):
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-length: %d\r\n" % len(payload))
            if not cycle.keep_alive:
                head.append(b"connection: close\r\n")
            head += [b"\r\n", payload]
            self.transport.write(b"".join(head))  # one send: head and body together
            if not cycle.keep_alive:
                self.transport.close()
                return
            self.on_response_complete()  # uvicorn's: next pipelined request, keep-alive timer

    def _settle(answering: _Answering) -> None:
        # Uncount a request once, whether its answer or its connection's end comes first.
        if answering.waiting:
            answering.waiting = False
            state.http_waiting -= 1

    return InferProtocol
