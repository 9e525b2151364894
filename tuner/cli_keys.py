"""``tuner keys create|list|revoke``: API keys for the server, from a terminal on its host.

Keys live in the service's database (``--storage`` or TUNER_DATABASE_URL), so run these
where that database is reachable; a running server sees a new or revoked key at once.

    tuner keys create --owner alice --scopes read,submit
    tuner keys list
    tuner keys revoke 3f9c2a7b01de
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tuner.keys import SCOPES, KeyRequestError, KeyStore
from tuner.settings import get_settings

keys_app = typer.Typer(
    help="API keys: create (shown once), list, revoke.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)

StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Database URL (default: TUNER_DATABASE_URL)."),
]


@contextmanager
def _store(url: str | None) -> Iterator[KeyStore]:
    """The key store on a migrated database; a bad request is one red line, exit 2.

    The database layer is imported here: Alembic and Optuna take 0.4 s, more than the
    whole CLI, which ``tuner --help`` and the HTTP commands should not wait for."""
    from tuner.errors import UsageError
    from tuner.jobs.db import make_engine, migrate

    url = url or get_settings().database_url
    engine = None
    try:
        migrate(url)
        engine = make_engine(url)
        yield KeyStore(engine)
    except (KeyRequestError, UsageError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        if engine is not None:
            engine.dispose()


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


@keys_app.command()
def create(
    owner: Annotated[str, typer.Option("--owner", help="Who the key acts for (job owner).")],
    scopes: Annotated[
        str, typer.Option("--scopes", help=f"Comma-separated: {', '.join(SCOPES)}.")
    ] = "read,submit",
    storage: StorageOpt = None,
) -> None:
    """Create a key and print it once: only its salted hash is stored."""
    from tuner.storage import shown

    url = storage or get_settings().database_url
    with _store(url) as store:
        new = store.create(owner, scopes)
    err_console.print(
        f"key {new.info.id} for owner {new.info.owner!r} with scopes "
        f"{','.join(new.info.scopes)} in {shown(url)}; store it now, it is not shown again:",
        highlight=False,
    )
    print(new.secret)


@keys_app.command("list")
def list_keys(
    owner: Annotated[str | None, typer.Option("--owner", help="Only this owner's keys.")] = None,
    storage: StorageOpt = None,
) -> None:
    """Keys without their secrets: id, owner, scopes, created, revoked."""
    with _store(storage) as store:
        keys = store.list(owner)
    if not keys:
        console.print("no keys: a server on loopback runs without auth (owner 'local')")
        return
    table = Table("id", "owner", "scopes", "created", "revoked")
    for key in keys:
        table.add_row(
            key.id, key.owner, ",".join(key.scopes), _when(key.created_at), _when(key.revoked_at)
        )
    console.print(table)


@keys_app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `tuner keys list` shows.")],
    storage: StorageOpt = None,
) -> None:
    """Revoke a key: every server refuses it from the next request on."""
    with _store(storage) as store:
        info = store.revoke(key_id)
    console.print(f"key {info.id} of {info.owner!r} revoked", highlight=False)
