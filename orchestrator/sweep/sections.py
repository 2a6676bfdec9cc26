"""fpr_core's config sections and their ``section.field`` addressing, in one place.

A spec names a config value by ``<section>.<field>`` (``model.recall``, ``train.lr``; ``grad`` alone
takes the shorthand ``truncated:4``). This module knows the sections, splits and checks dotted
keys, applies them to plain per-section dicts, and builds fpr_core's dataclasses from those dicts.
Each value's type is checked once, by pydantic over the dataclass (``section_adapter``, the same
model `fpr-sweep schema` prints); the dataclasses' own ``validate`` then checks ranges and
combinations.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import reprlib
import typing
from typing import Any, Literal, Optional, Union

from pydantic import ConfigDict, TypeAdapter, ValidationError

from fpr_core.config import EXPERIMENT_SECTIONS, ConfigError, GradConfig

SECTIONS: dict[str, type] = {name: cls for name, cls in EXPERIMENT_SECTIONS.items() if name != "task"}
"""fpr_core's config sections a spec sets by ``<section>.<field>`` (the task is set per task entry)."""
SHORTHAND_SECTION = "grad"
"""The one section a bare string may stand for (``GradConfig.parse``: 'truncated:4', 'bptt')."""


def field_names(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def check_dotted(key: str) -> tuple[str, Optional[str]]:
    """Split ``section.field`` (or the bare ``grad`` shorthand); raise ValueError naming the choices."""
    section, _, fld = key.partition(".")
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}; expected <section>.<field> with section "
                         f"one of {list(SECTIONS)}")
    if not fld:
        if section == SHORTHAND_SECTION:
            return section, None
        raise ValueError(f"expected <section>.<field>, e.g. {section}.{field_names(section)[0]}")
    names = field_names(section)
    if fld not in names:
        raise ValueError(f"unknown field {fld!r} of {section}; expected one of {names}")
    return section, fld


def base_sections(base: Any) -> dict[str, dict[str, Any]]:
    """A spec's ``base`` (one attribute per section) as plain dicts per section, grad shorthand expanded."""
    out = {name: dict(getattr(base, name)) for name in SECTIONS if name != SHORTHAND_SECTION}
    out[SHORTHAND_SECTION] = shorthand_dict(getattr(base, SHORTHAND_SECTION))
    return out


def shorthand_dict(value: Any) -> dict[str, Any]:
    """The grad section from its shorthand string or a mapping of its fields."""
    if isinstance(value, str):
        return dataclasses.asdict(GradConfig.parse(value))
    if isinstance(value, dict):
        return dict(value)
    raise ConfigError(f"grad: got {value!r}, expected MODE[:K] (e.g. 'truncated:4') or a mapping of GradConfig fields")


def apply_overrides(sections: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A copy of ``sections`` with dotted ``overrides`` applied (``grad`` alone replaces the section)."""
    out = {k: dict(v) for k, v in sections.items()}
    for key, value in overrides.items():
        section, fld = check_dotted(key)
        if fld is None:
            out[section] = shorthand_dict(value)
        else:
            out[section][fld] = value
    return out


def build_sections(sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """fpr_core's dataclasses from plain dicts; raises ConfigError naming the bad field."""
    return {name: build_section(name, sections.get(name) or {}) for name in SECTIONS}


def build_section(name: str, data: dict[str, Any]) -> Any:
    """One section's fpr_core dataclass (each section is built independently of the others)."""
    cls = SECTIONS[name]
    data = coerce_numbers(cls, data)
    check_types(cls, data, name)
    return cls.from_dict(data, where=name)


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` costs ~1 ms per dataclass: once per class, not once per cell."""
    return typing.get_type_hints(cls)


def resolved_sections(sections: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validated sections with every default filled in (what a trial actually runs)."""
    return {name: dataclasses.asdict(obj) for name, obj in build_sections(sections).items()}


def yaml_float(value: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-3`` (no dot) as a string: such a string as its float, any other
    value as it is (the one place this rule lives in the orchestrator; spec.py's ``Number``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def coerce_numbers(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``yaml_float`` applied to the values of float fields."""
    hints = field_types(cls)
    return {key: yaml_float(value) if key in hints and _accepts_float(hints[key]) else value
            for key, value in data.items()}


def _accepts_float(hint: Any) -> bool:
    if typing.get_origin(hint) is Union:
        return any(_accepts_float(h) for h in typing.get_args(hint))
    return hint is float


@functools.lru_cache(maxsize=None)
def section_adapter(cls: type) -> TypeAdapter:
    """The one validation engine of a config section: pydantic over fpr_core's dataclass itself (a
    subclass that only adds pydantic's config: strict, unknown fields refused, each field's
    docstring as its description). `fpr-sweep schema` prints its JSON schema. fpr_core stays free
    of pydantic; its dataclasses' ``validate`` keeps the rules between values (ranges, combinations)."""
    config = ConfigDict(strict=True, extra="forbid", use_attribute_docstrings=True)
    checked = type(cls.__name__, (cls,), {"__pydantic_config__": config, "__doc__": cls.__doc__,
                                          "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return TypeAdapter(checked)


def check_types(cls: type, data: dict[str, Any], where: str) -> None:
    """Reject values of the wrong type, and unknown fields, naming the first bad field.

    Values are checked as JSON (what a YAML spec holds: a list stands for a tuple, a whole number
    for a float), strictly: a string is never a number, a number never a boolean. The values
    themselves are not replaced by pydantic's (``1`` stays ``1``, so trial ids do not move)."""
    try:
        section_adapter(cls).validate_json(json.dumps(data, default=_plain))
    except ValidationError as e:
        raise ConfigError(_first_problem(cls, data, where, e)) from None


def _plain(value: Any) -> Any:
    """JSON for what json.dumps cannot write: a numpy scalar as its number, anything else its repr
    (which then fails the check, naming the value)."""
    return value.item() if hasattr(value, "item") else repr(value)


def _first_problem(cls: type, data: dict[str, Any], where: str, error: ValidationError) -> str:
    hints = field_types(cls)
    order = list(data)
    bad = sorted({e["loc"][0] for e in error.errors() if e["loc"] and e["loc"][0] in hints and e["loc"][0] in data},
                 key=order.index)
    if bad:
        key = bad[0]
        return f"{where}.{key}: got {short_repr(data[key])}, expected {_type_name(hints[key])}"
    unknown = sorted(set(data) - set(hints))
    return f"{where}: unknown field(s) {unknown}; expected some of {sorted(hints)}"


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Union:
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if origin is Literal:
        return f"one of {list(typing.get_args(hint))}"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(hint)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


EXCERPT_CHARS = 80
"""Values quoted in error messages are cut to this many characters."""
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = EXCERPT_CHARS, EXCERPT_CHARS, EXCERPT_CHARS


def short_repr(value: Any) -> str:
    """A bounded repr: never formats more than a few levels and items of a value, however large
    (a value a YAML alias expanded would otherwise be formatted whole)."""
    return excerpt(_REPR.repr(value))


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
