"""What the gateway checks before any JSON parser or model sees a request: body size, nesting depth,
content encoding, and each client's request rate. A plain ASGI middleware, so a refusal costs no
parsing and nothing reaches Triton."""

from __future__ import annotations

import json
import threading
import time

from shopsearch.gateway.schema import GatewayLimits

OPEN, CLOSE = frozenset(b"[{"), frozenset(b"]}")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when `body` nests arrays/objects deeper than `limit` (brackets inside strings do not
    count). Python's json module recurses once per level, and a 100,000-deep body is what took
    tritonserver's own JSON parser down."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in OPEN:
            depth += 1
            if depth > limit:
                return True
        elif byte in CLOSE:
            depth -= 1
    return False


class RateLimiter:
    """A token bucket per client address: `rate_per_s` sustained, `burst` at once."""

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate_per_s, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> float:
        """0 when the request may go; else the seconds until it could (Retry-After)."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate


def error_body(field: str, message: str) -> bytes:
    return json.dumps({"error": {"field": field, "message": message}}).encode()


class RequestGuard:
    """ASGI middleware: refuse before parsing (413 body too large, 400 too deeply nested, 415 an
    encoding we do not decode, 429 over the client's rate); replay the checked body to the app."""

    def __init__(self, app, limits: GatewayLimits, limiter: RateLimiter):
        self.app, self.limits, self.limiter = app, limits, limiter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.limiter.allow(client)
        if wait:
            return await _refuse(send, 429, "client", f"more than {self.limiter.rate:g} requests/s from {client}",
                                 {"retry-after": str(max(1, round(wait)))})
        if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            return await _refuse(send, 415, "content-encoding", "send the body unencoded (identity)")
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return await _refuse(send, 400, "content-length", "not a byte count")
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            return await _refuse(send, 413, "body", f"larger than {self.limits.max_body_bytes} bytes")
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limits.max_body_bytes:
                return await _refuse(send, 413, "body", f"larger than {self.limits.max_body_bytes} bytes")
        if json_depth_exceeds(body, self.limits.max_json_depth):
            return await _refuse(send, 400, "body", f"JSON nested deeper than {self.limits.max_json_depth} levels")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)


async def _refuse(send, status: int, field: str, message: str, extra: dict[str, str] | None = None) -> None:
    body = error_body(field, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
