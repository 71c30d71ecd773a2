"""The root of the project's own errors, in the lowest layer so that every layer may raise them.

A MaculaosError carries a message meant for a person (what went wrong, and where useful what to do); the
command line turns any of them into that message on stderr and an exit code, without a traceback
(`maculaos.cli.main`). Errors of Python or of libraries (OSError, pydantic's ValidationError) are not
wrapped: a command says which of those it reports the same way."""

from __future__ import annotations


class MaculaosError(Exception):
    """An error the project raises on purpose; exit_code is what `maculaos` exits with (default 1)."""

    exit_code: int = 1

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code
