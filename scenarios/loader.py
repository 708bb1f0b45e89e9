"""Load scenario files: built-in names or paths, ``--set`` overrides, one clear error.

Every failure becomes a :class:`ScenarioError` whose text is ``field: reason``
(e.g. ``population.size: must be > 0, got -5``); the CLI prints it and exits 2.
"""
from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import ValidationError

from .schema import Graph, Model, Planner, Population, Scenario, union_tags


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


# -- strict YAML ---------------------------------------------------------------------------------
# One loader for every way a scenario or experiment arrives (files, --set values, HTTP uploads).
# It is PyYAML's pure-Python SafeLoader with limits enforced *where the scanner nests*, not on the
# events it emits afterwards: a scanner looks ahead up to a line (1024 characters) in flow context
# before it yields anything, and libyaml >= 0.2.6 (PyYAML 6.0.4's wheels) refuses deep flow nesting
# during that look-ahead with its own error, so a limit counted on events never fires there.
MAX_YAML_BYTES = 1 << 20  # a full scenario is a few KiB; prompts make it tens
MAX_YAML_DEPTH = 32  # nested collections; a scenario needs 6
MAX_YAML_NODES = 20_000  # after alias expansion; a scenario has a few hundred
_SAFE_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")}
_BOOL_WORDS = ("yes", "no", "on", "off", "true", "false")  # YAML 1.1 booleans (PyYAML resolves these)


class _YAMLLimit(yaml.YAMLError):
    """A limit of the strict loader: ``reason``, and ``mark`` (where in the text)."""

    def __init__(self, reason: str, mark=None):
        super().__init__(reason)
        self.reason = reason
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader + limits (depth, nodes after aliases), no duplicate keys, no object tags,
    and dates/``=`` read as strings (the schema has no date fields)."""

    yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in rs if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")]
        for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, *, aliases: bool = True):
        super().__init__(text)
        self._aliases = aliases
        self._expanded = 0  # nodes composed so far, an alias counting as a copy of its anchor's tree
        self._sizes: dict[int, int] = {}  # id(node) -> its tree's size, aliases expanded

    # nesting, counted as the scanner opens a collection (before any look-ahead is handed on)
    def _check_depth(self) -> None:
        if self.flow_level + len(self.indents) > MAX_YAML_DEPTH:
            raise _YAMLLimit(f"nested deeper than {MAX_YAML_DEPTH} levels", self.get_mark())

    def fetch_flow_collection_start(self, TokenClass):
        super().fetch_flow_collection_start(TokenClass)
        self._check_depth()

    def add_indent(self, column):
        grew = super().add_indent(column)
        if grew:
            self._check_depth()
        return grew

    # nodes and aliases
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if not self._aliases:
                raise _YAMLLimit("YAML aliases (*name) are not allowed in uploaded scenarios", event.start_mark)
            node = super().compose_node(parent, index)  # undefined aliases: PyYAML's error
            size = self._sizes.get(id(node))
            if size is None:  # its anchor's collection is still being composed
                raise _YAMLLimit(f"alias *{event.anchor} is inside the collection it refers to", event.start_mark)
            self._grow(size, event.start_mark)
            return node
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _SAFE_TAGS:
            raise _YAMLLimit(f"tag {_short(tag)} is not allowed (plain data only)", event.start_mark)
        before = self._expanded
        self._grow(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _grow(self, n: int, mark) -> None:
        self._expanded += n
        if self._expanded > MAX_YAML_NODES:
            raise _YAMLLimit(f"more than {MAX_YAML_NODES} YAML nodes (aliases expanded)", mark)

    # keys and tags
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it
                if first is not key_node:
                    raise _YAMLLimit(f"duplicate key {key!r} (first at line {first.start_mark.line + 1})",
                                     key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node):
        raise _YAMLLimit(f"tag {_short(node.tag)} is not allowed (plain data only)", node.start_mark)


_StrictLoader.add_constructor(None, _StrictLoader.construct_undefined)


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def read_yaml(path: Path, what: str = "scenario") -> dict[str, Any]:
    """A scenario (or experiment) file through the strict loader; ``what`` names the field in errors."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ScenarioError(what, f"{path} is {size:,} bytes; a scenario file must be <= {MAX_YAML_BYTES:,}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(what, f"cannot read {path}: {exc}") from None
    return parse_yaml(text, str(path), what=what)


def load_yaml(text: str, origin: str = "<scenario>", *, aliases: bool = True, what: str = "scenario") -> Any:
    """Any YAML value through the strict loader (see ``_StrictLoader``); errors are ScenarioErrors on ``what``."""
    if len(text) > MAX_YAML_BYTES:
        raise ScenarioError(what, f"{origin} has {len(text):,} characters; the limit is {MAX_YAML_BYTES:,}")
    loader = None
    try:
        # inside the try: the reader refuses unprintable characters (a ReaderError) as it is made
        loader = _StrictLoader(text, aliases=aliases)
        return loader.get_single_data()
    except _YAMLLimit as exc:
        raise ScenarioError(what, f"{exc.reason} in {origin}{_at(exc.mark)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line, whatever PyYAML wrote
        raise ScenarioError(what, f"invalid YAML in {origin}{_at(mark)}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _at(mark) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def parse_yaml(text: str, origin: str = "<scenario>", *, aliases: bool = True, what: str = "scenario") -> dict[str, Any]:
    """A scenario document: a mapping at the top level. ``aliases=False`` refuses ``*name`` (HTTP uploads)."""
    data = load_yaml(text, origin, aliases=aliases, what=what)
    if not isinstance(data, dict):
        raise ScenarioError(what, f"{origin} must hold a mapping at the top level, got {type(data).__name__}")
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
            value = load_yaml(raw, f"--set {key.strip()}", what=key.strip())
        except ScenarioError as exc:
            if not exc.reason.startswith("invalid YAML"):
                raise  # a limit (depth, duplicate key, tag): not just text that is no YAML
            value = raw  # e.g. name=a: b is the string "a: b"
        node: Any = out
        for part in parts[:-1]:
            if isinstance(node, list):
                idx = _index(part, node, key)
                node = node[idx]
                continue
            if part not in node or node[part] is None:
                # a mapping: a new list could take no index, and a digit is a mapping's key just as well
                # (a label map keyed by household size "1", "2": an overlay flattens it to labels.x.1)
                node[part] = {}
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


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _loc(loc: tuple) -> str:
    """``a.b[0]``; a key that is not plain text (spaces, dots, colons, unicode, empty) is shown quoted: ``a[' ']``."""
    out = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += ("." if out else "") + part
        else:
            out += f"[{part!r}]"
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
    "finite_number": lambda c: "must be a finite number",
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


# Discriminated unions add the tag name to the path; it is noise for users.
_TAGS = frozenset(union_tags(Population, Graph, Model, Planner))


def format_validation_error(exc: ValidationError, tags: Iterable[str] = ()) -> ScenarioError:
    """The first error of a pydantic ValidationError as ``field: reason, got value`` (``tags``: further
    union tags to leave out of the path, e.g. a registry's extra model kinds)."""
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    kinds = _TAGS | set(tags)
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
    if err["type"] == "string_type" and isinstance(err["input"], bool):
        reason += f" (YAML reads unquoted {'/'.join(_BOOL_WORDS)} as booleans: quote it, e.g. \"yes\")"
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
