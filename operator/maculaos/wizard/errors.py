"""The wizard's one error: a value of a step that is refused."""

from __future__ import annotations

from maculaos.errors import MaculaosError


class StepError(MaculaosError):
    """A setting refused; `field` names the form field or the config.yaml key, the message what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message if field in message else f"{field}: {message}")
        self.field = field
