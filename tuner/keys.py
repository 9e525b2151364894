"""API keys: who may call the service, as which owner, with which scopes.

A key reads ``tk_<id>_<secret>``: ``id`` is a short public handle (shown by
``tuner keys list``, used to find the row and to revoke), ``secret`` is 256 random
bits. Only a salted PBKDF2 hash of the whole key is stored, and it is compared in
constant time, so the database never holds anything a caller could send.

Scopes: ``read`` (GET the owner's jobs, trials, events, artifacts, uploads),
``submit`` (create, cancel, resume, change, enqueue and delete the owner's jobs;
upload and delete datasets) and ``admin`` (everything, for every owner, and the
dashboard). Keys are revoked, never deleted: once a key has existed the service
stays in authenticated mode, so revoking the last key locks it rather than opening it.

>>> store = KeyStore(make_engine("sqlite:///studies/tuner.db"))  # doctest: +SKIP
>>> new = store.create("alice", ["read", "submit"])              # doctest: +SKIP
>>> store.verify(new.secret).owner                               # doctest: +SKIP
'alice'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from sqlalchemy import Engine, String, exists, select
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from tuner.jobs.models import Base, utcnow

Scope = Literal["read", "submit", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
PREFIX = "tk_"
ID_CHARS = 12
"""Hex characters of the public key id."""
MAX_KEY_LENGTH = 128
"""Longer credentials are refused before any hashing."""
ITERATIONS = 2_000
"""PBKDF2 rounds. The secret has 256 random bits, so the hash's cost is not what
protects it; the salt and hash keep a leaked database from holding usable keys."""
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
"""Owner names double as directory names for uploads: no '/', no leading '.'."""
_KEY = re.compile(rf"^{PREFIX}([0-9a-f]{{{ID_CHARS}}})_[A-Za-z0-9_\-]{{20,100}}$")


class KeyRequestError(ValueError):
    """A key request that cannot be done, with a message that says what to change."""


class KeyNotFound(KeyRequestError):
    """No key with that id."""


class ApiKey(Base):
    """One API key: its public id, owner, scopes and the salted hash of the whole key."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    scopes: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


@dataclass(frozen=True)
class Principal:
    """Who is asking: an owner and the scopes of the key used (or of local mode)."""

    owner: str
    scopes: frozenset[Scope]
    key_id: str | None = None

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


LOCAL = Principal(owner="local", scopes=frozenset(SCOPES))
"""The anonymous caller while no key exists and the server listens on loopback only."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: everything but the secret."""

    id: str
    owner: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyInfo:
        return cls(row.id, row.owner, parse_scopes(row.scopes), row.created_at, row.revoked_at)


@dataclass(frozen=True)
class NewKey:
    """A key just created; ``secret`` is shown once and never stored."""

    info: KeyInfo
    secret: str


def parse_scopes(scopes: str | Iterable[str]) -> tuple[Scope, ...]:
    """``"read,submit"`` or a list -> the scopes in canonical order; unknown ones refused."""
    names = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes)]
    names = [s for s in names if s]
    unknown = [s for s in names if s not in SCOPES]
    if unknown or not names:
        raise KeyRequestError(
            f"unknown or missing scopes {', '.join(unknown) or '(none)'}; "
            f"give one or more of {', '.join(SCOPES)}, e.g. --scopes read,submit"
        )
    return tuple(s for s in SCOPES if s in names)


def check_owner(owner: str) -> str:
    if not OWNER_PATTERN.match(owner):
        raise KeyRequestError(
            f"owner {owner!r} must be 1-64 letters, digits, '_', '-', '.', starting with "
            "a letter or digit"
        )
    return owner


def _digest(key: str, salt: bytes) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), salt, ITERATIONS).hex()


_DUMMY_SALT = secrets.token_bytes(16)


class KeyStore:
    """Create, list, revoke and verify keys in the service's database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._seen_any = False

    def create(self, owner: str, scopes: str | Iterable[str]) -> NewKey:
        """A new key for ``owner``; the returned secret is the only copy."""
        owner, granted = check_owner(owner), parse_scopes(scopes)
        key_id = secrets.token_hex(ID_CHARS // 2)
        secret = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        salt = secrets.token_bytes(16)
        row = ApiKey(
            id=key_id, owner=owner, scopes=",".join(granted), salt=salt.hex(),
            digest=_digest(secret, salt), created_at=utcnow(), revoked_at=None,
        )
        with self._sessions.begin() as s:
            s.add(row)
        self._seen_any = True
        return NewKey(KeyInfo.of(row), secret)

    def list(self, owner: str | None = None) -> list[KeyInfo]:
        """Every key (revoked ones too), oldest first."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if owner is not None:
            query = query.where(ApiKey.owner == owner)
        with self._sessions.begin() as s:
            return [KeyInfo.of(row) for row in s.scalars(query)]

    def revoke(self, key_id: str) -> KeyInfo:
        """Stop a key from working, at once, for every process (idempotent)."""
        with self._sessions.begin() as s:
            row = s.get(ApiKey, key_id.removeprefix(PREFIX)[:ID_CHARS])
            if row is None:
                raise KeyNotFound(f"no key {key_id!r}; `tuner keys list` shows the key ids")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return KeyInfo.of(row)

    def any_exist(self) -> bool:
        """Whether a key was ever created (revoked ones count: keys are never deleted)."""
        if not self._seen_any:
            with self._sessions.begin() as s:
                self._seen_any = bool(s.scalar(select(exists().where(ApiKey.id.is_not(None)))))
        return self._seen_any

    def verify(self, key: str) -> Principal | None:
        """The key's principal, or None for anything but a live key of this service.

        An unknown id costs the same hash as a known one, so timing says nothing
        about which ids exist.
        """
        match = _KEY.match(key) if len(key) <= MAX_KEY_LENGTH else None
        row = None
        if match:
            with self._sessions.begin() as s:
                row = s.get(ApiKey, match.group(1))
        salt = bytes.fromhex(row.salt) if row else _DUMMY_SALT
        digest = _digest(key, salt)
        if row is None or not hmac.compare_digest(digest, row.digest):
            return None
        if row.revoked_at is not None:
            return None
        return Principal(row.owner, frozenset(parse_scopes(row.scopes)), row.id)
