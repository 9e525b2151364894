"""Who may reach what: authentication, the dashboard rule and the rate limit.

One pure ASGI middleware (:class:`Guard`) sits in front of everything, the mounted
optuna-dashboard included, since that has write endpoints and no auth of its own:

- ``/healthz``, ``/readyz``, ``/docs`` and ``/openapi.json`` are open.
- While no API key has ever been created and the server listens on loopback (or runs
  ``--insecure``), every caller is the owner ``local`` with every scope: the Quickstart
  needs no key. Once a key exists, every other request needs one. Keyless requests
  must name a loopback Host, so a page whose DNS rebinds to this machine is refused.
- A key goes as ``Authorization: Bearer <key>``, ``X-API-Key: <key>`` or, for a browser
  on the dashboard, HTTP Basic with the key as password (any user name).
- ``/v1/...`` routes and ``/metrics`` check scopes themselves (``api.deps``); every
  other path is the dashboard, which shows every owner's studies and can change them,
  so it needs an admin key.
- A write request (not GET/HEAD/OPTIONS) whose ``Origin`` is another site is refused:
  browsers resend Basic credentials on their own, so another page could otherwise
  post to the dashboard in an admin's name.
- Each key (or client address, without one) has a token bucket of
  ``rate_limit_per_minute`` requests; an empty bucket answers 429 with Retry-After.
  Buckets live in the process: with several server processes each has its own.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.cache import ReadCache
from tuner.keys import LOCAL, KeyStore, Principal
from tuner.settings import Settings

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
KEYED_PATHS = frozenset({"/v1", "/metrics"})
"""Outside ``/v1/`` but not the dashboard: keys and scopes as on the API (Prometheus
scrapes ``/metrics`` with a read key as a Bearer token)."""
BASIC_REALM = 'Basic realm="tuner", charset="UTF-8"'
BEARER_REALM = 'Bearer realm="tuner"'


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``; anything else can be reached from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def credentials(headers: Headers) -> list[str]:
    """The keys a request carries: Authorization (Bearer, or Basic's password), then
    X-API-Key. The first one that is a live key counts."""
    found = []
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    elif scheme.lower() == "basic":
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if password:
            found.append(password)
    if key := headers.get("x-api-key", "").strip():
        found.append(key)
    return found


class RateLimiter:
    """Token buckets per caller: ``per_minute`` requests a minute, bursts up to that many.

    Per process, in memory; the least recently seen callers are forgotten past
    ``max_callers``, which only ever gives them a full bucket again.
    """

    def __init__(self, per_minute: int, max_callers: int = 10_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, caller: str) -> float:
        """Spend one token: 0 when allowed, else the seconds until one is there."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[caller] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        return wait


class Guard:
    """Authenticate every request, enforce the dashboard rule and the rate limit.

    The principal goes to ``scope["state"]["principal"]`` for the routes' dependencies.
    """

    def __init__(self, app: ASGIApp, keys: KeyStore, settings: Settings) -> None:
        self.app = app
        self.keys = keys
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit_per_minute)
        # Identical checks in flight share one (a database read and a key hash each);
        # nothing is kept, so a revoked key fails from the next request on.
        self.checks = ReadCache(ttl_s=0, max_age_s=0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        api = scope["path"] in KEYED_PATHS or scope["path"].startswith("/v1/")
        local, sent = self._local_mode(scope), tuple(credentials(Headers(scope=scope))[:2])
        principal = await self.checks.get((local, sent), lambda: self._authenticate(local, sent))
        client = scope.get("client")
        key_id = principal.key_id if principal else None
        caller = f"key:{key_id}" if key_id else f"addr:{client[0] if client else '?'}"
        wait = self.limiter.take(caller)
        if wait > 0:
            await refuse(
                send, 429,
                f"rate limit of {self.settings.rate_limit_per_minute} requests a minute "
                f"reached (TUNER_RATE_LIMIT_PER_MINUTE); retry in {math.ceil(wait)} s",
                {"retry-after": str(math.ceil(wait))},
            )
            return
        if principal is None:
            sent = bool(credentials(Headers(scope=scope)))
            what = "this API key is not valid (revoked or mistyped)" if sent else "an API key"
            advice = (
                "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                if api
                else "log in with any user name and the key as password"
            )
            detail = f"{what}; {advice}" if sent else f"this server needs {what}: {advice}"
            await refuse(
                send, 401, detail, {"www-authenticate": BEARER_REALM if api else BASIC_REALM}
            )
            return
        if principal is LOCAL and not self.settings.insecure and _rebound(scope):
            await refuse(
                send, 403,
                "without API keys this server answers only to the Host 127.0.0.1, localhost "
                "or [::1] (another name may be a page rebinding its DNS to this machine); "
                "use http://127.0.0.1, or create a key with `tuner keys create`",
            )
            return
        if _cross_site(scope):
            await refuse(
                send, 403,
                "cross-site request refused: this origin may not change anything here; "
                "call the API from a script or from the server's own pages",
            )
            return
        if not api and not principal.is_admin:
            await refuse(
                send, 403,
                "the dashboard shows and changes every owner's studies, so it needs a key "
                "with the admin scope; use the /v1 API with this key",
            )
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _authenticate(self, local: bool, sent: tuple[str, ...]) -> Principal | None:
        """The caller, or None when a key is needed and none valid was sent."""
        if local and not self.keys.any_exist():
            return LOCAL
        for key in sent:
            if principal := self.keys.verify(key):
                return principal
        return None

    def _local_mode(self, scope: Scope) -> bool:
        """Keyless access only where nobody else can connect (or when told --insecure)."""
        if self.settings.insecure:
            return True
        server = scope.get("server")
        bound = server[0] if server else self.settings.host
        try:
            ipaddress.ip_address(bound.strip("[]"))
        except ValueError:
            bound = self.settings.host  # a name (an in-process test client): go by settings
        return is_loopback(self.settings.host) and is_loopback(bound)


def _rebound(scope: Scope) -> bool:
    """A request over a socket whose Host is not a loopback name: DNS rebinding, a page
    of another site whose name now points here, which its browser then treats as that
    site's own (keyless, it could take every scope). In-process clients have no socket."""
    server = scope.get("server")
    if not server:
        return False
    try:
        ipaddress.ip_address(str(server[0]).strip("[]"))
    except ValueError:
        return False  # an in-process test client: no network at all
    host = Headers(scope=scope).get("host")
    if host is None:
        return False  # no browser leaves it out
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return True
    return name is None or not is_loopback(name)


class SecurityHeaders:
    """Headers every answer carries: no MIME sniffing (an uploaded csv is never run as a
    script), and no framing (another page could frame a logged-in dashboard and trick
    clicks on it; optuna-dashboard's CSP leaves frame-ancestors out)."""

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _cross_site(scope: Scope) -> bool:
    """A browser's write request from another site's page (CSRF): the browser would
    add the Basic credentials by itself. Browsers send Origin on such requests;
    scripts and the CLI send none."""
    if scope["method"] in SAFE_METHODS:
        return False
    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin.partition("://")[2].rstrip("/") != headers.get("host", "")


async def refuse(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
