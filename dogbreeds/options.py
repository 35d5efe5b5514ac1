"""Options declared once: a dataclass field made by `option()` carries its default, help, choices
and bounds, and the command line (`cli.with_config_options`), the validation (`check_options`)
and the option tables of docs/options.md (`option_table`) are all read from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field

from dogbreeds.errors import DogbreedsError


@dataclass(frozen=True)
class Option:
    """How one field appears on the command line and what values it accepts."""

    help: str
    flag: str | None = None  # the option's name; default: --field-name (booleans get --x/--no-x)
    choices: tuple[str, ...] = ()
    at_least: float | None = None  # inclusive lower bound
    positive: bool = False
    within: tuple[float, float, str] | None = None  # (low, high, ends: "[)", "()", "(]" or "[]")
    shown_default: str | None = None  # the README's default column, where the value alone says too little
    table: str | None = None  # the README's meaning column, where it says more than --help

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None; None values mean "the default" and pass."""
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, got {value!r}"
        if self.at_least is not None and value < self.at_least:
            bound = "0 or more" if self.at_least == 0 else f"at least {self.at_least:g}"
            return f"must be {bound}, got {value}"
        if self.positive and not value > 0:
            return f"must be positive, got {value}"
        if self.within is not None:
            low, high, ends = self.within
            above = low <= value if ends[0] == "[" else low < value
            below = value <= high if ends[1] == "]" else value < high
            if not (above and below):
                if ends == "()":
                    return f"must be between {low:g} and {high:g}, got {value}"
                return f"must be in {ends[0]}{low:g}, {high:g}{ends[1]}, got {value}"
        return None


def option(default=dataclasses.MISSING, help: str = "", *, default_factory=dataclasses.MISSING, **how):
    """A dataclass field that is also a command-line option."""
    return field(default=default, default_factory=default_factory, metadata={"option": Option(help, **how)})


def flag_of(f: dataclasses.Field) -> str:
    spec: Option = f.metadata["option"]
    return spec.flag or "--" + f.name.replace("_", "-")


def is_flag(kind) -> bool:
    """An on/off option (--x/--no-x); `bool | None` is one whose default comes from elsewhere."""
    return kind is bool or kind == (bool | None)


def option_fields(cls) -> list[tuple[dataclasses.Field, type, tuple[str, ...]]]:
    """(field, type, path) of every option of a config class, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            found += [(inner, t, (f.name, *path)) for inner, t, path in option_fields(kind)]
        elif "option" in f.metadata:
            found.append((f, kind, (f.name,)))
    return found


def check_options(config) -> None:
    """Each field's own bounds, as the one-line error the user sees."""
    for f, _, path in option_fields(type(config)):
        value = config
        for name in path:
            value = getattr(value, name)
        problem = f.metadata["option"].problem(value)
        if problem:
            raise DogbreedsError(f"{flag_of(f)} {problem}")


def _is_a(value, kind) -> bool:
    """`value` as JSON gives it is of the annotated `kind` (an int where a float is wanted too)."""
    if kind is typing.Any:
        return True
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(kind) or (typing.Any,)
        return isinstance(value, list) and all(_is_a(v, item) for v in value)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, dict) and type_problem(kind, value) is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def type_problem(cls, values: dict) -> str | None:
    """What is wrong with the types of a dataclass's fields read back from JSON (a saved run's
    config, its progress), or None: a damaged file is then named as such, not met later as a
    traceback. Unknown names are the caller's to judge."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            inner = type_problem(kind, value)
            if inner:
                return f"{f.name}.{inner}"
        elif not _is_a(value, kind):
            shown = "a table of settings" if dataclasses.is_dataclass(kind) else _kind_name(kind)
            return f"{f.name} is {json.dumps(value)[:40]}, expected {shown}"
    return None


def _kind_name(kind) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def from_options(cls, values: dict):
    """A config from the command line's values, keyed by field name (nested dataclasses flattened)."""
    values = dict(values)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = kind(**{g.name: values.pop(g.name) for g in dataclasses.fields(kind) if g.name in values})
    return cls(**values)


def require(checks: list[tuple[bool, str]]) -> None:
    """The first failed check between options, as the one-line error the user sees."""
    for ok, message in checks:
        if not ok:
            raise DogbreedsError(message)


def _default_text(f: dataclasses.Field, kind) -> str:
    spec: Option = f.metadata["option"]
    if spec.shown_default is not None:
        return spec.shown_default
    value = f.default
    if kind is bool:
        return "on" if value else "off"
    return "" if value is None else f"`{value}`"


def option_table(cls) -> str:
    """The README's table of a config's options: option, default, meaning."""
    lines = ["| option | default | meaning |", "| --- | --- | --- |"]
    for f, kind, _ in option_fields(cls):
        spec: Option = f.metadata["option"]
        name = flag_of(f)
        if is_flag(kind):
            name = f"{name}/--no-{name[2:]}"
        meaning = spec.table or spec.help
        if spec.choices:
            meaning += " (" + ", ".join(f"`{c}`" for c in spec.choices) + ")"
        lines.append(f"| `{name}` | {_default_text(f, kind)} | {meaning} |")
    return "\n".join(lines)
