"""Command payloads and argument checking: what may enter the journal, and the messages for what may not."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.device.commands import MAX_DEPTH, Param, check_id, params_from_signature, parse_payload, validate_args
from edge_agent.errors import InvalidArguments, InvalidCommand

MAX = 65536


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(InvalidCommand) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- parse_payload


def test_payload_fields_are_all_optional():
    """An empty payload, `{}` and a full one all parse into (id, args, ttl)."""
    assert parse_payload(b"", max_size=MAX) == (None, {}, None)
    assert parse_payload(b"  \n", max_size=MAX) == (None, {}, None)
    assert parse_payload(b"{}", max_size=MAX) == (None, {}, None)
    assert parse_payload(b'{"id": "a-1", "args": {"x": [1, 2]}, "ttl": 5}', max_size=MAX) == ("a-1", {"x": [1, 2]}, 5.0)
    assert parse_payload(b'{"args": null}', max_size=MAX) == (None, {}, None)


def test_oversize_payload_is_refused_before_it_is_parsed():
    """A payload over the limit is refused by size, whatever it holds."""
    assert "over the limit of 100" in _reason(parse_payload, b"{" + b" " * 200 + b"}", max_size=100)


def test_invalid_utf8_and_json_are_refused():
    """Bytes that are not UTF-8, or not JSON, or JSON but not an object, are refused with the reason."""
    assert "not UTF-8" in _reason(parse_payload, b'{"id": "\xff"}', max_size=MAX)
    assert "not valid JSON" in _reason(parse_payload, b'{"id": ', max_size=MAX)
    assert "JSON object" in _reason(parse_payload, b"[1, 2]", max_size=MAX)
    assert "NaN is not allowed" in _reason(parse_payload, b'{"args": {"x": NaN}}', max_size=MAX)


def test_deep_nesting_is_refused_without_a_crash():
    """Arguments nested deeper than the limit, or deeper than the parser can go, are refused, not crashed on."""
    deep = {"args": {"x": json.loads("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))}}
    assert "nested deeper" in _reason(parse_payload, json.dumps(deep).encode(), max_size=MAX)
    abyss = b'{"args": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert "nested too deeply" in _reason(parse_payload, abyss, max_size=len(abyss))
    ok = {"args": {"x": json.loads("[" * (MAX_DEPTH - 2) + "]" * (MAX_DEPTH - 2))}}
    assert parse_payload(json.dumps(ok).encode(), max_size=MAX)[1] == ok["args"]


def test_unknown_fields_are_refused_but_the_id_is_kept_for_the_reply():
    """An unknown top-level field is refused; the exception carries the id so a `rejected` reply can be sent."""
    with pytest.raises(InvalidCommand) as info:
        parse_payload(b'{"id": "x7", "arg": {}}', max_size=MAX)
    assert "unknown field(s) arg" in str(info.value)
    assert info.value.command_id == "x7"  # type: ignore[attr-defined]


@pytest.mark.parametrize("payload", [
    b'{"args": [1]}', b'{"ttl": 0}', b'{"ttl": -3}', b'{"ttl": "5"}', b'{"ttl": true}', b'{"ttl": 1e12}',
    b'{"id": ""}', b'{"id": "has space"}', b'{"id": 5}', ('{"id": "' + "x" * 129 + '"}').encode(),
])
def test_bad_fields_are_refused(payload):
    """args must be an object; ttl a positive number of seconds; id 1-128 printable characters."""
    with pytest.raises(InvalidCommand):
        parse_payload(payload, max_size=MAX)


def test_check_id_accepts_printable_ascii_without_spaces():
    """Ids from other systems (uuids, paths, 128 characters) are accepted as they are."""
    for good in ("a", "0c7f-uuid", "porch/on/2024-06-01T21:00Z", "x" * 128):
        assert check_id(good) == good
    for bad in ("", " ", "a b", "é", "x" * 129, None, 7):
        with pytest.raises(InvalidCommand):
            check_id(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_cleanly(data: bytes):
    """No payload, however broken, raises anything but InvalidCommand."""
    try:
        parse_payload(data, max_size=200)
    except InvalidCommand:
        pass


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # Named, not a lambda: newer hypothesis reads a lambda's source to check that it recurses.
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=False) | st.text(max_size=10),
    _containers,
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_value_fits_or_is_refused_cleanly(value: Any):
    """Argument checking of any JSON value (huge numbers included) either passes or raises InvalidArguments."""
    params = (Param("a", int), Param("b", float), Param("c", list[int]), Param("d", str | None), Param("e", Literal[1, "x"]),
              Param("f", dict[str, float]), Param("g", bool))
    for p in params:
        try:
            validate_args("t", (p,), {p.name: value})
        except InvalidArguments:
            pass


# --------------------------------------------------------------------------- validate_args


def _task(count: int, ratio: float, name: str, mode: Literal["fast", "slow"] = "fast", tags: list[int] | None = None,
          maybe: int | None = None, meta: dict[str, float] | None = None, anything=None) -> None:
    """A signature with the types a user task has."""


PARAMS = params_from_signature(_task)


def test_params_are_read_from_the_signature():
    """Names, resolved type hints, and whether each may be left out come from the function."""
    by_name = {p.name: p for p in PARAMS}
    assert [p.name for p in PARAMS] == ["count", "ratio", "name", "mode", "tags", "maybe", "meta", "anything"]
    assert by_name["count"].required and not by_name["mode"].required
    assert by_name["mode"].default == "fast"
    assert by_name["ratio"].annotation is float


def test_valid_arguments_pass_and_ints_become_floats():
    """Correct arguments pass; an int where a float is wanted becomes a float; optionals may be None."""
    out = validate_args("t", PARAMS, {"count": 3, "ratio": 2, "name": "a", "mode": "slow", "tags": [1, 2], "maybe": None,
                                      "meta": {"k": 1}, "anything": {"x": [None]}})
    assert out == {"count": 3, "ratio": 2.0, "name": "a", "mode": "slow", "tags": [1, 2], "maybe": None,
                   "meta": {"k": 1}, "anything": {"x": [None]}}
    assert isinstance(out["ratio"], float)
    assert validate_args("t", PARAMS, {"count": 0, "ratio": 0.5, "name": ""}) == {"count": 0, "ratio": 0.5, "name": ""}


@pytest.mark.parametrize(("args", "words"), [
    ({"ratio": 1.0, "name": "a"}, "missing argument 'count' (int)"),
    ({"count": 1, "name": "a"}, "missing argument 'ratio' (float)"),
    ({"count": "3", "ratio": 1.0, "name": "a"}, "argument 'count' must be int, got '3'"),
    ({"count": True, "ratio": 1.0, "name": "a"}, "argument 'count' must be int, got True"),
    ({"count": 1.5, "ratio": 1.0, "name": "a"}, "argument 'count' must be int"),
    ({"count": 1, "ratio": "x", "name": "a"}, "argument 'ratio' must be float"),
    ({"count": 1, "ratio": 10**400, "name": "a"}, "argument 'ratio' must be float"),
    ({"count": 1, "ratio": float("inf"), "name": "a"}, "argument 'ratio' must be float"),
    ({"count": 1, "ratio": 1.0, "name": 5}, "argument 'name' must be str"),
    ({"count": 1, "ratio": 1.0, "name": "a", "mode": "medium"}, "argument 'mode' must be one of 'fast', 'slow'"),
    ({"count": 1, "ratio": 1.0, "name": "a", "tags": [1, "2"]}, "argument 'tags' must be list or null"),
    ({"count": 1, "ratio": 1.0, "name": "a", "tags": 1}, "argument 'tags'"),
    ({"count": 1, "ratio": 1.0, "name": "a", "maybe": "1"}, "argument 'maybe' must be int or null"),
    ({"count": 1, "ratio": 1.0, "name": "a", "meta": {"k": "v"}}, "argument 'meta'"),
    ({"count": 1, "ratio": 1.0, "name": "a", "cuont": 1}, "unknown argument 'cuont' (did you mean 'count'?)"),
    ({"count": 1, "ratio": 1.0, "name": "a", "zzz": 1}, "unknown argument 'zzz' (it takes count, ratio"),
])
def test_wrong_or_missing_arguments_name_the_argument(args, words):
    """Each refusal names the argument and what it should be."""
    with pytest.raises(InvalidArguments) as info:
        validate_args("t", PARAMS, args)
    assert str(info.value).startswith("t: ")
    assert words in str(info.value)


def test_literal_does_not_confuse_bools_ints_and_floats():
    """Literal[1] accepts 1 only: not True (True == 1 in Python) nor 1.0."""
    params = (Param("level", Literal[0, 1]),)
    assert validate_args("t", params, {"level": 1}) == {"level": 1}
    for wrong in (True, False, 1.0, "1"):
        with pytest.raises(InvalidArguments):
            validate_args("t", params, {"level": wrong})


def test_no_arguments_and_extra_ok():
    """An action without parameters says so; extra_ok passes unknown arguments through."""
    assert "it takes no arguments" in _reason(validate_args, "agent.ping", (), {"x": 1})
    assert validate_args("t", (Param("a", int),), {"a": 1, "b": 2}, extra_ok=True) == {"a": 1, "b": 2}
    assert "mapping" in _reason(validate_args, "t", (), [1])


def test_positional_only_parameters_cannot_be_tasks():
    """A positional-only parameter cannot be given by name, so it is refused at registration."""
    def f(a: int, /) -> None: ...

    with pytest.raises(TypeError, match="positional-only"):
        params_from_signature(f)
