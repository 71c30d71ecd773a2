"""htpasswd lines as `htpasswd -nB` makes them, from the bcrypt library (test extras, pinned)."""

from __future__ import annotations

import bcrypt


def htpasswd_line(user: str, password: str) -> str:
    """user:$2b$... at bcrypt's lowest cost (4): the tests check who gets in, not how slow guessing is."""
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
