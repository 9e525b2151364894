"""Webhooks: signed notices POSTed to a job's ``webhook_url`` when it ends.

A job that succeeds, fails or is cancelled writes its notice to the outbox in the
same transaction as its new state (``tuner.jobs.outbox``), so nothing on the job's way
waits for a receiver. :class:`Deliverer` (a thread of ``tuner serve``) sends due
notices, retrying failures with exponential backoff (``webhook_backoff_s``, doubling,
at most an hour apart) up to ``webhook_max_attempts`` times; each attempt's status or
error is recorded on the row. Delivery is at least once: receivers should use
``X-Tuner-Delivery`` to ignore a repeat.

Each request carries:

- ``X-Tuner-Event``: ``job.succeeded``, ``job.failed`` or ``job.cancelled``
- ``X-Tuner-Delivery``: the delivery id (the same on every retry)
- ``X-Tuner-Timestamp``: Unix seconds when this attempt was signed
- ``X-Tuner-Signature``: ``sha256=<hex>``, HMAC-SHA256 with ``TUNER_WEBHOOK_SECRET``
  over ``<timestamp>.<raw body>``; a receiver recomputes it (:func:`verify`) and
  refuses old timestamps, so a captured request cannot be replayed later.

The service POSTs to addresses its users choose, so it guards against being used to
reach internal services (SSRF): the host must resolve to public addresses only
(unless ``TUNER_WEBHOOK_ALLOW_PRIVATE``), checked at submit and again before every
attempt, and the request goes to the address that was checked (no second lookup),
with redirects not followed and proxies from the environment ignored.

>>> body = b'{"event": "job.succeeded"}'
>>> headers = signature_headers(b"0123456789abcdef", body, timestamp=1700000000)
>>> verify(b"0123456789abcdef", body, headers["X-Tuner-Timestamp"],
...        headers["X-Tuner-Signature"], now=1700000010)
True
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from datetime import timedelta
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import sessionmaker

from tuner.jobs.models import utcnow
from tuner.jobs.outbox import DeliveryState, WebhookDelivery
from tuner.jobs.store import InvalidRequest
from tuner.settings import Settings

log = logging.getLogger("tuner.webhooks")

MAX_BACKOFF_S = 3600.0
REPLAY_WINDOW_S = 300
"""How old a signed timestamp :func:`verify` accepts by default."""
BATCH = 20
"""Deliveries one pass of the deliverer takes on."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnsafeDestination(InvalidRequest):
    """The webhook URL points where this server may not send (422 at submit)."""


# --- where a webhook may go --------------------------------------------------------------


def check_webhook(url: str | None, settings: Settings) -> None:
    """Refuse, at submit, a webhook this server could not sign or may not send to."""
    if url is None:
        return
    if settings.webhook_secret is None:
        raise InvalidRequest(
            "webhook_url is set but this server has no TUNER_WEBHOOK_SECRET to sign "
            "notices with; ask its operator to set one (16+ characters), or remove "
            "webhook_url"
        )
    resolve(url, settings)


def resolve(url: str, settings: Settings) -> IPAddress:
    """The address to send to: the URL's host looked up once, every address allowed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeDestination(
            f"webhook_url host {host!r} does not resolve ({exc}); check the URL"
        ) from None
    addresses = [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]
    if not settings.webhook_allow_private:
        refused = sorted({str(a) for a in addresses if not _public(a)})
        if refused:
            raise UnsafeDestination(
                f"webhook_url host {host!r} resolves to {', '.join(refused)}, which is not "
                "a public address; this server only sends webhooks to public addresses "
                "(an operator can allow others with TUNER_WEBHOOK_ALLOW_PRIVATE=true)"
            )
    return addresses[0]


def _public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (cloud metadata),
    shared, reserved or multicast; an IPv6 address that carries an IPv4 one (mapped,
    6to4, NAT64, IPv4-compatible) is judged as the IPv4 address it reaches."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := _carried_ipv4(address)):
        address = inner
    return address.is_global and not address.is_multicast


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _carried_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that a gateway would deliver this IPv6 address to, if any."""
    if carried := address.ipv4_mapped or address.sixtofour:
        return carried
    if address in _IPV4_COMPATIBLE or any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


# --- signatures ---------------------------------------------------------------------------


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """``sha256=<hex>`` of HMAC-SHA256 over ``<timestamp>.<body>``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_headers(secret: bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The timestamp and signature headers for one attempt."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "X-Tuner-Timestamp": str(timestamp),
        "X-Tuner-Signature": sign(secret, body, timestamp),
    }


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float | None = None,
    tolerance_s: float = REPLAY_WINDOW_S,
) -> bool:
    """What a receiver runs: the signature matches and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, ts), signature)


# --- delivery -----------------------------------------------------------------------------


class Deliverer:
    """Sends due outbox rows; several (one per ``tuner serve``) may share a database.

    A pass claims each due row with a conditional UPDATE that pushes its next attempt
    past the request's timeout, so two deliverers never send the same attempt, and a
    deliverer that dies mid-send leaves a row that is simply retried.

    >>> deliverer = Deliverer(make_engine(url), settings)  # doctest: +SKIP
    >>> deliverer.start(); ...; deliverer.stop()           # doctest: +SKIP
    """

    def __init__(
        self, engine: Engine, settings: Settings, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.settings = settings
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._client = httpx.Client(
            timeout=settings.webhook_timeout_s, follow_redirects=False, trust_env=False,
            transport=transport,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_due(self) -> int:
        """Send every delivery that is due now (up to ``BATCH``); returns how many."""
        now = utcnow()
        with self._sessions.begin() as s:
            due = list(s.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state == DeliveryState.pending,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(BATCH)
            ))
        sent = 0
        for delivery_id in due:
            delivery = self._claim(delivery_id)
            if delivery is not None:
                self._attempt(delivery)
                sent += 1
        return sent

    def _claim(self, delivery_id: int) -> WebhookDelivery | None:
        now = utcnow()
        lease = timedelta(seconds=self.settings.webhook_timeout_s + 30)
        with self._sessions.begin() as s:
            won = s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.state == DeliveryState.pending,
                    WebhookDelivery.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + lease)
            )
            if won.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return s.get_one(WebhookDelivery, delivery_id, populate_existing=True)

    def _attempt(self, delivery: WebhookDelivery) -> None:
        """One POST; records its outcome and when to try again (or that it gave up)."""
        status: int | None = None
        final = False
        try:
            status = self._post(delivery)
            error = None if 200 <= status < 300 else f"HTTP {status} from the receiver"
        except UnsafeDestination as exc:
            error, final = str(exc), True  # the rule will not change between attempts
        except Exception as exc:  # refused, unreachable, TLS, timeout, no secret: recorded
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        attempts = delivery.attempts + 1
        now = utcnow()
        if error is None:
            state = DeliveryState.delivered
        elif final or attempts >= self.settings.webhook_max_attempts:
            state = DeliveryState.failed
        else:
            state = DeliveryState.pending
        delay = min(MAX_BACKOFF_S, self.settings.webhook_backoff_s * 2 ** (attempts - 1))
        with self._sessions.begin() as s:
            s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(
                    state=state, attempts=attempts, last_attempt_at=now, last_status=status,
                    last_error=error[:1000] if error else None,
                    next_attempt_at=now + timedelta(seconds=delay),
                    delivered_at=now if error is None else None,
                )
            )
        context = {"job_id": delivery.job_id, "delivery": delivery.id}
        if error is None:
            log.info("webhook %s delivered (%s)", delivery.event, status, extra=context)
        else:
            log.warning(
                "webhook %s attempt %d of %d failed%s: %s", delivery.event, attempts,
                self.settings.webhook_max_attempts,
                "; giving up" if state == DeliveryState.failed else "", error, extra=context,
            )

    def _post(self, delivery: WebhookDelivery) -> int:
        secret = self.settings.webhook_secret
        if secret is None:
            raise InvalidRequest("TUNER_WEBHOOK_SECRET is not set; notices cannot be signed")
        address = resolve(delivery.url, self.settings)
        parts = urlsplit(delivery.url)
        host = f"[{address}]" if address.version == 6 else str(address)
        pinned = parts._replace(netloc=host + (f":{parts.port}" if parts.port else ""))
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Host": parts.netloc,
            "Content-Type": "application/json",
            "User-Agent": f"tuner-webhooks/{version('tuner')}",
            "X-Tuner-Event": delivery.event,
            "X-Tuner-Delivery": str(delivery.id),
            **signature_headers(secret.get_secret_value().encode(), body),
        }
        extensions: dict[str, Any] = (
            {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
        )
        response = self._client.post(
            pinned.geturl(), content=body, headers=headers, extensions=extensions
        )
        return response.status_code

    # --- background thread --------------------------------------------------------------

    def start(self) -> None:
        """Deliver in a daemon thread every ``webhook_poll_interval_s`` until ``stop``."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:  # a database hiccup must not end deliveries for good
                log.exception("webhook delivery pass failed; retrying")
            self._stop.wait(self.settings.webhook_poll_interval_s)

    def stop(self) -> None:
        """Finish the attempt in flight (bounded by the timeout), then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.webhook_timeout_s + 5)
        self._client.close()

