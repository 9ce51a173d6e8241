"""Bodies of the client and token routes. A token's secret appears once, in ``TokenCreated``."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.models import Role


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class ClientCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="Unique, e.g. 'shop-backend' or 'privacy-ops'")

    _name_not_blank = field_validator("name")(_not_blank)


class ClientRead(BaseModel):
    id: int
    name: str
    created_at: datetime
    active_tokens: int


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(min_length=1, max_length=100, description="A label for the token")
    client_id: int = Field(ge=1, le=2**31 - 1, description="The client the token acts for")

    _name_not_blank = field_validator("name")(_not_blank)


class TokenRead(BaseModel):
    id: int
    name: str
    role: Role
    client_id: int
    client: str
    prefix: str = Field(description="The first characters of the secret, to recognise it")
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret; shown once, only its hash is stored")
