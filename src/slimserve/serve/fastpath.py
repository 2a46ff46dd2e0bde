"""uvicorn's httptools protocol with V2 infer requests answered without the ASGI layer.

At batch 1 a small model costs less than the request around it, and half of the event
loop's busy time went to uvicorn's per-request ASGI machinery (scope dict, request
cycle, Event, message dicts) and to writing the response head and body in two sends.
This subclass keeps everything uvicorn does for connections (parsing with httptools,
keep-alive, flow control, graceful shutdown) and every other route, and takes a
``POST .../infer`` straight to ``answer_infer``, writing the answer in one send.

It also enforces what uvicorn's httptools protocol does not: a bound on the request
head (431), time limits on sending the head and the body (408), and a shutdown that
answers what clients already sent on keep-alive connections before closing them.

It leans on uvicorn's protocol internals, so it is used only with the uvicorn versions
it was tested with (``supported``); any other version serves through plain ASGI.
"""

from __future__ import annotations

import asyncio

from slimserve.serve.http import infer_target, refusal
from slimserve.serve.infer import HEADER_LENGTH, answer_error, reply_infer
from slimserve.serve.state import ServerState

TESTED_UVICORN = ((0, 54), (0, 55))  # [from, to): versions whose internals it was run on
# After shutdown begins, how long an idle keep-alive connection stays open for a request
# its client already sent (on loopback one arrives within microseconds).
SHUTDOWN_GRACE_S = 0.5
LINGER_S = 2.0  # how long a refused request's leftover bytes are read and dropped


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


def shed_answer(
    state: ServerState, target: tuple[str, str | None]
) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """The 503 answer for a request to a model whose queue is full, else None."""
    try:
        model = state.find(*target)
    except LookupError:
        return None
    batcher = state.batchers[(model.name, model.version)]
    if not batcher.full():
        return None
    state.observe(model.name, 503, 0.0, "http")
    return answer_error(model, batcher.refusal())


def protocol_class(state: ServerState) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, bound to the server's state."""
    import orjson
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    from slimserve.serve.openai import error_body as openai_error

    config = state.config

    class InferProtocol(HttpToolsProtocol):
        # The request being read: (model, version) and its body so far; ``infer_refused``
        # when it was answered from its head (401, 413) and its body is to be skipped.
        infer_target: tuple[str, str | None] | None = None
        infer_refused = False
        infer_shed: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        infer_body: list[bytes]
        infer_size = 0
        infer_header_length: bytes | None = None
        answering: _Answering
        # The head being read: bytes so far (None once complete) and the read deadline.
        head_bytes: int | None = 0
        read_timer: asyncio.TimerHandle | None = None
        draining = False  # shutdown began: answer what arrives, then close
        # A request that could not be read was answered and the connection half-closed:
        # what the client still sends is dropped, never parsed (nor answered twice).
        discarding = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(config.header_timeout_s, "head")  # a connection that sends nothing

        def data_received(self, data: bytes) -> None:
            if self.discarding:
                return
            if self.head_bytes is not None:
                if self.read_timer is None:  # the first byte of a request: the clock starts
                    self._arm(config.header_timeout_s, "head")
                allowance = config.max_header_bytes - self.head_bytes
                if len(data) > allowance:
                    # Feed no more than the limit: httptools keeps every header in memory.
                    super().data_received(data[:allowance])
                    if self.head_bytes is not None and not self.transport.is_closing():
                        self._fail_read(
                            431,
                            f"The request head is over the {config.max_header_bytes}-byte "
                            "limit (--max-header-kb).",
                        )
                        return
                    data = data[allowance:]
                else:
                    self.head_bytes += len(data)
            super().data_received(data)

        def _arm(self, seconds: float, part: str) -> None:
            self._disarm()
            self.read_timer = self.loop.call_later(seconds, self._read_timed_out, part)

        def _disarm(self) -> None:
            if self.read_timer is not None:
                self.read_timer.cancel()
                self.read_timer = None

        def _read_timed_out(self, part: str) -> None:
            self.read_timer = None
            limit = config.header_timeout_s if part == "head" else config.body_timeout_s
            flag = "--header-timeout" if part == "head" else "--body-timeout"
            self._fail_read(
                408, f"The request's {part} did not arrive within {limit:g} s ({flag})."
            )

        def _fail_read(self, status: int, message: str) -> None:
            """Answer a request that could not be read whole, and close the connection."""
            self._disarm()
            if self.transport.is_closing():
                return
            if (
                self.cycle is not None
                and not self.cycle.response_complete
                and not isinstance(self.cycle, _Answering)
            ):
                self.cycle.keep_alive = False  # an ASGI request is answering: let it end
                self.transport.close()
                return
            body = (
                openai_error(status, message)
                if (getattr(self, "url", None) or b"").startswith(b"/v1/")
                else orjson.dumps({"error": message})
            )
            self.transport.write(
                b"".join(
                    [
                        STATUS_LINE[status],
                        b"content-type: application/json\r\n",
                        b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n",
                        body,
                    ]
                )
            )
            # Closing with unread bytes in the socket would send a reset, which can
            # destroy the answer before the client reads it: half-close, read and drop
            # what still comes, and close shortly.
            self.discarding = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers a request httptools cannot parse (a garbage request line, a
            # bad or duplicate Content-Length, Content-Length with chunked, a bad chunk
            # size) in plain text; every other 4xx of this server is JSON.
            cycle = self.cycle
            if cycle is not None and not isinstance(cycle, _Answering):
                if cycle.response_started:  # too late to answer: just end it
                    cycle.keep_alive = False
                    self.transport.close()
                    return
                cycle.disconnected = True  # the app's answer, if any, goes nowhere
                cycle.message_event.set()  # and its receive() hears of the disconnect
                self.cycle = None  # type: ignore[assignment]  # no request is answering now
            self._fail_read(
                400,
                f"{msg} The request is not valid HTTP/1.1 (its request line, headers or "
                "body framing): check the client.",
            )

        def shutdown(self) -> None:
            # uvicorn closes an idle connection at once, losing a request the client has
            # already sent; instead every answer from now on closes its connection, and
            # an idle one is closed only after a grace for what is on its way.
            self.draining = True
            if self.cycle is None or self.cycle.response_complete:
                self.loop.call_later(SHUTDOWN_GRACE_S, self._close_if_idle)
            else:
                self.cycle.keep_alive = False

        def _close_if_idle(self) -> None:
            if self.transport.is_closing():
                return
            if (self.cycle is None or self.cycle.response_complete) and self.head_bytes == 0:
                self.transport.close()
            # else: a request arrived meanwhile; its answer closes the connection

        def on_message_begin(self) -> None:
            # uvicorn builds the ASGI scope here; only the requests it serves need one.
            self.url = b""
            self.expect_100_continue = False
            self.headers = []

        def on_headers_complete(self) -> None:
            self.head_bytes = None
            self._arm(config.body_timeout_s, "body")
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
                if self.draining and self.cycle is not None:
                    self.cycle.keep_alive = False
                return
            self.answering = _Answering(
                keep_alive=self.parser.should_keep_alive() and not self.draining
            )
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
            # A full queue refuses from the head: no body parsed, the connection kept
            # (under overload the refusals must cost less than the requests served).
            self.infer_shed = shed_answer(state, target)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
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
            if self.infer_refused or self.infer_shed is not None:
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
            self._disarm()
            self.head_bytes = 0  # the next bytes begin the next request
            target = self.infer_target
            if self.infer_refused:
                self.infer_refused = False
                return
            if target is None:
                super().on_message_complete()
                return
            self.infer_target = None
            if self.infer_shed is not None:
                answer, self.infer_shed = self.infer_shed, None
                self._write(self.answering, *answer)
                return
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
