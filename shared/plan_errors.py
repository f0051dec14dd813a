"""Turning a bad plan into problems an operator can act on: which field, what is wrong, and
where in the YAML it is (line:column), instead of pydantic's or PyYAML's own wording."""

from __future__ import annotations

import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

Loc = tuple[str | int, ...]

# A cross-field rule reports several problems at once, each at its own field; pydantic only
# knows the model that raised, so the fields travel in the error's context.
RULE_ERROR = "plan_rule"

# Aliases can make a small text expand enormously (and even refer to themselves); refuse a
# document bigger than any real group of VMs before it is built.
MAX_NODES = 100_000

_PATTERN_WORDS: dict[str, str] = {}


def worded_pattern(regex: str, words: str) -> str:
    """Register how to tell an operator what `regex` allows; returns it for Field(pattern=)."""
    _PATTERN_WORDS[regex] = words
    return regex


@dataclass(frozen=True)
class Problem:
    location: str  # e.g. "vms[2].disks[0].size_gb"; "" for the document as a whole
    message: str
    line: int | None = None  # 1-based, when the plan came as text
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class PlanError(ValueError):
    """A plan that cannot be migrated, with every problem found (not just the first)."""

    def __init__(self, problems: list[Problem] | str, source: str = "<plan>") -> None:
        self.problems = [Problem("", problems)] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(self._line(p) for p in self.problems)

    def _line(self, problem: Problem) -> str:
        where = self.source
        if problem.line is not None:
            where += f":{problem.line}:{problem.column}"
        return f"{where}: {problem}"


class Findings:
    """Collects cross-field problems inside a model validator, each at a field path relative
    to that model, and raises them together."""

    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, where: Loc, message: str) -> None:
        self.items.append((where, message))

    def raise_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{format_location(loc)}: {msg}" for loc, msg in self.items)
            raise PydanticCustomError(RULE_ERROR, "{summary}",
                                      {"summary": summary, "problems": self.items})


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_location(loc: Loc) -> str:
    """vms[2].disks[0].size_gb; a key that is not a plain word is quoted, vms[0]["a.b"], so
    that a stray key like `0[0` cannot be read as a different place."""
    text = ""
    for step in loc:
        if isinstance(step, int):
            text += f"[{step}]"
        elif _PLAIN_KEY.match(str(step)):
            text += f".{step}" if text else str(step)
        else:
            text += f"[{json.dumps(str(step), ensure_ascii=False)}]"
    return text


# -- reading the YAML ----------------------------------------------------------------------

def read_document(text: str, source: str) -> tuple[dict[str, Any], yaml.Node]:
    """The plan's data and its node tree (which remembers where every value was written)."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        document = loader.get_single_node()
        if document is not None:
            _survey(document, source)
            data = loader.construct_document(document)
    except PlanError:
        raise
    except yaml.MarkedYAMLError as exc:
        raise PlanError([_yaml_problem(exc)], source) from None
    except yaml.reader.ReaderError as exc:
        line, column = _position(text, exc.position)
        raise PlanError([Problem("", f"unreadable character #x{exc.character:04x}: {exc.reason}",
                                 line, column)], source) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        # e.g. a date such as 2024-13-45, which PyYAML turns into a ValueError while building
        raise PlanError(f"cannot read the plan: {exc}", source) from None
    finally:
        if loader is not None:
            loader.dispose()
    if document is None:
        raise PlanError("plan must be a mapping of fields (group, vms, ...), but it is empty",
                        source)
    if not isinstance(data, dict):
        what = "a list" if isinstance(data, list) else f"the value {data!r}"[:80]
        raise PlanError([Problem("", f"plan must be a mapping of fields (group, vms, ...), "
                                     f"not {what}", *_mark(document.start_mark))], source)
    return data, document


def _survey(document: yaml.Node, source: str) -> None:
    """Refuse duplicate keys (PyYAML would silently keep the last) and alias bombs."""
    problems: list[Problem] = []
    sizes: dict[int, int] = {}

    def walk(node: yaml.Node, loc: Loc, open_: set[int]) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise PlanError([Problem(format_location(loc), "an alias refers to its own anchor",
                                     *_mark(node.start_mark))], source)
        open_.add(id(node))
        size = 1
        if isinstance(node, yaml.ScalarNode):
            node.value = _paired(node.value)
        if isinstance(node, yaml.ScalarNode) and not storable(node.value):
            problems.append(Problem(format_location(loc), UNSTORABLE, *_mark(node.start_mark)))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                size += walk(key, loc, open_)  # first: it pairs the key's surrogates
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name in seen:
                    problems.append(Problem(format_location((*loc, name)),
                                            "duplicate key (only the last one would count)",
                                            *_mark(key.start_mark)))
                seen.add(name)
                where = (*loc, "?" if name is None else name)
                size += walk(value, where, open_)
        elif isinstance(node, yaml.SequenceNode):
            size += sum(walk(item, (*loc, i), open_) for i, item in enumerate(node.value))
        open_.discard(id(node))
        if size > MAX_NODES:
            raise PlanError(f"plan is too large (more than {MAX_NODES} values once aliases "
                            f"are expanded)", source)
        sizes[id(node)] = size
        return size

    walk(document, (), set())
    if problems:
        raise PlanError(problems, source)


def _paired(text: str) -> str:
    """PyYAML reads the JSON escape of a character beyond U+FFFF ("\\ud83d\\ude00", what
    json.dumps writes) as two lone surrogates; put such pairs back together into the one
    character. A lone surrogate stays (and is refused as unstorable)."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return text


UNSTORABLE = "must not contain NUL characters or unpaired surrogates (they cannot be stored)"


def storable(text: str) -> bool:
    """Text PostgreSQL can keep (plans and reports are stored): no NUL, valid UTF-8 (no lone
    surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _yaml_problem(exc: yaml.MarkedYAMLError) -> Problem:
    message = exc.problem or exc.context or "is not valid YAML"
    if exc.context and exc.problem:
        message = f"{exc.context}: {exc.problem}"
    mark = exc.problem_mark or exc.context_mark
    return Problem("", message, *(_mark(mark) if mark else (None, None)))


def _mark(mark: yaml.Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


# -- explaining pydantic's errors ------------------------------------------------------------

def explain(error: ValidationError, root: type[BaseModel],
            document: yaml.Node | None = None) -> list[Problem]:
    problems = []
    for item in error.errors():
        for loc, message in _expand(item, root):
            line, column = _locate(document, loc) if document is not None else (None, None)
            problems.append(Problem(format_location(loc), message, line, column))
    return problems


def _expand(item: dict[str, Any], root: type[BaseModel]) -> list[tuple[Loc, str]]:
    loc = tuple(item["loc"])
    if item["type"] == RULE_ERROR:
        return [((*loc, *where), message) for where, message in item["ctx"]["problems"]]
    if loc and loc[-1] == "[key]":
        # Pydantic's mark of a refused key of a mapping: the place is the entry itself.
        return [(loc[:-1], "this name " + _message(item, loc, root))]
    return [(loc, _message(item, loc, root))]


_SIMPLE = {
    "missing": "is required",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be text (quote it if YAML reads it as a number, date or true/false)",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "model_type": "must be a mapping of fields",
    "model_attributes_type": "must be a mapping of fields",
    "dict_type": "must be a mapping of fields",
    "too_short": "must list at least {min_length} item(s)",
    "too_long": "must list at most {max_length} item(s)",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "ip_v4_address": "is not a valid IPv4 address",
    "ip_v4_interface": "is not a valid IPv4 address (with its prefix length, e.g. 10.20.0.11/24)",
    "recursion_loop": "refers to itself",
}


def _message(item: dict[str, Any], loc: Loc, root: type[BaseModel]) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind == "extra_forbidden":
        return _unknown_field(loc, root)
    if kind in ("literal_error", "enum"):
        return "must be one of: " + ", ".join(re.findall(r"'([^']*)'", ctx.get("expected", "")))
    if kind == "string_pattern_mismatch":
        return "must be " + _PATTERN_WORDS.get(ctx.get("pattern"), f"like {ctx.get('pattern')}")
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind in _SIMPLE:
        return _SIMPLE[kind].format(**ctx)
    return item["msg"][:1].lower() + item["msg"][1:]


def _unknown_field(loc: Loc, root: type[BaseModel]) -> str:
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown field"
    allowed = list(model.model_fields)
    message = f"unknown field (allowed: {', '.join(allowed)})"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    return f"{message}; did you mean '{close[0]}'?" if close else message


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    """The model class a location inside `root` is an instance of, if it is one."""
    annotation: Any = root
    for step in loc:
        if isinstance(step, int):
            annotation = next(iter(typing.get_args(_strip_none(annotation))), None)
        else:
            model = _strip_none(annotation)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return None
            field = model.model_fields.get(step)
            annotation = field.annotation if field else None
    model = _strip_none(annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _strip_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _locate(document: yaml.Node, loc: Loc) -> tuple[int, int]:
    """Line and column of the deepest part of `loc` the YAML spells out: the key of a mapping
    entry, the item of a list, or the mapping where a missing field should have been."""
    node, mark = document, document.start_mark
    for step in loc:
        found = _child(node, step)
        if found is None:
            break
        mark, node = found
    return _mark(mark)


def _child(node: yaml.Node, step: str | int) -> tuple[yaml.Mark, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        matches = [(key.start_mark, value) for key, value in node.value
                   if isinstance(key, yaml.ScalarNode) and key.value == str(step)]
        return matches[-1] if matches else None
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int):
        if 0 <= step < len(node.value):
            return node.value[step].start_mark, node.value[step]
    return None
