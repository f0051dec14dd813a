"""Fuzzing the plan parser (shared.plan.load_plan / load_plan_file) with hypothesis.

Inputs: arbitrary YAML/JSON-like structures, arbitrary text and bytes, and mutations of the two
real plans (examples/shop.yaml, tests/fixtures/shop-local.yaml): a value replaced, a field
dropped or added, a list item repeated, the text cut or spliced. Properties: the parser answers
with a Plan or a PlanError, never any other exception; every problem names where it is (a field
path that exists in the document, or the parent of a missing field; a line for text that is not
YAML at all); and an accepted plan survives its round trip through JSON unchanged.

Bounded and repeatable for CI (derandomized, FERRY_FUZZ_EXAMPLES scales the counts); run with
FERRY_FUZZ_RANDOM=1 to explore new inputs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.plan import Plan, PlanError, load_plan, load_plan_file

REPO = Path(__file__).resolve().parents[2]
PLANS = {"shop": REPO / "examples" / "shop.yaml",
         "shop-local": REPO / "tests" / "fixtures" / "shop-local.yaml"}
SCALE = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "40")) / 40
FUZZ = settings(max_examples=int(300 * SCALE), deadline=None, database=None,
                derandomize=os.environ.get("FERRY_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck))
# Inputs each test must try, at FERRY_FUZZ_EXAMPLES=40 (CI): 300 + 300 + 100 + 2 x 400 +
# 2 x 300 = 2,100, the figure of docs/reliability.md. Each test counts what it tried and
# asserts its share, so a setting that quietly fuzzes less fails.
STRUCTURES, TEXTS, FILES, MUTATIONS, SPLICES = 300, 300, 100, 400, 300


def fuzzed(run, examples: int) -> None:
    """Run hypothesis test `run` (which calls `run.tried()` per input) and check it tried at
    least `examples` inputs (scaled by FERRY_FUZZ_EXAMPLES)."""
    tried = []
    run(tried)
    wanted = int(examples * SCALE)
    assert len(tried) >= wanted, f"fuzzed {len(tried)} inputs, {wanted} wanted"
# Problems about the document as a whole: there is no field to name.
WHOLE_DOCUMENT = re.compile(r"^plan must be a mapping|^plan is too large")


def parse(text: str, data=None) -> Plan | None:
    """load_plan, checking the properties; the Plan if it was accepted."""
    try:
        plan = load_plan(text, source="fuzz")
    except PlanError as exc:
        assert exc.problems, "a PlanError with no problem"
        for problem in exc.problems:
            check_location(problem, data)
        return None
    again = load_plan(json.dumps(plan.model_dump(mode="json")))
    assert again == plan
    return plan


def check_location(problem, data) -> None:
    assert isinstance(problem.message, str) and problem.message
    if not problem.location:
        assert problem.line is not None or WHOLE_DOCUMENT.match(problem.message), problem
        return
    if isinstance(data, dict):
        assert resolves(data, problem.location), (problem, data)


# A step: .name (or name first), [index], or ["quoted key"] for a key that is not a plain word.
STEP = re.compile(r'\.?([A-Za-z0-9_-]+)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')


def resolves(data, location: str) -> bool:
    """Whether a location names a place in `data`: every step exists, except perhaps the last
    (a missing field), whose parent must."""
    steps = []
    at = 0
    while at < len(location):
        found = STEP.match(location, at)
        assert found, f"location {location!r} does not parse at {at}"
        name, index, quoted = found.groups()
        steps.append((json.loads(quoted) if quoted else name, int(index) if index else None))
        at = found.end()
    node = data
    for position, (name, index) in enumerate(steps):
        last = position == len(steps) - 1
        if index is not None:
            if not isinstance(node, list) or index >= len(node):
                return False
            node = node[index]
        else:
            if not isinstance(node, dict):
                return False
            keys = {str(k): k for k in node}
            if name not in keys:
                return last
            node = node[keys[name]]
    return True


# -- arbitrary structures --------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["/", "/data", "swap", "app", "db-master", "db-replica", "10.20.0.11/24",
                     "xfs", "ssh", "local", "mariadb", "2024-13-45", "0x", "1e400", "-1"]),
)
keys = st.one_of(st.text(max_size=12), st.sampled_from(
    ["group", "vms", "name", "cpus", "memory_mb", "disks", "filesystems", "size_gb", "mount",
     "network", "address", "hostname", "role", "replica_of", "source", "kind", "root",
     "archives", "path", "databases", "engine", "cutover", "checks", "description"]))
structures = st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6)), max_leaves=40)


def test_any_structure_gets_a_plan_or_located_problems():
    @settings(FUZZ, max_examples=int(STRUCTURES * SCALE))
    @given(document=structures, as_json=st.booleans())
    def run(tried, document, as_json):
        tried.append(1)
        text = json.dumps(document) if as_json else yaml.safe_dump(document)
        parse(text, document)

    fuzzed(run, STRUCTURES)


def test_any_text_gets_a_plan_or_located_problems():
    @settings(FUZZ, max_examples=int(TEXTS * SCALE))
    @given(text=st.text(max_size=300))
    def run(tried, text):
        tried.append(1)
        parse(text)

    fuzzed(run, TEXTS)


def test_any_file_gets_a_plan_or_located_problems(tmp_path_factory):
    @settings(FUZZ, max_examples=int(FILES * SCALE))
    @given(raw=st.binary(max_size=200))
    def run(tried, raw):
        tried.append(1)
        path = tmp_path_factory.mktemp("plan") / "plan.yaml"
        path.write_bytes(raw)
        try:
            load_plan_file(path)
        except PlanError as exc:
            for problem in exc.problems:
                check_location(problem, None)

    fuzzed(run, FILES)


# -- mutations of the real plans --------------------------------------------------------------

def valid(name: str) -> dict:
    return yaml.safe_load(PLANS[name].read_text())


def places(node, path=()):
    """Every (path, value) in a document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from places(value, (*path, index))


def at(document, path):
    for step in path:
        document = document[step]
    return document


@st.composite
def mutated(draw, name: str):
    document = valid(name)
    for _ in range(draw(st.integers(1, 3))):
        spots = list(places(document))
        path, value = draw(st.sampled_from(spots))
        kind = draw(st.sampled_from(["replace", "drop", "add", "repeat", "retype"]))
        if not path:
            continue
        parent = at(document, path[:-1])
        if kind == "replace":
            parent[path[-1]] = draw(structures)
        elif kind == "drop":
            del parent[path[-1]]
        elif kind == "add" and isinstance(value, dict):
            value[draw(keys)] = draw(structures)
        elif kind == "repeat" and isinstance(value, list) and value:
            value.append(json.loads(json.dumps(draw(st.sampled_from(value)))))
        elif kind == "retype":
            parent[path[-1]] = draw(st.sampled_from(
                [str(value), [value], {"value": value}, None, True, 0, -1, 1e308, ""]))
    return document


@pytest.mark.parametrize("name", PLANS)
def test_the_real_plans_are_valid(name):
    assert parse(PLANS[name].read_text(), valid(name)) is not None


@pytest.mark.parametrize("name", PLANS)
def test_mutated_plans_get_a_plan_or_problems_at_existing_fields(name):
    @settings(FUZZ, max_examples=int(MUTATIONS * SCALE))
    @given(document=mutated(name), as_json=st.booleans())
    def run(tried, document, as_json):
        tried.append(1)
        text = json.dumps(document) if as_json else yaml.safe_dump(document, sort_keys=False)
        parse(text, document)

    fuzzed(run, MUTATIONS)


@pytest.mark.parametrize("name", PLANS)
def test_spliced_plan_text_gets_a_plan_or_located_problems(name):
    """The YAML text itself cut, spliced and repeated, comments and all."""
    text = PLANS[name].read_text()

    @settings(FUZZ, max_examples=int(SPLICES * SCALE))
    @given(cut=st.integers(0, len(text)), length=st.integers(0, 60),
           insert=st.one_of(st.text(max_size=20), st.sampled_from(
               ["\n", ": ", "- ", "  ", "\t", "{", "]", "&a ", "*a", "!!binary ", "? ", "|\n",
                "'", '"', "#", "\x00", "\ud800", "2024-13-45"])))
    def run(tried, cut, length, insert):
        tried.append(1)
        parse(text[:cut] + insert + text[cut + length:])

    fuzzed(run, SPLICES)
