"""One pure-ASGI gate in front of the app: request ids, body size limit, bearer auth, drain, counting.

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses pass through untouched and a
client's disconnect reaches the handler.
"""
from __future__ import annotations

import hmac
import json
import uuid

from tutx.serve.protocol import error_body

OPEN_PATHS = ("/health", "/metrics", "/docs", "/openapi.json", "/redoc")


class Gate:
    """``X-Request-Id`` echoed (or made up), ``413`` over ``max_body_bytes``, ``401`` without the key,
    ``503`` while draining, every response counted in ``metrics`` by endpoint and status."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def _reply(self, send, status: int, body: dict, headers: list) -> None:
        raw = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": headers + [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st = self.state
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        if scope["method"] == "POST" and b"json" not in headers.get(b"content-type", b""):
            # curl -d sends a form content type; the body is JSON all the same (as clients mean it)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + \
                [(b"content-type", b"application/json")]
        path = scope["path"]
        endpoint = path if path in st.known_paths else "other"
        status = [500]
        id_header = [(b"x-request-id", rid.encode("latin-1"))]

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": list(message.get("headers", [])) + id_header}
            await send(message)

        try:
            if st.draining and path != "/metrics":
                retry = [(b"retry-after", str(st.config.retry_after).encode())]
                status[0] = 503
                return await self._reply(send, 503, error_body("the server is shutting down", "unavailable",
                                                               code="draining"), id_header + retry)
            if st.config.api_key and not path.startswith(OPEN_PATHS):
                given = headers.get(b"authorization", b"")
                expected = b"Bearer " + st.config.api_key.encode()
                if not hmac.compare_digest(given, expected):
                    status[0] = 401
                    return await self._reply(send, 401, error_body("missing or wrong API key (Authorization: "
                                                                   "Bearer ...)", "authentication_error",
                                                                   code="invalid_api_key"), id_header)
            limit = st.config.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                status[0] = 413
                return await self._reply(send, 413, error_body(f"request body: {int(length)} bytes, the limit "
                                                               f"is {limit}", "invalid_request_error",
                                                               code="body_too_large"), id_header)
            seen = [0]

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    seen[0] += len(message.get("body", b""))
                    if seen[0] > limit:
                        raise BodyTooLarge(limit)
                return message

            try:
                await self.app(scope, limited_receive, send_with_id)
            except BodyTooLarge:
                status[0] = 413
                await self._reply(send, 413, error_body(f"request body: over the limit of {limit} bytes",
                                                        "invalid_request_error", code="body_too_large"), id_header)
        finally:
            st.metrics.count_request(endpoint, status[0])


class BodyTooLarge(Exception):
    pass


__all__ = ["Gate", "OPEN_PATHS"]
