"""Load, merge and validate the pipeline's parameters; params/default.yaml is both defaults and schema."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from recsys.core.io import PROJECT_ROOT
from recsys.runs.param_checks import ParamsError, validate

__all__ = [
    "DEFAULT_PARAMS_FILE",
    "ParamsError",
    "load_params",
    "params_hash",
    "parse_override",
    "resolve_paths",
    "validate",
]

DEFAULT_PARAMS_FILE = PROJECT_ROOT / "params" / "default.yaml"


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a parameter file with the safe loader (no Python objects can be constructed from YAML).

    Raises:
        ParamsError: the file is missing, is not valid YAML (with line and column), or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"parameter file {path} does not exist (pass an existing YAML file to --params)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of keys to values at the top, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split a `-p group.key=value` override into its key path and a YAML-typed value.

    The value is read as YAML, so `-p seed=7` gives an int, `-p data_dir=null` gives None and
    `-p download.sources=[a, b]` gives a list; quote a string that looks like a number.
    """
    key, sep, raw_value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {text!r} is not of the form key.sub=value (e.g. -p split.strategy=temporal)")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as err:
        raise ParamsError(f"override {text!r}: value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_type(key: str, default: Any, value: Any) -> Any:
    """Return `value` if it has the type of `default` (ints pass for floats; null defaults take strings)."""
    if default is None:
        if value is None or isinstance(value, str):
            return value
        raise ParamsError(f"{key}: expected a string or null, got {_type_name(value)} {value!r}")
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:
            value = [_check_type(f"{key}[{i}]", default[0], item) for i, item in enumerate(value)]
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(
            f"{key}: expected {_type_name(default)} (like the default {default!r}), got {_type_name(value)} {value!r}"
        )
    return value


# groups renamed since a parameter file may have been written: a clear error instead of "unknown key"
RENAMED_GROUPS = {"ranking": "rating"}
RENAMED_WHY = {"ranking": "the two-tower rating model's group; 'ranking' is the candidate rankers' word"}


def _merge(schema: dict, base: dict, overlay: dict, prefix: str, source: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        full_key = f"{prefix}{key}"
        if key in RENAMED_GROUPS and RENAMED_GROUPS[key] in schema:
            raise ParamsError(
                f"{full_key!r} in {source} is now {prefix}{RENAMED_GROUPS[key]!r} ({RENAMED_WHY[key]}): rename the key"
            )
        if key not in schema:
            valid = ", ".join(f"{prefix}{k}" for k in schema)
            hint = _close_match(str(key), schema)
            raise ParamsError(f"unknown parameter {full_key!r} in {source}{hint}; valid keys here: {valid}")
        if isinstance(schema[key], dict):
            if not isinstance(value, dict):
                raise ParamsError(
                    f"{full_key} in {source}: expected a group of keys "
                    f"({', '.join(schema[key])}), got {_type_name(value)} {value!r}"
                )
            merged[key] = _merge(schema[key], merged[key], value, f"{full_key}.", source)
        else:
            merged[key] = _check_type(full_key, schema[key], value)
    return merged


def _close_match(key: str, schema: dict) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(schema), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _nest(path: list[str], value: Any) -> dict:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return nested


def load_params(
    params_file: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    defaults_file: str | os.PathLike = DEFAULT_PARAMS_FILE,
) -> dict:
    """Merge defaults, an optional parameter file and `-p` overrides, then validate the result.

    Args:
        params_file: a YAML file holding only the keys it changes (e.g. params/smoke.yaml).
        overrides: strings of the form `group.key=value`, applied last, in order.
        defaults_file: the schema and defaults; params/default.yaml unless a test says otherwise.

    Returns:
        The merged parameters as nested dicts.

    Raises:
        ParamsError: unknown key (with the valid ones), wrong type, or a value out of range.
    """
    schema = read_yaml(defaults_file)
    params = copy.deepcopy(schema)
    if params_file is not None:
        params = _merge(schema, params, read_yaml(params_file), "", str(params_file))
    for text in overrides:
        path, value = parse_override(text)
        params = _merge(schema, params, _nest(path, value), "", f"override -p {text}")
    validate(params)
    return params


def params_hash(params: dict) -> str:
    """A short stable hash of the merged params, to tell runs with the same settings apart from others."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# parameter keys holding paths: relative ones are taken from the current directory
PATH_KEYS = (("data_dir",), ("geo", "uszipcode_db"))


def resolve_paths(params: dict) -> dict:
    """Make the relative paths among `params` absolute from the current directory (in place, and returned).

    run_all.py resolves them where it is started (the kernels run inside notebooks/); a notebook
    run by hand resolves its own from notebooks/, so both record the folder they really used.
    """
    for key_path in PATH_KEYS:
        holder = params
        for part in key_path[:-1]:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and holder.get(key_path[-1]):
            holder[key_path[-1]] = str(Path(holder[key_path[-1]]).expanduser().resolve())
    return params
