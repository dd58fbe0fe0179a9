"""What a user id may be, whether the Gateway sends it in X-User or signs it into a token."""

from __future__ import annotations

import re

from orders_service.db.models import USER_ID_MAX_LENGTH

# C0 and C1 control characters, DEL, and the comma a proxy puts between folded headers.
NOT_IN_A_USER = re.compile(r"[\x00-\x1f\x7f-\x9f,]")


def user_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a user id (a token's claim), or None when it can: a string of 1 to 255 characters
    without a control character, a comma, or blanks around it (X-User cannot carry those either)."""
    if not isinstance(value, str):
        return "is not a string"
    if not value:
        return "is empty"
    if len(value) > USER_ID_MAX_LENGTH:
        return f"is longer than {USER_ID_MAX_LENGTH} characters"
    if NOT_IN_A_USER.search(value):
        return "holds a control character or a comma"
    if value != value.strip():
        return "has blanks around it"
    return None
