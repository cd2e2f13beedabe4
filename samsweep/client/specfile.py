"""A study spec file (YAML or JSON) read and checked locally, with errors that point at
the line and column, so a typo fails before any request is sent or server started."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from samsweep.core.spec import StudySpec


class SpecError(ValueError):
    """A spec file that cannot be read, parsed or validated; the message names the file
    (and the line and column where they are known) and is meant for the terminal as is."""


# A spec is a few hundred bytes; the API takes at most SAMSWEEP_MAX_BODY_BYTES (1 MB by
# default). Beyond these a file is refused before it is parsed, so a hostile one (a
# 5 000-level nesting, a billion-node alias bomb, 10 GB) costs nothing.
MAX_SPEC_BYTES = 1_000_000
MAX_DEPTH = 32  # a spec nests 3 levels; Python's parsers recurse and die near 1 000
MAX_NODES = 100_000  # values after YAML aliases are expanded (a spec has ~100)


def load_spec(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON spec and check it locally, so typos fail before any server starts."""
    text = _read(path)
    if path.suffix.lower() == ".json":
        _check_json_shape(path, text)
        data = _parse_json(path, text)
    else:
        _check_yaml_shape(path, text)
        data = _parse_yaml(path, text)
    if data is None:
        raise SpecError(f"{path}: the spec is empty")
    try:
        StudySpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_validation_message(path, text, e)) from None
    except ValueError as e:  # a validator's own error that pydantic did not wrap
        raise SpecError(f"{path}: invalid spec: {e}") from None
    return data


def _read(path: Path) -> str:
    """The file's text: a regular file of at most MAX_SPEC_BYTES of UTF-8. Opened without
    blocking, so a FIFO (or a device) is refused instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a spec file") from None
    except (OSError, ValueError) as e:  # permission denied, a NUL in the name, a loop ...
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise SpecError(f"{path}: cannot read it: {reason.lower()}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise SpecError(f"{path}: is a directory, not a spec file")
        raise SpecError(f"{path}: not a regular file (a FIFO, a socket or a device)")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_SPEC_BYTES + 1)
        except OSError as e:
            raise SpecError(f"{path}: cannot read it: {(e.strerror or str(e)).lower()}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: larger than {MAX_SPEC_BYTES} bytes: not a study spec")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start})") from None


def _too_deep(path: Path, text: str, index: int) -> SpecError:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return SpecError(
        _located(path, text, line, column, f"nested deeper than {MAX_DEPTH} levels: not a spec")
    )


def _check_json_shape(path: Path, text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before `json` recurses into it: one pass over
    the text, brackets outside strings counted."""
    depth, in_string, escaped = 0, False, False
    for i, c in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep(path, text, i)
        elif c in "]}":
            depth -= 1


def _check_yaml_shape(path: Path, text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, and more than MAX_NODES values once aliases
    are expanded (a "billion laughs" bomb), from YAML's event stream: the parser does not
    recurse (the composer and constructor, which build the tree, do)."""

    def located(mark: Any, message: str) -> SpecError:
        if mark is None:
            return SpecError(f"{path}: {message}")
        return SpecError(_located(path, text, mark.line + 1, mark.column + 1, message))

    depth = 0
    total = 0
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, count of values when opened)
    sizes: dict[str, int] = {}  # anchor -> values in its node, expanded
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise located(
                        event.start_mark, f"nested deeper than {MAX_DEPTH} levels: not a spec"
                    )
                total += 1
                open_nodes.append((event.anchor, total))
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
                anchor, opened = open_nodes.pop()
                if anchor is not None:
                    sizes[anchor] = total - opened + 1
            elif isinstance(event, yaml.ScalarEvent):
                total += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                total += sizes.get(event.anchor or "", 1)
            if total > MAX_NODES:
                raise located(
                    event.start_mark,
                    f"more than {MAX_NODES} values once its aliases are expanded: not a spec",
                )
    except yaml.YAMLError:
        return  # a syntax error: _parse_yaml reports it with its place


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error, not "last wins":
    a repeated key would silently change the study (the API refuses them too); and
    YAML 1.2's floats, so `lr: 1e-3` is a number (PyYAML's YAML 1.1 reads it as a
    string, which the strict spec then refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2's float syntax (1e-3, 5E-4, .5, 1.0e+3); the rest of YAML 1.1 stays.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise SpecError(f"{path}: could not parse JSON: duplicate key {e.args[0]!r}") from None
    except json.JSONDecodeError as e:
        raise SpecError(
            _located(path, text, e.lineno, e.colno, f"could not parse JSON: {e.msg}")
        ) from None


def _parse_yaml(path: Path, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.MarkedYAMLError as e:
        problem = e.problem or "syntax error"
        if e.context:
            m = e.context_mark
            where = f" started at {m.line + 1}:{m.column + 1}" if m else ""
            problem += f" ({e.context}{where})"
        mark = e.problem_mark or e.context_mark
        if mark is None:
            raise SpecError(f"{path}: could not parse YAML: {problem}") from None
        message = f"could not parse YAML: {problem}"
        raise SpecError(_located(path, text, mark.line + 1, mark.column + 1, message)) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: could not parse YAML: {e}") from None


def _located(path: Path, text: str, line: int, column: int, message: str) -> str:
    """`path:line:col: message`, then the offending line (editors and terminals link the
    first form to the place)."""
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    shown = f"\n    {line} | {source[:200]}" if source.strip() else ""
    return f"{path}:{line}:{column}: {message}{shown}"


def _validation_message(path: Path, text: str, error: ValidationError) -> str:
    """Each error as `path:line:col: field.path: message (got value)`; the position is
    the YAML (or JSON, which YAML's parser reads too) node the error is about."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    errors = error.errors(include_url=False)
    out = [f"{path}: invalid spec ({len(errors)} error{'s' if len(errors) != 1 else ''}):"]
    for e in errors:
        loc = e["loc"]
        field = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in loc).lstrip(".")
        message = e["msg"]
        value = e.get("input")
        if e["type"] != "missing" and not isinstance(value, dict | list):
            shown = repr(value)
            message += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
        mark = _mark(root, loc)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}: " if mark is not None else ""
        out.append(f"  {where}{field or '(the whole spec)'}: {message}")
    return "\n".join(out)


def _mark(node: yaml.Node | None, loc: tuple) -> yaml.Mark | None:
    """The start of the node at `loc`, or of the nearest enclosing one that exists."""
    if node is None:
        return None
    for i, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            match = [
                (k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key
            ]
            if not match:
                break
            k, node = match[0]
            if i == len(loc) - 1:  # the field itself: point at its name
                return k.start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if not 0 <= key < len(node.value):
                break
            node = node.value[key]
        else:
            break
    return node.start_mark
