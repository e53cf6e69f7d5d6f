"""Typed config sections: pydantic dataclasses whose fields carry their type, bounds and description, and whose
validation errors become the project's one-line messages that name the key (``mta.data.sampling.temperature: must
be a number > 0, got 0``). A field says what it expects with ``must`` (and ``item_must`` for the values of a
mapping) in ``json_schema_extra``; cross-field checks raise ``ValueError`` with the message after the key."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError

from .config import ConfigError, reject_unknown_keys

# strict: no coercion ("2" is not 2, true is not 1); unknown keys are refused by check_section with a suggestion
SECTION = ConfigDict(strict=True, extra="forbid")
T = TypeVar("T")


def expects(must: str, item_must: str | None = None, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field: what a value must be (and, for a mapping, what each of its values must be)."""
    return {"must": must, **({"item_must": item_must} if item_must else {}), **extra}


def build_section(cls: type[T], raw: Any, key: str) -> T:
    """``cls`` (a pydantic dataclass) from the raw mapping at ``key``; a ConfigError names the first bad key."""
    reject_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], key)
    try:
        return cls(**raw)
    except ValidationError as exc:
        raise ConfigError(one_line(cls, exc, key)) from None


def check_section(section: Any, key: str) -> None:
    """Validate an already built section again (after its fields were set by hand)."""
    build_section(type(section), dataclasses.asdict(section), key)


def one_line(cls: type, exc: ValidationError, key: str) -> str:
    """The first error as ``key.field[.item]: must be ..., got VALUE``."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    where = ".".join([key, *loc])
    if error["type"] == "value_error":  # a cross-field check: its own message
        return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"
    info = cls.__pydantic_fields__.get(loc[0]) if loc else None
    extra = (info.json_schema_extra or {}) if info is not None else {}
    must = extra.get("item_must") if len(loc) > 1 and "item_must" in extra else extra.get("must")
    if must is None:
        return f"{where}: {error['msg']}, got {error.get('input')!r}"
    return f"{where}: must be {must}, got {error.get('input')!r}"
