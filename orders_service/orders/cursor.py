"""Opaque keyset cursors for ``GET /orders/me``: the (created_at, id) of the last order of a page."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated

import msgspec
from litestar.exceptions import ValidationException

MAX_CURSOR_LENGTH = 200
_INVALID = 'invalid cursor: pass the cursor of a Link: rel="next" header unchanged'
_OrderId = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


def encode_cursor(created_at: datetime, order_id: int) -> str:
    raw = msgspec.json.encode((created_at, order_id))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The position a cursor points after; a 400 for anything this service did not hand out, letter for letter.

    Python's base64 decoding skips characters outside the alphabet (a ``%00``, a ``+``) and accepts
    padding or not: one position would have many spellings. Only the one ``encode_cursor`` writes
    is accepted.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, order_id = msgspec.json.decode(raw, type=tuple[datetime, _OrderId])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise ValidationException(_INVALID) from None
    if created_at.tzinfo is None or encode_cursor(created_at, order_id) != cursor:
        raise ValidationException(_INVALID)
    return created_at, order_id
