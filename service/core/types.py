"""Reusable validated types of the API: integers bounded to what the database holds, page
limits with a documented maximum, subject ids (DESIGN §10), consent dates.

Every bound here is a 422 at the door instead of an overflow (a 500) in the database.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

INT32_MAX = 2**31 - 1  # INTEGER columns (PostgreSQL int4)
INT64_MAX = 2**63 - 1  # BIGINT columns and SQLite integers

# Non-negative integers that fit the column they are stored in.
Int32 = Annotated[int, Field(ge=0, le=INT32_MAX)]
PositiveInt32 = Annotated[int, Field(ge=1, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=0, le=INT64_MAX)]

# Lists: the documented largest page. The server may answer with fewer (``api.page_size_max``).
LIMIT_MAX = 500
LIMIT_DESCRIPTION = f"Page size, 1 to {LIMIT_MAX} (default 50; more pages through the cursor)"

SUBJECT_ID_MAX = 256
SUBJECT_ID_RULES = (
    "subject ids are NFC-normalised, 1-256 characters, with no control, format (e.g. zero-width), "
    "surrogate or separator characters other than the plain space, and no leading or trailing whitespace"
)
SUBJECT_ID_DESCRIPTION = "The product's id of the person; " + SUBJECT_ID_RULES

# Clock skew tolerated between a client's clock and the server's for "not in the future".
CONSENT_SKEW = timedelta(seconds=60)

_REFUSED_CATEGORIES = {
    "Cc": "control",
    "Cf": "format (invisible, e.g. zero-width)",
    "Cs": "surrogate",
    "Zl": "line separator",
    "Zp": "paragraph separator",
    "Zs": "separator (a space other than U+0020)",
}


def _nfc(value: Any) -> Any:
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def subject_id_problem(value: str) -> str | None:
    """Why ``value`` (already NFC-normalised) is not a valid subject id, or None."""
    if not value:
        return "subject_id must not be empty"
    if not value.strip():
        return "subject_id must not be blank"
    if len(value) > SUBJECT_ID_MAX:
        return f"subject_id must be at most {SUBJECT_ID_MAX} characters"
    if value != value.strip() or value[0].isspace() or value[-1].isspace():
        return "subject_id must not have leading or trailing whitespace"
    for i, ch in enumerate(value):
        cat = unicodedata.category(ch)
        if cat in _REFUSED_CATEGORIES and ch != " ":
            return f"subject_id must not contain {_REFUSED_CATEGORIES[cat]} characters (U+{ord(ch):04X} at position {i})"
    return None


def normalize_subject_id(value: str) -> str:
    """NFC-normalise and validate; ``ValueError`` naming the rule when it is refused."""
    value = unicodedata.normalize("NFC", value)
    problem = subject_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_subject_id(value: str) -> str:
    problem = subject_id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# For bodies, queries and paths alike: ``subject_id: SubjectId``.
SubjectId = Annotated[
    str,
    BeforeValidator(_nfc),
    Field(min_length=1, max_length=SUBJECT_ID_MAX, description=SUBJECT_ID_DESCRIPTION),
    AfterValidator(_check_subject_id),
]


def not_in_future(value: datetime | None) -> datetime | None:
    """A consent renewal happened; one dated in the future is refused. Naive times are UTC."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if aware > datetime.now(UTC) + CONSENT_SKEW:
        raise ValueError("consent_renewed_at must not be in the future")
    return aware


PastDateTime = Annotated[datetime, AfterValidator(not_in_future)]
