"""aiohttp's own refusals (a request its HTTP parser cannot read) as problem answers.

Those refusals never reach the application's middlewares (aiohttp issue 3287: the parser
fails before there is a request to route), and aiohttp's answer is text that echoes the
offending bytes back: a header too long is sent back whole, an Authorization header with it.
aiohttp offers no supported hook for them, so the gateway's runner makes its connections
with `RequestHandler.handle_error` overridden: the same status, a JSON problem that names
the kind of fault but repeats nothing of the request, and a log line without the bytes."""

from __future__ import annotations

import json

from aiohttp import http_exceptions as parser, web
from aiohttp.web_protocol import RequestHandler

from shared.logging import get_logger

log = get_logger(__name__)

# What each parser refusal means, in the caller's words (the most specific class first).
REFUSALS: list[tuple[type[Exception], str]] = [
    (parser.LineTooLong, "the request line or a header is longer than the gateway accepts"),
    (parser.InvalidHeader, "a header is not valid HTTP"),
    (parser.BadHttpMethod, "the request method is not valid HTTP"),
    (parser.InvalidURLError, "the request URL is not valid"),
    (parser.TransferEncodingError, "the body does not match its Transfer-Encoding"),
    (parser.ContentEncodingError, "the body cannot be decoded as its Content-Encoding says"),
    (parser.ContentLengthError, "the body does not match its Content-Length"),
]


def refusal(status: int, exc: BaseException | None) -> str:
    if status >= 500:
        return "internal error; see the gateway log"
    for kind, meaning in REFUSALS:
        if isinstance(exc, kind):
            return meaning
    return "the request is not valid HTTP (its request line, headers or body framing)"


class ProblemRequestHandler(RequestHandler):
    def handle_error(self, request, status=500, exc=None, message=None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer has begun, none can follow
            raise ConnectionError("an answer was already started; cannot send an error")
        if status >= 500:
            log.error("request failed outside the application", status=status,
                      exc_info=exc)
        else:
            # The type only: the exception's text quotes the request (a token, say).
            log.warning("request refused by the HTTP parser", status=status,
                        remote=request.remote, error=type(exc).__name__ if exc else None)
        answer = web.Response(status=status, content_type="application/json",
                              text=json.dumps({"error": refusal(status, exc), "problems": []}))
        answer.force_close()  # the stream cannot be trusted past a bad request
        return answer


class ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """web.AppRunner whose connections answer parser refusals as problems."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server itself (Application._make_handler); the class is the one
        # thing changed, so that its protocol factory makes ProblemRequestHandler.
        server.__class__ = ProblemServer
        return server
