"""The one way a setting is declared: a field of a `Settings` model (type, default, bounds, description).

Every library config is a `Settings`; the Dagster launchpad classes (`assets/configs.py`) and the
command lines (`add_options`) are derived from these fields, so a setting is written once. A bad
value raises ValueError naming the field and the value, the same words wherever it came from.
"""

from __future__ import annotations

import argparse
import types
import typing

import pydantic
from pydantic import ConfigDict, ValidationError

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}


class Settings(pydantic.BaseModel):
    """Frozen (hashable, comparable), unknown fields refused, floats finite (NaN and infinities refused by name)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ValueError(readable(e, type(self))) from None

    def replaced(self, **changes) -> typing.Self:
        """A validated copy with `changes` (pydantic's model_copy does not validate)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})


def readable(error: ValidationError, cls: type[pydantic.BaseModel]) -> str:
    """'<field> must be > 0, got 0' for each failed rule, joined."""
    return "; ".join(_message(dict(e), cls) for e in error.errors(include_url=False))


def _message(e: dict, cls: type[pydantic.BaseModel]) -> str:
    loc = ".".join(str(part) for part in e["loc"])
    kind, ctx, value = e["type"], e.get("ctx", {}), e.get("input")
    if kind in _BOUNDS:
        key, sign = _BOUNDS[kind]
        return f"{loc} must be {sign} {ctx[key]}, got {value}"
    if kind == "finite_number":
        return f"{loc} must be a finite number, got {value}"
    if kind == "literal_error":
        return f"{loc} must be one of {', '.join(map(str, _choices(cls, e['loc'])))}, got {value!r}"
    if kind == "value_error":  # a validator's own words; a nested model's carry no location
        message = str(ctx["error"])
        return message if not loc or message.startswith(loc) else f"{loc}: {message}"
    if kind == "extra_forbidden":
        return f"unknown {cls.__name__} field {loc!r}"
    if kind == "string_too_short" and not value:
        return f"{loc} is empty"
    if kind == "missing":
        return f"{loc} is required"
    return f"{loc}: {e['msg']}, got {value!r}"


def _choices(cls: type[pydantic.BaseModel], loc: tuple) -> tuple:
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        if isinstance(field.annotation, type) and issubclass(field.annotation, pydantic.BaseModel):
            cls = field.annotation
            continue
        return choices(field.annotation)
    return ()


def choices(annotation) -> tuple:
    """The allowed values of a Literal (also inside Optional), else ()."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation) if is_optional(annotation) else ():
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return ()


def is_optional(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def default_of(cls: type[pydantic.BaseModel], name: str):
    field = cls.model_fields[name]
    return field.get_default(call_default_factory=True)


def add_options(
    parser: argparse.ArgumentParser, cls: type[Settings], only: typing.Iterable[str] | None = None, skip: typing.Iterable[str] = ()
) -> list[str]:
    """One `--field-name` option per field of `cls`: type, choices, help and default from the field.
    Options left out of a command line take the model's default (argparse.SUPPRESS). Returns the names."""
    names = [n for n in (only or cls.model_fields) if n not in set(skip)]
    for name in names:
        field = cls.model_fields[name]
        annotation, flag = field.annotation, "--" + name.replace("_", "-")
        if is_optional(annotation) and not choices(annotation):  # unset: the model's own default applies
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        help_text = f"{field.description or name} (default: {default_of(cls, name)!r})"
        if annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(annotation) is tuple:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=help_text + "; repeatable")
        elif typing.get_origin(annotation) is dict:
            parser.add_argument(flag, action=_KeyValue, metavar="KEY=VALUE", default=argparse.SUPPRESS, help=help_text + "; repeatable")
        else:
            allowed = choices(annotation)
            scalar = type(allowed[0]) if allowed else _scalar(annotation)
            parser.add_argument(flag, type=scalar, choices=allowed or None, default=argparse.SUPPRESS, help=help_text)
    return names


class _KeyValue(argparse.Action):
    """`--flag key=value`, repeatable, into one dict (the model converts the values)."""

    def __call__(self, parser, namespace, value, option_string=None):
        key, sep, item = value.partition("=")
        if not sep or not key:
            parser.error(f"{option_string} takes KEY=VALUE, got {value!r}")
        setattr(namespace, self.dest, {**(getattr(namespace, self.dest, None) or {}), key: item})


def _scalar(annotation) -> type:
    if is_optional(annotation):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation in (int, float, str):
        return annotation
    raise TypeError(f"no command-line form for a {annotation} field")


def to_options(settings: Settings, names: typing.Iterable[str]) -> list[str]:
    """The command line that add_options parses back into these values (for the fields named)."""
    argv = []
    for name in names:
        value, flag = getattr(settings, name), "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [part for item in value for part in (flag, str(item))]
        elif isinstance(value, dict):
            argv += [part for key, item in value.items() for part in (flag, f"{key}={item}")]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def given_options(namespace: argparse.Namespace, names: typing.Iterable[str]) -> dict:
    """The options a command line set, by field name."""
    return {name: getattr(namespace, name) for name in names if hasattr(namespace, name)}
