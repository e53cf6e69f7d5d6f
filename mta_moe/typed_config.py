"""Typed config sections: pydantic dataclasses (and TypedDicts for the values that stay plain objects) whose fields
carry their type, bounds and description, and whose validation errors become the project's one-line messages that
name the key (``mta.data.sampling.temperature: must be a number > 0, got 0``).

A field says what it expects with ``json_schema_extra=expects(must, item_must)``; a cross-field check in
``__post_init__`` raises :class:`ConfigError` with its whole message (key included), which is passed on as it is.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Callable, Mapping, Sequence, TypeVar

import typing_extensions
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo

# strict: no coercion ("2" is not 2, true is not 1); unknown keys are refused by name, with a suggestion
SECTION = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key and what is allowed."""


def expects(must: str, item_must: str | None = None, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field: what a value must be (and, for a list or mapping, what each item must be)."""
    return {"must": must, **({"item_must": item_must} if item_must else {}), **extra}


def setting(
    default: Any,
    description: str,
    *,
    must: str | None = None,
    item_must: str | None = None,
    key_name: str | None = None,
    **bounds: Any,
) -> Any:
    """A field of a typed section: its default (a list, dict or section default is copied per instance),
    description and bounds (``ge``, ``gt``, ``le``, ``lt``, ``min_length``); ``must`` / ``item_must`` say in words
    what a value (an item) must be where the type and bounds do not say it well; ``key_name``: what the keys of a
    mapping are ("split": an unknown key reads "unknown split")."""
    extra = expects(must, item_must, **({"key_name": key_name} if key_name else {})) if must else None
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return Field(
            default_factory=lambda: copy.deepcopy(default), description=description, json_schema_extra=extra, **bounds
        )
    return Field(default, description=description, json_schema_extra=extra, **bounds)


def expected(info: FieldInfo, items: bool = False) -> str | None:
    """In words, what a field's value (``items``: each of its items) must be: its ``must`` / ``item_must``, or
    derived from its type and bounds ("an integer >= 1", "a number in [0, 1]", "one of ['a', 'b']")."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if items:
        return extra.get("item_must")
    if "must" in extra:
        return extra["must"]
    return _expected_type(info.annotation, info.metadata)


def _expected_type(tp: Any, metadata: list[Any]) -> str | None:
    members = [a for a in typing.get_args(tp)] if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    nullable = type(None) in members
    members = [a for a in members if a is not type(None)]
    if len(members) != 1:
        return None
    tp = members[0]
    bounds = {
        type(m).__name__: getattr(m, type(m).__name__.lower())
        for m in metadata
        if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")
    }
    if typing.get_origin(tp) is typing.Literal:
        text = f"one of {list(typing.get_args(tp))}"
    elif tp in (int, float):
        text = "an integer" if tp is int else "a number"
        low = next(((name, bounds[name]) for name in ("Ge", "Gt") if name in bounds), None)
        high = next(((name, bounds[name]) for name in ("Le", "Lt") if name in bounds), None)
        if low and high:
            text += f" in {'[' if low[0] == 'Ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'Le' else ')'}"
        else:
            text += "".join(
                f" {op} {bounds[name]}"
                for name, op in (("Ge", ">="), ("Gt", ">"), ("Le", "<="), ("Lt", "<"))
                if name in bounds
            )
    elif tp is bool:
        text = "true or false"
    elif typing.get_origin(tp) in (list, tuple):
        least = max((getattr(m, "min_length", 0) or 0 for m in metadata), default=0)
        text = "a list" if not least else "a non-empty list" if least == 1 else f"a list of at least {least} items"
    elif typing.get_origin(tp) in (dict, Mapping):
        text = "an object"
    elif named_fields(tp) is not None:
        text = f"an object with keys {sorted(named_fields(tp) or {})}"
    elif tp is str:
        text = "a non-empty string" if any(getattr(m, "min_length", 0) for m in metadata) else "a string"
    else:
        return None
    return text + (" or null" if nullable else "")


def typed_section(key: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``cls`` becomes a strict pydantic dataclass of the config section at ``key`` whose
    construction raises :class:`ConfigError` naming the first bad key (unknown keys with a "did you mean")."""

    def wrap(cls: type[T]) -> type[T]:
        typed = pydantic_dataclass(cls, config=SECTION)
        init = typed.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            reject_unknown_keys(kwargs, [f.name for f in dataclasses.fields(typed)], key)
            try:
                init(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(one_line(typed, exc, key)) from None

        typed.__init__ = __init__  # type: ignore[method-assign]
        typed.section_key = key  # type: ignore[attr-defined]
        return typed

    return wrap


def build_section(cls: type[T], raw: Any, key: str | None = None) -> T:
    """``cls`` (a typed section) from the raw mapping of a config file; a ConfigError names the first bad key."""
    key = key or cls.section_key  # type: ignore[attr-defined]
    reject_unknown_keys(raw, [f.name for f in dataclasses.fields(cls)], key)  # type: ignore[arg-type]
    try:
        return cls(**raw)
    except ConfigError as exc:
        own = cls.section_key  # type: ignore[attr-defined]
        if key != own and str(exc).startswith(own):  # the section read under another key (a nested copy)
            raise ConfigError(key + str(exc)[len(own) :]) from None
        raise


def check_value(tp: Any, raw: Any, key: str, must: str) -> Any:
    """``raw`` checked (strictly) against the annotation ``tp``, e.g. ``list[Phase]``; a ConfigError names the
    first bad key under ``key``, or says the whole value must be ``must``."""
    try:
        return TypeAdapter(tp, config=SECTION).validate_python(raw)
    except ValidationError as exc:
        if not exc.errors()[0]["loc"]:
            raise ConfigError(f"{key}: must be {must}, got {raw!r}") from None
        raise ConfigError(one_line(tp, exc, key)) from None


def check_section(section: Any) -> None:
    """Validate an already built section again (after some of its fields were set by hand)."""
    build_section(type(section), {f.name: getattr(section, f.name) for f in dataclasses.fields(section)})


def one_line(cls: type, exc: ValidationError, key: str) -> str:
    """The first error as ``key.field[index].item: must be ..., got VALUE``."""
    error = exc.errors(include_url=False)[0]
    original = (error.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):  # a cross-field check: its own whole message
        return str(original)
    loc = list(error["loc"])
    info, item, parent = _describe(cls, loc)
    where = key + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    if "[key]" in loc:  # a mapping key outside the allowed ones (a Literal)
        where = key + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "[key]")
        extra = info.json_schema_extra if info is not None and isinstance(info.json_schema_extra, dict) else {}
        allowed = _key_choices(info)
        return f"{where}: unknown {extra.get('key_name', 'key')}; allowed: {allowed}"
    if error["type"] == "value_error":
        return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = sorted(parent) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"{where}: unknown key{hint}; allowed keys are {allowed}"
    must = _item_expected(info, item) if item is not None else expected(info) if info is not None else None
    if error["type"] == "missing":
        return f"{where}: required{f', must be {must}' if must else ''}"
    if must and error["type"] == "finite_number":
        must = must.replace("a number", "a finite number")
    if must is None:
        return f"{where}: {error['msg']}, got {error.get('input')!r}"
    return f"{where}: must be {must}, got {error.get('input')!r}"


def _describe(cls: type, loc: list[Any]) -> tuple[FieldInfo | None, Any, dict[str, Any] | None]:
    """Walk ``loc`` through the annotations from ``cls``: the FieldInfo of the last named field on the way, the
    annotation of the item the error is in when it is inside that field's items (a list element or a mapping value;
    else None), and the named fields around the last step (for "allowed keys")."""
    tp: Any = cls
    info: FieldInfo | None = None
    item: Any = None
    parent: dict[str, Any] | None = None
    for part in loc:
        tp = strip_annotation(tp)
        fields = named_fields(tp)
        if fields is not None:
            parent = fields
            if part in fields:
                tp, info = fields[part]
                item = None
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (list, tuple) and args:
            tp = item = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            tp = item = args[1]
    return info, item, parent


def _key_choices(info: FieldInfo | None) -> list[Any]:
    """The allowed keys of a mapping field whose key type is a Literal."""
    tp = strip_annotation(info.annotation) if info is not None else None
    args = typing.get_args(tp) if typing.get_origin(tp) in (dict, Mapping) else ()
    return list(typing.get_args(strip_annotation(args[0]))) if args else []


def _item_expected(info: FieldInfo | None, item: Any) -> str | None:
    """What an item of a list or mapping field must be: the field's ``item_must``, else derived from the item's
    annotation and its bounds."""
    own = expected(info, items=True) if info is not None else None
    if own:
        return own
    metadata: list[Any] = []
    if typing.get_origin(item) is typing.Annotated:
        item, *extras = typing.get_args(item)
        for extra in extras:
            metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return _expected_type(item, metadata)


def strip_annotation(tp: Any) -> Any:
    """``tp`` without Annotated, Required/NotRequired and ``| None``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated or origin in (typing_extensions.Required, typing_extensions.NotRequired):
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def named_fields(tp: Any) -> dict[str, tuple[Any, FieldInfo | None]] | None:
    """``{name: (annotation, FieldInfo)}`` of a pydantic dataclass or a TypedDict; None for anything else."""
    if hasattr(tp, "__pydantic_fields__"):
        return {name: (f.annotation, f) for name, f in tp.__pydantic_fields__.items()}
    if typing_extensions.is_typeddict(tp):
        hints = typing_extensions.get_type_hints(tp, include_extras=True)
        return {name: (hint, _field_info(hint)) for name, hint in hints.items()}
    return None


def _field_info(hint: Any) -> FieldInfo:
    """The FieldInfo of a TypedDict key (its annotation without Required/NotRequired, its bounds)."""
    while typing_extensions.get_origin(hint) in (typing_extensions.Required, typing_extensions.NotRequired):
        hint = typing_extensions.get_args(hint)[0]
    return FieldInfo.from_annotation(hint)


# ----------------------------------------------------------------------------- checks outside the typed sections


def reject_unknown_keys(values: Any, allowed: list[str], section: str) -> None:
    """``values`` must be a mapping whose keys are all in ``allowed``; errors name ``section.key``."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section}: must be a JSON object, got {values!r}")
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(allowed), n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{section}.{unknown[0]}: unknown key{hint}; allowed keys are {sorted(allowed)}")


def check_known_tasks(used: Any, known: Sequence[str], key: str) -> None:
    """Every task named by a setting is a task of the data: the keys of a mapping (``key.name: unknown task``) or
    the names of a list (``key: unknown task 'name'``); the error lists the data's tasks."""
    unknown = [name for name in used if name not in known]
    if unknown:
        where = (
            f"{key}.{unknown[0]}: unknown task" if isinstance(used, Mapping) else f"{key}: unknown task {unknown[0]!r}"
        )
        raise ConfigError(f"{where}; tasks in the data: {list(known)}")


def check_int(value: Any, key: str, minimum: int) -> None:
    """``value`` must be an integer (not a bool) >= ``minimum``; the error names the full ``key``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")


def reject_nonfinite(node: Any, prefix: str = "") -> None:
    """Refuse NaN and ±Infinity anywhere in a config (JSON files and overrides may spell them), naming the key:
    every range check after this one compares finite numbers."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            reject_nonfinite(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            reject_nonfinite(value, f"{prefix[:-1]}[{index}].")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{prefix[:-1]}: {node!r} is not a finite number; every number in a config must be finite")
