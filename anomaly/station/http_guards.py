"""HTTP guards of the service: which Host names it answers (DNS-rebinding guard), the upload size
limit, and the security headers of every answer.

:func:`allowed_hosts` feeds Starlette's ``TrustedHostMiddleware`` (a request naming any other host
gets 400); :class:`BodyLimitMiddleware` answers 413 to a body over the limit without buffering it;
:class:`SecurityHeadersMiddleware` adds ``X-Content-Type-Options: nosniff``, a deny-all
Content-Security-Policy with ``frame-ancestors 'none'`` (the page and the docs send their own) and
friends. All are installed by :func:`anomaly.station.service.create_app`.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


def allowed_hosts(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """Host names a service bound to ``bind_host`` answers to: loopback names, the bound host, ``extra``.

    A wildcard bind (``0.0.0.0``) cannot know the names clients use: they must come in ``extra``
    (``anomaly serve --allowed-hosts``), else only loopback requests are answered.
    """
    if bind_host in _WILDCARD_BINDS and not extra:
        logger.warning("listening on all interfaces, but only Host: %s is answered; name this machine's host "
                       "names with --allowed-hosts", " or ".join(LOOPBACK_HOSTS))
    named = [] if bind_host in _WILDCARD_BINDS else [f"[{bind_host}]" if ":" in bind_host else bind_host]  # IPv6
    return list(dict.fromkeys([*LOOPBACK_HOSTS, *named, *extra]))


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """ASGI middleware answering 413 when a request body exceeds ``max_bytes``.

    Checks ``Content-Length`` up front and counts streamed (chunked) bytes, so an oversize upload
    is never buffered; the app's own answer to a cut-off body is replaced by the 413. The rest
    of the body is read and discarded (up to ``4 * max_bytes``) before answering, so the client
    gets the 413 rather than a connection reset.
    """

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(receive, send, more_body=True)
            return
        seen, exceeded, started, more_body = 0, False, False, True

        async def counted_receive() -> dict:
            nonlocal seen, exceeded, more_body
            message = await receive()
            seen += len(message.get("body", b""))
            more_body = message.get("more_body", False)
            if seen > self.max_bytes:
                exceeded = True
                raise _BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if not exceeded:  # once over the limit, only the 413 below goes out
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if exceeded and not started:
            await self._reject(receive, send, more_body)

    async def _reject(self, receive: Callable, send: Callable, more_body: bool) -> None:
        drained = 0
        while more_body and drained <= 4 * self.max_bytes:
            message = await receive()
            drained += len(message.get("body", b""))
            more_body = message.get("more_body", False) and message["type"] == "http.request"
        limit = f"{self.max_bytes / 2**20:.2f} MiB" if self.max_bytes >= 2**16 else f"{self.max_bytes} bytes"
        body = ('{"detail":"request body too large: the limit is %s (anomaly serve --max-upload-mb)"}' % limit).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",  # a JSON answer is never sniffed into HTML or script
    "x-frame-options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",  # the pages set their own
}


class SecurityHeadersMiddleware:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every answer that does not set them itself."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
