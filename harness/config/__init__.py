"""Study configuration: frozen dataclasses loaded from TOML, `--set` overrides, validation that names the key.

A package of three parts: sections (every key and its default), checks (validation), errors; this module loads a
study file with its overrides and writes the resolved config back as TOML."""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import tomllib
import typing
from pathlib import Path

from harness.config.checks import CHECKS, target_shifts, validate  # noqa: F401 - the config's public API
from harness.config.errors import ConfigError, NotFound, _short  # noqa: F401
from harness.config.sections import *  # noqa: F401,F403 - the sections and the choices keys take
from harness.config.sections import SECTIONS, Config

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_CONFIG = ROOT / "studies" / "default.toml"


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


# TOML integers are 64-bit, but Python reads any number of digits: a key's value must fit what torch, numpy and the
# stores accept (seeds: numpy's 0..2^32-1, checked in _check_study)
INT_LIMIT = 2**63


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _coerce(key: str, value, tp):
    """Check one value against a field type; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {_a(_type_name(tp))}, got {_short(value)}")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return _coerce(key, float(value), float)
        except OverflowError:  # an integer of 400 digits: no float holds it
            raise ConfigError(key, f"expected a finite number, got {_short(value)} (beyond a float's ~1.8e308)") from None
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(key, f"expected {_a(_type_name(tp))}, got {_short(value)}")
    if tp is int and not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(key, f"expected an integer of at most 64 bits (|value| < 2^63), got {_short(value)}")
    if tp is float and not math.isfinite(value):  # TOML has nan and inf; no key of ours means anything with them
        raise ConfigError(key, f"expected a finite number, got {value!r}")
    return value



def _section(name: str, values: dict):
    if name == "data" and isinstance(values.get("target_shift"), str):  # one shift may be written without a list
        values = {**values, "target_shift": [values["target_shift"]]}
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    allowed = list(hints)
    for key in values:
        if key not in hints:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{name}.{key}", f"unknown key{hint}; allowed keys in [{name}]: {', '.join(allowed)}")
    return cls(**{k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()})


def parse_override(text: str) -> tuple[str, str, object]:
    """'section.key=value' -> (section, key, value); the value is read as TOML, else as a bare string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError("--set", f"expected SECTION.KEY=VALUE, got {_short(text)}")
    path, raw = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings such as model.name=resnet18 need no quotes
    except RecursionError:  # tomllib recurses once per nested array: [[[...]]] 3000 deep exhausts the stack
        raise ConfigError(f"{section}.{key}", f"the value is nested too deep to read ({raw.count('[')} '[' in "
                          f"{len(raw)} characters); no key takes nested lists") from None
    return section, key, value


def from_dict(raw: dict) -> Config:
    for name, values in raw.items():
        if name not in SECTIONS:
            raise ConfigError(name, f"unknown section; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(name, "expected a table of keys")
    cfg = Config(**{name: _section(name, values) for name, values in raw.items()})
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] = (), **flags) -> Config:
    """Read a TOML study file, apply `--set` overrides then CLI flags (section.key -> value), validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.is_dir():
        raise ConfigError("--config", f"{_short(str(path))} is a folder; give the study's TOML file (e.g. studies/default.toml)")
    if not path.is_file():
        raise ConfigError("--config", f"file not found: {_short(str(path))}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"{_short(str(path))} is not valid UTF-8 TOML: {e}") from None
    except OSError as e:  # unreadable: permissions, an I/O error
        raise ConfigError("--config", f"{_short(str(path))} cannot be read ({e.strerror or e})") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table: 3000 deep exhausts the stack
        raise ConfigError("--config", f"{_short(str(path))} nests arrays or tables too deep to read (Python's "
                          f"recursion limit, {sys.getrecursionlimit()}); no key takes nested values") from None

    def table(section):
        if section not in SECTIONS:
            raise ConfigError(section, f"unknown section; allowed sections: {', '.join(SECTIONS)}")
        if not isinstance(raw.setdefault(section, {}), dict):
            raise ConfigError(section, "expected a table of keys")
        return raw[section]

    for text in overrides:
        section, key, value = parse_override(text)
        table(section)[key] = value
    for dotted, value in flags.items():
        if value is not None:
            section, key = dotted.split(".")
            table(section)[key] = value
    return from_dict(raw)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (logged with every study; loads back to the same Config)."""
    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, values in to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {fmt(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
