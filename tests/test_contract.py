"""edge_agent/contract.py: what travels on the broker. Topics built and read back, the reply and event
shapes (as the daemon writes them), the checks of what a device sends, and the one key=value parser."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from edge_agent.contract import (
    ANY,
    DEVICE_LEAVES,
    EVENT_FIELDS,
    FINAL,
    KINDS,
    MAX_DEPTH,
    Heard,
    Rejected,
    Topics,
    check_reply,
    check_state,
    clean_event,
    command_reply,
    command_topic,
    device_topic,
    discovery_object_id,
    discovery_topic,
    event_document,
    gpio_set_topic,
    gpio_topic,
    group_command_topic,
    heard,
    history_page,
    loads,
    parse_args_text,
    parse_pairs,
    rejection_document,
    reply_document,
)
from edge_agent.errors import InvalidCommand

PREFIXES = ["edge", "site/north/edge"]

# A topic level: no "/" (a level separator), no wildcards, not empty.
level = st.text(st.characters(blacklist_characters="/+#\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20)

# --------------------------------------------------------------------------- topics


@pytest.mark.parametrize("prefix", PREFIXES)
def test_what_a_device_publishes_reads_back_as_its_device_and_leaf(prefix: str) -> None:
    for device in ("porch", "dev-1", "ü", "group"):
        for leaf in sorted(DEVICE_LEAVES):
            assert heard(prefix, device_topic(prefix, device, leaf)) == Heard(device, leaf)
        assert heard(prefix, gpio_topic(prefix, device, "lamp")) == Heard(device, "gpio", "lamp")


@settings(max_examples=200, deadline=None)
@given(prefix=st.lists(level, min_size=1, max_size=3).map("/".join), device=level, leaf=st.sampled_from(sorted(DEVICE_LEAVES)),
       pin=level)
def test_topics_round_trip(prefix: str, device: str, leaf: str, pin: str) -> None:
    """Any prefix (one level or several) and any device id: built, then read, gives them back."""
    assert heard(prefix, device_topic(prefix, device, leaf)) == Heard(device, leaf)
    assert heard(prefix, gpio_topic(prefix, device, pin)) == Heard(device, "gpio", pin)
    topics = Topics(prefix, device, ("all",))
    assert topics.route(topics.command(pin)) == ("cmd", pin)
    assert topics.route(topics.gpio_set(pin)) == ("set", pin)
    assert topics.route(group_command_topic(prefix, "all", pin)) == ("group", pin)
    assert heard(prefix, topics.command(pin)) is None  # a command is not something a device says


@pytest.mark.parametrize("topic", [
    "other/porch/status",  # another prefix
    "edgeX/porch/status",  # a prefix is whole levels
    "edge",
    "edge/porch",
    "edge//status",  # an empty device id
    "edge/porch/cmd/agent.ping",
    "edge/porch/gpio/lamp/set",
    "edge/porch/status/extra",
    "edge/porch/unknown",
    "edge/porch/gpio",
])
def test_anything_else_is_not_heard(topic: str) -> None:
    assert heard("edge", topic) is None


def test_a_device_obeys_its_own_commands_its_groups_and_its_gpio() -> None:
    t = Topics("site/edge", "porch", ("garden", "all"), ha_status="homeassistant/status")
    assert (t.base, t.reply, t.status, t.state, t.events) == (
        "site/edge/porch", "site/edge/porch/reply", "site/edge/porch/status", "site/edge/porch/state", "site/edge/porch/events")
    assert t.gpio("lamp") == "site/edge/porch/gpio/lamp" and t.gpio_set("lamp") == "site/edge/porch/gpio/lamp/set"
    assert t.route("site/edge/porch/cmd/gpio.set") == ("cmd", "gpio.set")
    assert t.route("site/edge/group/garden/cmd/agent.ping") == ("group", "agent.ping")
    assert t.route("site/edge/porch/gpio/lamp/set") == ("set", "lamp")
    assert t.route("homeassistant/status") == ("ha_status", "")
    for other in ("site/edge/shed/cmd/gpio.set", "site/edge/group/kitchen/cmd/x", "site/edge/porch/gpio/lamp",
                  "edge/porch/cmd/x", "site/edge/porch/cmd", "site/edge/porch/reply"):
        assert t.route(other) is None, other
    # it subscribes to exactly what it obeys (and not to its own replies)
    assert t.subscriptions == ["site/edge/porch/cmd/+", "site/edge/porch/gpio/+/set", "site/edge/group/garden/cmd/+",
                               "site/edge/group/all/cmd/+", *t.schedules]  # schedules: tests/test_schedule_docs.py
    for topic in ("site/edge/porch/cmd/x", "site/edge/porch/gpio/lamp/set", "site/edge/group/all/cmd/y"):
        assert any(topic_matches_sub(sub, topic) for sub in t.subscriptions)
    assert not any(topic_matches_sub(sub, t.reply) for sub in t.subscriptions)


def test_operator_subscriptions_match_what_devices_publish() -> None:
    for leaf in sorted(DEVICE_LEAVES):
        assert topic_matches_sub(device_topic("edge", ANY, leaf), device_topic("edge", "porch", leaf))
    assert topic_matches_sub(gpio_topic("edge", ANY, ANY), gpio_topic("edge", "porch", "lamp"))
    assert topic_matches_sub(gpio_set_topic("edge", "porch", ANY), "edge/porch/gpio/lamp/set")
    assert command_topic("edge", "porch", "gpio.set") == "edge/porch/cmd/gpio.set"
    assert group_command_topic("edge", "all", "agent.ping") == "edge/group/all/cmd/agent.ping"


def test_discovery_topics() -> None:
    topic = discovery_topic("homeassistant", "switch", "edge-agent-porch", "gpio_lamp")
    assert topic == "homeassistant/switch/edge-agent-porch/gpio_lamp/config"
    assert discovery_object_id(topic) == "gpio_lamp" and discovery_object_id("edge/porch/gpio/lamp") is None


# --------------------------------------------------------------------------- replies


def _row(**fields: Any) -> Any:
    base = {"id": "c1", "action": "gpio.set", "state": "queued", "result": None, "error_type": None, "error_message": None,
            "attempts": 0, "finished": None, "created": 1000.12345}
    return SimpleNamespace(**{**base, **fields})


def test_a_reply_has_one_shape_in_one_order() -> None:
    doc = reply_document("c1", "gpio.set", "succeeded", result={"ok": True}, attempt=2, ts=5.5)
    assert list(doc) == ["id", "action", "status", "result", "error", "attempt", "ts"]
    assert doc == {"id": "c1", "action": "gpio.set", "status": "succeeded", "result": {"ok": True}, "error": None,
                   "attempt": 2, "ts": 5.5}
    assert list(reply_document("c1", "a", "failed", ts=1.0, duplicate=True))[-1] == "duplicate"


def test_a_command_reply_says_accepted_until_the_command_ends() -> None:
    assert command_reply(_row())["status"] == "accepted" and command_reply(_row(state="running"))["status"] == "accepted"
    assert command_reply(_row())["ts"] == 1000.123  # created, to the millisecond
    done = command_reply(_row(state="failed", error_type="timeout", error_message="slow", attempts=3, finished=1010.0))
    assert done == {"id": "c1", "action": "gpio.set", "status": "failed", "result": None,
                    "error": {"type": "timeout", "message": "slow"}, "attempt": 3, "ts": 1010.0}
    assert command_reply(_row(state="succeeded"), status="accepted")["status"] == "accepted"
    assert command_reply(_row(state="succeeded"), duplicate=True)["duplicate"] is True
    assert {"succeeded", "failed", "rejected", "expired", "revoked"} == FINAL


def test_the_daemons_journal_rows_reply_in_the_contracts_shape() -> None:
    """``Command.outcome()`` (what `edge-agent send` prints) and the reply on the broker are one document."""
    from edge_agent.device.commands import Command

    cmd = Command(seq=1, id="c1", action="gpio.set", args={}, source="mqtt", state="succeeded", attempts=1, created=1.0,
                  not_before=None, deadline=None, started=1.5, finished=2.0, next_attempt=None, result={"v": 1},
                  error_type=None, error_message=None, reply_to=None, correlation=None, parked=False)
    assert command_reply(cmd) == cmd.outcome()
    assert json.dumps(command_reply(cmd)) == json.dumps(cmd.outcome())  # the same key order too


def test_a_rejection_is_a_final_reply_without_an_attempt() -> None:
    doc = rejection_document(None, "nope", "unknown_action", "unknown action 'nope'", ts=3.0)
    assert doc == {"id": None, "action": "nope", "status": "rejected", "result": None,
                   "error": {"type": "unknown_action", "message": "unknown action 'nope'"}, "attempt": 0, "ts": 3.0}


def test_a_reply_from_a_device_is_checked_and_bounded() -> None:
    with pytest.raises(Rejected, match="JSON object"):
        check_reply(["not", "an", "object"])
    doc = check_reply({"id": "x" * 500, "status": "failed", "error": "boom", "result": {"big": "y" * 100_000}, "extra": 1})
    assert len(doc["id"]) == 200 and doc["error"] == {"type": "?", "message": "boom"}
    assert doc["result"] == {"big": "y" * 100_000} and doc["extra"] == 1  # kept whole: the message's size bounds it
    assert check_reply({"id": "a", "error": {"type": 7, "message": "\udc80"}})["error"] == {"type": "7", "message": "?"}


# --------------------------------------------------------------------------- events and history


def test_an_event_has_its_fields_then_its_kinds_extras() -> None:
    doc = event_document(7, "porch", "succeeded", "c1", "gpio.set", 5.25, {"attempt": 1, "runtime": 0.1, "result": None})
    assert list(doc) == [*EVENT_FIELDS, "attempt", "runtime", "result"]
    assert set(KINDS["succeeded"]) == {"attempt", "runtime", "result"}
    assert list(event_document(1, "d", "revoked", None, None, 1.0)) == list(EVENT_FIELDS)
    assert clean_event(doc) == {**doc, "result": None}


def test_a_history_page_has_one_shape() -> None:
    page = history_page("porch", [], next_seq=5, more=False, oldest=None, last=5)
    assert page == {"device": "porch", "events": [], "next": 5, "more": False, "oldest": None, "last": 5}


@pytest.mark.parametrize("bad", [{"seq": 0}, {"seq": "3"}, {"seq": True}, {"seq": 2**64}, {"ts": math.nan}, {"ts": -1},
                                 {"attempt": 1.5}, {"seq": None}])
def test_an_event_that_breaks_a_number_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(Rejected):
        clean_event({"seq": 1, "event": "started", **bad})


def test_a_state_is_checked_for_the_fields_the_fleet_reads() -> None:
    good = {"device": "porch", "groups": ["all"], "clock_synchronized": True, "ts": 1.0, "next_jobs": [{"job": "j", "at": "t"}]}
    assert check_state(good) == good
    for bad, why in (({"groups": "all"}, "groups"), ({"clock_synchronized": "yes"}, "clock_synchronized"),
                     ({"ts": 1e12}, "ts"), ({"next_jobs": [{"job": 1}]}, "next_jobs"), ({"last_error": "x"}, "last_error"),
                     ({"queue": -1}, "queue"), ({"uptime_s": math.inf}, "not finite")):
        with pytest.raises(Rejected, match=why):
            check_state({**good, **bad})
    with pytest.raises(Rejected):
        check_state(["a list"])


def test_a_message_is_read_as_json_bounded() -> None:
    assert loads(b'{"a": NaN, "b": 1e999, "c": [Infinity]}', 100) == {"a": None, "b": None, "c": [None]}
    with pytest.raises(Rejected, match="at most 10"):
        loads(b'{"a": "0123456789"}', 10)
    with pytest.raises(Rejected, match="not JSON"):
        loads(b"{nope", 100)
    with pytest.raises(Rejected, match="not JSON"):
        loads(b"[" * 100_000 + b"]" * 100_000, 1 << 20)


# --------------------------------------------------------------------------- key=value


def test_values_are_json_when_they_parse_and_text_otherwise() -> None:
    got = parse_pairs(["minutes=5", "on=true", "level=0.5", "zone=12a", 'tags=["a",1]', "obj={\"k\": null}", "empty=",
                       " name =porch", "eq=a=b"], None)
    assert got == {"minutes": 5, "on": True, "level": 0.5, "zone": "12a", "tags": ["a", 1], "obj": {"k": None}, "empty": "",
                   "name": "porch", "eq": "a=b"}


def test_pairs_lie_over_the_json_object() -> None:
    assert parse_pairs(["b=3"], '{"a": 1, "b": 2}') == {"a": 1, "b": 3}
    assert parse_pairs([], None) == {}


@pytest.mark.parametrize(("pairs", "args_json", "message"), [
    (["value"], None, "expected key=value, got 'value'"),
    (["=on"], None, "expected key=value, got '=on'"),
    ([" =on"], None, "expected key=value"),
    ([], "{x: 1}", "--args is not valid JSON"),
    ([], "[1]", "--args must be a JSON object, got list"),
    ([], '{"a":' * 5000 + "1" + "}" * 5000, "--args is nested too deeply"),
    (["a=" + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)], None, f"nested deeper than {MAX_DEPTH} levels"),
])
def test_bad_pairs_are_refused_with_a_reason(pairs: list[str], args_json: str | None, message: str) -> None:
    with pytest.raises(InvalidCommand, match=message.replace("[", r"\[")):
        parse_pairs(pairs, args_json)


def test_a_value_nested_beyond_the_parser_is_text_not_a_crash() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert parse_pairs([f"a={deep}"], None) == {"a": deep}


def test_one_line_of_arguments_is_a_json_object_or_words() -> None:
    """The monitor's form: the same rules as the command line."""
    assert parse_args_text("") == {} and parse_args_text("   ") == {}
    assert parse_args_text('  {"device": "lamp", "value": "on"} ') == {"device": "lamp", "value": "on"}
    assert parse_args_text("device=lamp value=on level=0.5") == {"device": "lamp", "value": "on", "level": 0.5}
    for bad, message in (("device", "expected key=value"), ("{nope", "args is not valid JSON"),
                         ("{} extra", "args is not valid JSON"),
                         ("a=" + "[" * 40 + "]" * 40, "nested deeper")):
        with pytest.raises(ValueError, match=message):
            parse_args_text(bad)


def test_no_module_but_the_contract_builds_or_splits_a_topic() -> None:
    """Topics are built and read in edge_agent/contract.py only: no ``x.split("/")`` and no f-string
    that puts a topic's levels together anywhere else in the package."""
    import ast
    from pathlib import Path

    import edge_agent

    leaves = ("/cmd/", "/group/", "/reply", "/events", "/status", "/state", "/gpio/", "/config", "/_fleet/")
    found = []
    for path in sorted(Path(edge_agent.__file__).parent.rglob("*.py")):
        if path.name == "contract.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("split", "rsplit")
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "/"):
                found.append(f"{path.name}:{node.lineno} splits on /")
            if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.Constant) and isinstance(v.value, str)
                                                       and any(leaf in v.value for leaf in leaves) for v in node.values):
                found.append(f"{path.name}:{node.lineno} builds a topic")
    assert found == []


# The reply text is made by a template on the hot path (twice per command from MQTT): it must be
# byte for byte what json.dumps makes of the reply document, for any row.
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
_times = st.floats(min_value=0, max_value=4e9, allow_nan=False) | st.integers(0, 4_000_000_000)


@settings(max_examples=300)
@given(state=st.sampled_from(["queued", "running", "succeeded", "failed", "expired", "revoked"]),
       command_id=st.text(min_size=1, max_size=12), action=st.text(min_size=1, max_size=12),
       attempts=st.integers(0, 10), created=_times, finished=st.none() | _times,
       result=_json_values | st.tuples(st.integers()) | st.sets(st.integers(), max_size=2),
       stored=st.booleans(), error=st.none() | st.tuples(st.text(max_size=8), st.none() | st.text(max_size=8)),
       duplicate=st.booleans(), status=st.none() | st.just("accepted"))
def test_the_reply_text_is_json_dumps_of_the_reply(state, command_id, action, attempts, created, finished, result,
                                                   stored, error, duplicate, status) -> None:
    from edge_agent.contract import command_reply_json
    from edge_agent.device.commands import Command
    from edge_agent.device.journal import encode_result

    text = encode_result(result) if stored else None  # a row that recorded its result carries the stored text
    value = json.loads(text) if text is not None else (result if not stored else None)
    cmd = Command(seq=1, id=command_id, action=action, args={}, source="mqtt", state=state, attempts=attempts,
                  created=created, not_before=None, deadline=None, started=None, finished=finished, next_attempt=None,
                  result=value, error_type=error[0] if error else None, error_message=error[1] if error else None,
                  reply_to=None, correlation=None, parked=False, result_json=text)
    expected = json.dumps(command_reply(cmd, duplicate=duplicate, status=status), separators=(",", ":"), default=str)
    assert command_reply_json(cmd, duplicate=duplicate, status=status) == expected
