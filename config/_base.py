"""What every settings section shares: strictness and value types."""

from __future__ import annotations

from typing import Annotated

import msgspec

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
ImportPath = Annotated[str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$")]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config sections reject unknown keys, so a typo fails at start."""


Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")]
