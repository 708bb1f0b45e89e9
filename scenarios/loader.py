"""Load scenario files: built-in names or paths, ``--set`` overrides, one clear error.

Every failure becomes a :class:`ScenarioError` whose text is ``field: reason``
(e.g. ``population.size: must be > 0, got -5``); the CLI prints it and exits 2.
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from .schema import Scenario


class ScenarioError(Exception):
    """Invalid scenario input. ``field`` is a dotted path (may be empty), ``reason`` says why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


def builtin_dir() -> Path:
    return Path(str(resources.files("scenarios")))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve(source: str | Path) -> Path:
    """A path to an existing file, or the name of a built-in scenario."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in str(source):
        if not path.exists():
            raise ScenarioError("scenario", f"file not found: {path}")
        if not path.is_file():
            raise ScenarioError("scenario", f"not a file: {path}")
        return path
    builtin = builtin_dir() / f"{source}.yaml"
    if not builtin.exists():
        raise ScenarioError(
            "scenario", f"unknown built-in scenario {str(source)!r} (built-in: {', '.join(builtin_names())})"
        )
    return builtin


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError("scenario", f"cannot read {path}: {exc}") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, origin: str = "<scenario>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise ScenarioError("scenario", f"invalid YAML in {origin}{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ScenarioError("scenario", f"{origin} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``5``, ``0.3``, ``[1, 2]``, ``true``)."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ScenarioError("--set", f"expected dotted.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ScenarioError("--set", f"empty key in {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                idx = _index(part, node, key)
                node = node[idx]
                continue
            if part not in node or node[part] is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, node, key)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ScenarioError(key, f"cannot set a key inside a {type(node).__name__}")
    return out


def _index(part: str, node: list, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ScenarioError(key, f"list index {part!r} out of range (length {len(node)})")
    return int(part)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_REASONS = {
    "greater_than": lambda c: f"must be > {c['gt']}",
    "greater_than_equal": lambda c: f"must be >= {c['ge']}",
    "less_than": lambda c: f"must be < {c['lt']}",
    "less_than_equal": lambda c: f"must be <= {c['le']}",
    "missing": lambda c: "is required",
    "extra_forbidden": lambda c: "unknown key",
    "int_type": lambda c: "must be an integer",
    "int_parsing": lambda c: "must be an integer",
    "int_from_float": lambda c: "must be a whole number",
    "float_type": lambda c: "must be a number",
    "float_parsing": lambda c: "must be a number",
    "bool_type": lambda c: "must be true or false",
    "bool_parsing": lambda c: "must be true or false",
    "string_type": lambda c: "must be a string",
    "list_type": lambda c: "must be a list",
    "dict_type": lambda c: "must be a mapping",
    "model_type": lambda c: "must be a mapping",
    "too_short": lambda c: f"must have at least {c.get('min_length')} items",
    "too_long": lambda c: f"must have at most {c.get('max_length')} items",
    "string_too_short": lambda c: "must not be empty",
    "literal_error": lambda c: f"must be one of {c.get('expected')}",
    "union_tag_invalid": lambda c: f"kind must be one of {c.get('expected_tags')}",
    "union_tag_not_found": lambda c: "needs a 'kind' key",
}


def format_validation_error(exc: ValidationError) -> ScenarioError:
    """The first error of a pydantic ValidationError as ``field: reason, got value``."""
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    # Discriminated unions add the tag name to the path; it is noise for users.
    kinds = {"nyc", "homogeneous", "multilayer", "erdos_renyi", "barabasi_albert", "watts_strogatz",
             "seir", "epidemic", "social",
             "none", "economy", "fixed", "saez", "gradient", "llm"}
    loc = [p for p in loc if not (isinstance(p, str) and p in kinds)]
    field = _loc(tuple(loc))
    ctx = err.get("ctx") or {}
    make = _REASONS.get(err["type"])
    if make is not None:
        reason = make(ctx)
        if err["type"] not in ("missing", "extra_forbidden", "union_tag_not_found"):
            reason += f", got {err['input']!r}"
    else:
        reason = err["msg"].removeprefix("Value error, ")
        # Validators phrase errors as "sub.field: reason" relative to their model.
        head, sep, tail = reason.partition(": ")
        if sep and " " not in head:
            field = f"{field}.{head}" if field else head
            reason = tail
    if err["type"] == "union_tag_invalid":
        field = f"{field}.kind" if field else "kind"
        reason = f"must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    return ScenarioError(field or "scenario", reason)


def validate(data: Mapping[str, Any]) -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc) from None


def load_scenario(source: str | Path | Mapping[str, Any], overrides: Iterable[str] = ()) -> Scenario:
    """Load and validate a scenario from a built-in name, a path or a dict, then apply overrides."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        data = read_yaml(resolve(source))
    return validate(apply_overrides(data, overrides))
