"""API keys over HTTP, for admins: list, create (the key is shown once), revoke."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, status

from api.deps import Admin, KeysDep
from api.schemas import INVALID, ErrorOut, KeyCreate, KeyCreated, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys"], dependencies=[Admin])


@router.get("", response_model=list[KeyOut], summary="Every API key, without secrets")
def list_keys(keys: KeysDep) -> list[KeyOut]:
    return [KeyOut.model_validate(asdict(k)) for k in keys.list()]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=INVALID,
    summary="Create an API key (the key is in this answer only)",
)
def create_key(body: KeyCreate, keys: KeysDep) -> KeyCreated:
    new = keys.create(body.owner, body.scopes)
    return KeyCreated.model_validate({**asdict(new.info), "key": new.secret})


@router.delete(
    "/{key_id}",
    response_model=KeyOut,
    responses={404: {"model": ErrorOut, "description": "No such key."}},
    summary="Revoke an API key: refused from the next request on",
)
def revoke_key(
    keys: KeysDep,
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="The key's id.")],
) -> KeyOut:
    return KeyOut.model_validate(asdict(keys.revoke(key_id)))
