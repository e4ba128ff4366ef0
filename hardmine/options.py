"""Declaring options once: a dataclass field with its help text and allowed values, and the errors
that name the option at fault.

Config sections (`hardmine.config`), samplers (`hardmine.sampling`) and losses (`hardmine.losses`)
declare their options as dataclass fields made by `opt`. Everything else derives from those fields:
the config reads and writes them, `--help` prints their help texts, and a component's own
`__post_init__` checks their values with `require`, whose `OptionError` names the option so that the
config can report the full key (`roi_head.sampler.nms_thresh: ...`). The second half reads and
writes trees of such dataclasses (the config): dotted keys, mappings, `--help` text, validation.
It imports nothing from hardmine but its errors.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import Field, field, fields, is_dataclass
from typing import Any

from hardmine.errors import ConfigError


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that is an option: its default, its help text (shown by `--help`) and, for
    strings, its allowed values."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: typing.cast(Any, type(default))(default), metadata=meta)
    return field(default=default, metadata=meta)


def option_fields(cls_or_instance: Any) -> list[Field]:
    """The fields of a dataclass that are options (declared with `opt`), in declaration order."""
    return [f for f in fields(cls_or_instance) if "help" in f.metadata]


class OptionError(ValueError):
    """A bad option value; `option` is the option's name, `message` what is wrong with it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option} {message}")
        self.option = option
        self.message = message


def require(ok: bool, option: str, message: str) -> None:
    """Raise `OptionError(option, message)` unless `ok`."""
    if not ok:
        raise OptionError(option, message)


def check_choices(instance: Any) -> None:
    """Check every option of `instance` that declares its allowed values (`opt(..., choices=...)`)."""
    for f in option_fields(instance):
        choices = f.metadata.get("choices")
        value = getattr(instance, f.name)
        require(
            not choices or value in choices,
            f.name,
            f"must be one of {', '.join(map(repr, choices or ()))}, got {value!r}",
        )


# --- trees of options: config sections holding options, sub-sections and components ---------------
#
# A section is a dataclass whose fields are options (`opt`), sub-sections (dataclass values) and
# components (`component`): a field holding an instance of one of several classes chosen by name
# (a sampler, a loss), whose own options are that class's `opt` fields. Keys are dotted paths;
# a component is set by its name (`roi_head.sampler=ohem`), by a mapping
# (`{name: ohem, batch_size_per_image: 32}`) or option by option (`roi_head.sampler.nms_thresh=0.5`).
# Choosing another class gives that class's defaults; naming the current one keeps its options.

#: Called with (section, its key, the unknown field name, the full key) when a key is not found; may
#: return the message of a better error (e.g. where a removed key went).
UnknownKeyHook = Callable[[Any, str, str, str], "str | None"]


def component(default_factory: Callable[[], Any], help: str, choices: Mapping[str, type]) -> Any:
    """A section field holding one of the classes in `choices` (config name -> class), chosen by name.
    Each class has a `name` class attribute and declares its options with `opt`."""
    meta = {"help": help, "choices": tuple(choices), "classes": dict(choices)}
    return field(default_factory=default_factory, metadata=meta)


def is_component(f: Field) -> bool:
    return "classes" in f.metadata


def component_dict(value: Any) -> dict[str, Any]:
    """{"name": ..., option: value, ...} of a component."""
    return {
        "name": value.name,
        **{f.name: copy.deepcopy(getattr(value, f.name)) for f in option_fields(value)},
    }


def to_dict(section: Any) -> dict[str, Any]:
    """The nested mapping of a section (components as `component_dict`)."""
    out: dict[str, Any] = {}
    for f in fields(section):
        value = getattr(section, f.name)
        if is_component(f):
            out[f.name] = component_dict(value)
        elif is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


def with_defaults(section: Any, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` (a `to_dict` of an older version of `section`) completed with `section`'s values for
    the keys it lacks; a component saved under another name is completed with that class's defaults."""
    out = to_dict(section)
    by_name = {f.name: f for f in fields(section)}
    for key, value in saved.items():
        f = by_name.get(key)
        if f is None or not isinstance(value, dict):
            out[key] = value
        elif is_component(f):
            cls = f.metadata["classes"].get(value.get("name"))
            base = (
                component_dict(cls())
                if cls is not None and cls.name != getattr(section, key).name
                else out[key]
            )
            out[key] = {**base, **value}
        elif is_dataclass(getattr(section, key)):
            out[key] = with_defaults(getattr(section, key), value)
        else:
            out[key] = value
    return out


def assign(section: Any, key: str, value: Any, unknown: UnknownKeyHook | None = None) -> None:
    """Set the dotted `key` of `section` to `value`, parsed YAML: a scalar or list for an option
    (checked against its type), a mapping for a section or a component, a name for a component."""
    _assign(section, key.split("."), value, "", key, unknown)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _assign(
    section: Any, path: list[str], value: Any, prefix: str, full: str, unknown: UnknownKeyHook | None
) -> None:
    part, rest = path[0], path[1:]
    key = _join(prefix, part)
    f = next((f for f in fields(section) if f.name == part), None)
    if f is None:
        message = unknown(section, prefix, part, full) if unknown is not None else None
        valid = ", ".join(_join(prefix, g.name) for g in fields(section))
        raise ConfigError(
            message
            or f"unknown config key {full!r}: {part!r} is not a key of {prefix or 'the top level'}; "
            f"valid: {valid}"
        )
    current = getattr(section, part)
    if is_component(f):
        if not rest or rest == ["name"]:
            _choose(section, f, value, key)
        elif len(rest) == 1:
            _set_component_option(current, rest[0], value, key, full)
        else:
            raise ConfigError(f"unknown config key {full!r}: {key}.{rest[0]} has no sub-keys")
    elif is_dataclass(current):
        if rest:
            _assign(current, rest, value, key, full, unknown)
        elif not isinstance(value, dict):
            raise ConfigError(f"{key}: is a section; set one of its keys, e.g. {key}.KEY=VALUE")
        else:
            for k, v in value.items():
                _assign(current, str(k).split("."), v, key, _join(key, str(k)), unknown)
    elif rest:
        raise ConfigError(f"unknown config key {full!r}: {key} has no sub-keys")
    else:
        setattr(section, part, coerce(value, typing.get_type_hints(type(section))[part], key))


def _choose(section: Any, f: Field, value: Any, key: str) -> None:
    """Set the component field `f` from a name or a mapping with an optional "name"."""
    current = getattr(section, f.name)
    options = dict(value) if isinstance(value, dict) else {}
    name = options.pop("name", current.name) if isinstance(value, dict) else value
    classes = f.metadata["classes"]
    if not isinstance(name, str) or name not in classes:
        raise ConfigError(f"{key}={name!r} is not allowed; choose from {', '.join(classes)}")
    if name != current.name:
        setattr(section, f.name, classes[name]())
    for option, option_value in options.items():
        _set_component_option(getattr(section, f.name), str(option), option_value, key, f"{key}.{option}")


def _set_component_option(value: Any, option: str, option_value: Any, prefix: str, full: str) -> None:
    names = [f.name for f in option_fields(value)]
    if option not in names:
        valid = ", ".join(_join(prefix, n) for n in ["name", *names])
        raise ConfigError(
            f"unknown config key {full!r}: {option!r} is not an option of {prefix}={value.name!r}; "
            f"valid: {valid}"
        )
    hint = typing.get_type_hints(type(value))[option]
    setattr(value, option, coerce(option_value, hint, _join(prefix, option)))


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert a parsed value against a field annotation; ConfigError names the key."""
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if value is None:
            return ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, list | tuple):
            return [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
    type_name = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"{key}: expected {type_name}, got {value!r}")


def check(section: Any, prefix: str = "") -> None:
    """Check every value of a section tree: allowed choices, and each component's (and each
    sub-section's) own `__post_init__` checks; a ConfigError names the full key."""
    for f in fields(section):
        value = getattr(section, f.name)
        key = _join(prefix, f.name)
        choices = f.metadata.get("choices")
        if is_component(f):
            if type(value) is not f.metadata["classes"].get(getattr(value, "name", None)):
                raise ConfigError(
                    f"{key}: {type(value).__name__} is not allowed; choose from {', '.join(choices)}"
                )
            _recheck(value, key)
        elif is_dataclass(value):
            check(value, key)
            _recheck(value, key)
        elif choices and value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose from {', '.join(choices)}")


def _recheck(value: Any, key: str) -> None:
    """Run `value`'s `__post_init__` checks again (its options may have been set one by one)."""
    if not hasattr(value, "__post_init__"):
        return
    try:
        dataclasses.replace(value)
    except OptionError as exc:
        raise ConfigError(f"{key}.{exc.option}: {exc.message}") from None


def describe(section: Any, prefix: str = "") -> list[str]:
    """`KEY=DEFAULT` and help lines of every option of a section tree, for `--help`."""
    lines: list[str] = []
    for f in fields(section):
        value = getattr(section, f.name)
        key = _join(prefix, f.name)
        if is_component(f):
            text = f"{f.metadata['help']} [{'|'.join(f.metadata['choices'])}]; its options: {key}.OPTION"
            lines.append(_option_line(key, value.name, text))
            lines.extend(_option_lines(value, key))
        elif is_dataclass(value):
            lines.append("")
            lines.extend(describe(value, key))
        else:
            lines.append(_option_line(key, value, _help(f)))
    return lines


def describe_choices(title: str, classes: Mapping[str, type]) -> list[str]:
    """Every class of a component family with its options and their defaults, for `--help`."""
    lines = ["", title]
    for name, cls in classes.items():
        paragraph = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"  {name}: {paragraph.split('. ')[0].rstrip('.')}.")
        lines.extend(_option_lines(cls(), "", indent="  "))
    return lines


def _option_lines(value: Any, prefix: str, indent: str = "") -> list[str]:
    """A line pair per option of a component, keys under `prefix`."""
    return [
        _option_line(_join(prefix, f.name), getattr(value, f.name), _help(f), indent)
        for f in option_fields(value)
    ]


def _help(f: Field) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("choices"):
        text += f" [{'|'.join(f.metadata['choices'])}]"
    return text


def _option_line(key: str, value: Any, text: str, indent: str = "") -> str:
    shown = f"{value:.4g}" if isinstance(value, float) else repr(value)
    return f"{indent}  {key}={shown}\n{indent}      {text}"
