"""Click options generated from config dataclasses: one option per field, so a new field is a new option.

A field's ``metadata`` says how it shows: ``help``; ``choices`` (a closed set); ``min``/``max`` (a range,
``min_open`` for a strict lower bound); ``path`` ("file" or "dir"); ``cli: False`` hides it. Types map
generically: ``bool`` -> ``--name/--no-name``; ``int``/``float``/``str``; ``X | None`` -> X, default unset;
``Literal`` -> choices; ``Path``; ``tuple``/``list`` -> one comma-separated value (``--input-mean
0.48,0.46,0.41``); anything else -> JSON text. The same types check a recipe's values (:func:`convert_field`),
so the command line and a recipe accept exactly the same things.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Callable, Iterable

import click
from click.core import ParameterSource


class SequenceType(click.ParamType):
    """A tuple or list field as one comma-separated value; ``length`` fixes the count (``tuple[float, float]``)."""

    name = "list"

    def __init__(self, item: click.ParamType, length: int | None, container: type):
        self.item, self.length, self.container = item, length, container

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        count = f"{self.length} " if self.length else ""
        return f"{count}{self.item.name.upper()}S,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            self.fail(f"expected a comma-separated list, got {value!r}", param, ctx)
        if self.length is not None and len(value) != self.length:
            self.fail(f"expected {self.length} values, got {len(value)}", param, ctx)
        return self.container(self.item.convert(v, param, ctx) for v in value)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


class JsonType(click.ParamType):
    """Any other field type: the option's value is JSON text (a recipe holds the JSON value itself)."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str) or param is None:
            return value
        try:
            return json.loads(value)
        except ValueError:
            self.fail(f"not JSON: {value!r}", param, ctx)


def _scalar_type(hint: Any, meta: typing.Mapping[str, Any]) -> click.ParamType:
    if "choices" in meta or typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(c) for c in meta.get("choices", typing.get_args(hint))])
    if meta.get("path") or hint is Path:
        kind = meta.get("path")
        return click.Path(dir_okay=kind != "file", file_okay=kind != "dir", path_type=Path if hint is Path else None)
    bounds = {"min": meta.get("min"), "max": meta.get("max"), "min_open": meta.get("min_open", False)}
    if hint is int:
        return click.IntRange(**bounds) if bounds["min"] is not None or bounds["max"] is not None else click.INT
    if hint is float:
        return click.FloatRange(**bounds) if bounds["min"] is not None or bounds["max"] is not None else click.FLOAT
    if hint is str:
        return click.STRING
    return JsonType()


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, field: dataclasses.Field) -> tuple[click.ParamType, Any]:
    """(click type, Python type without ``| None``) of a dataclass field."""
    hint, _ = _unwrap_optional(_hints(cls)[field.name])
    if hint is bool:
        return click.BOOL, bool
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        args = typing.get_args(hint)
        variable = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        item = _scalar_type(args[0], field.metadata)
        return SequenceType(item, None if variable else len(args), origin), hint
    return _scalar_type(hint, field.metadata), hint


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def shown(field: dataclasses.Field) -> bool:
    """Whether a field is a command-line option (``metadata={"cli": False}`` hides it)."""
    return field.metadata.get("cli", True) is not False


def field_option(cls: type, field: dataclasses.Field) -> click.Option:
    """The option for one field: ``--word-dim``, ``--augment/--no-augment``, ...; its value is named ``field.name``."""
    flag = "--" + field.name.replace("_", "-")
    param_type, hint = field_type(cls, field)
    default = field_default(field)
    help_text = field.metadata.get("help")
    if hint is bool:
        negative = "--no-" + field.name.replace("_", "-")
        return click.Option([f"{flag}/{negative}", field.name], default=default, show_default=True, help=help_text)
    if isinstance(param_type, SequenceType) and default is not None:
        default = ",".join(str(v) for v in default)  # shown as typed, converted like a typed value
    return click.Option([flag, field.name], type=param_type, default=default, show_default=default is not None,
                        help=help_text)


def config_fields(*classes: type) -> dict[str, tuple[type, dataclasses.Field]]:
    """Field name -> (dataclass, field) over ``classes``; a name may live in one class only."""
    named: dict[str, tuple[type, dataclasses.Field]] = {}
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name in named:
                raise TypeError(f"field {field.name!r} is in both {named[field.name][0].__name__} and {cls.__name__}")
            named[field.name] = (cls, field)
    return named


def config_options(*classes: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a click command with one option per shown field of ``classes``, in field order."""
    options = [field_option(cls, field) for cls, field in config_fields(*classes).values() if shown(field)]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        params = getattr(command, "__click_params__", [])
        params.extend(reversed(options))  # click reverses the list once more when it builds the command
        command.__click_params__ = params  # type: ignore[attr-defined]
        return command
    return decorate


def explicit(ctx: click.Context, names: Iterable[str]) -> set[str]:
    """The parameters among ``names`` given on the command line (not left at their defaults)."""
    return {name for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE}


_JSON_TYPES: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def convert_field(cls: type, field: dataclasses.Field, value: Any) -> Any:
    """A JSON value (from a recipe) -> the field's value, checked as its option checks it; ValueError says why."""
    param_type, hint = field_type(cls, field)
    if value is None:
        if _unwrap_optional(_hints(cls)[field.name])[1]:
            return None
        raise ValueError("must not be null")
    origin = typing.get_origin(hint) or hint
    origin = str if origin in (Path, typing.Literal) else origin
    expected = _JSON_TYPES.get(origin, (list,) if origin in (tuple, list) else (object,))
    if not isinstance(value, expected) or (isinstance(value, bool) and origin in (int, float)):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(origin, "a list")
        raise ValueError(f"expected {kind}, got {value!r}")
    try:
        return param_type.convert(value, None, None)
    except click.BadParameter as exc:
        raise ValueError(exc.message) from None
