"""Tests for edge_agent.logs: journald priorities, terminal format and secret redaction."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator

import pytest

from edge_agent import logs
from edge_agent.logs import SecretRedactor, add_secret, redact, setup_logging

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_journald_lines_carry_syslog_priorities():
    """Under journald each level maps to its syslog priority: debug 7, info 6, warning 4, error 3, critical 2."""
    out = io.StringIO()
    setup_logging("debug", stream=out, journald=True)
    log = logging.getLogger("edge_agent.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert _lines(out) == [
        "<7>edge_agent.test: d",
        "<6>edge_agent.test: i",
        "<4>edge_agent.test: w",
        "<3>edge_agent.test: e",
        "<2>edge_agent.test: c",
    ]


def test_journald_lines_have_no_timestamps():
    """journald stamps lines itself, so none of ours carries a date or time."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=True)
    logging.getLogger("edge_agent.test").info("started %d loops", 3)
    assert _lines(out) == ["<6>edge_agent.test: started 3 loops"]
    assert not TIMESTAMP.search(out.getvalue())


def test_level_filters_lower_records():
    """Records below the configured level are dropped."""
    out = io.StringIO()
    setup_logging("warning", stream=out, journald=True)
    log = logging.getLogger("edge_agent.test")
    log.info("quiet")
    log.warning("loud")
    assert _lines(out) == ["<4>edge_agent.test: loud"]


def test_terminal_lines_have_local_timestamp_level_and_logger():
    """In a terminal a line reads 'YYYY-MM-DD HH:MM:SS.mmm LEVEL logger: message'."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=False)
    logging.getLogger("edge_agent.mqtt").warning("link down")
    (line,) = _lines(out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} WARNING edge_agent\.mqtt: link down", line)
    assert not line.startswith("<")


def test_traceback_lines_keep_the_priority_prefix():
    """Every line of a logged traceback is prefixed, so journald files it all as an error."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=True)
    try:
        raise RuntimeError("pin 17 is busy")
    except RuntimeError:
        logging.getLogger("edge_agent.gpio").exception("cannot drive porch_light")
    lines = _lines(out)
    assert lines[0] == "<3>edge_agent.gpio: cannot drive porch_light"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>RuntimeError: pin 17 is busy"
    assert all(line.startswith("<3>") for line in lines)


def test_terminal_traceback_is_indented_under_its_event():
    """In a terminal, traceback lines are indented below the line that introduced them."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=False)
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("edge_agent.test").exception("failed")
    head, *rest = _lines(out)
    assert head.endswith("ERROR edge_agent.test: failed")
    assert rest and all(line.startswith("    ") for line in rest)


def test_key_value_secrets_are_redacted():
    """Values of password/token/secret-like keys are masked; a password_file path is not."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=True)
    log = logging.getLogger("edge_agent.test")
    log.info("connecting with password=hunter22 user=porch")
    log.info("settings %s", {"token": "abc.def", "password_file": "/etc/edge-agent/mqtt.secret"})
    log.info("Authorization: Bearer eyJhbGciOi")
    log.info("broker mqtts://porch:hunter22@broker.lan:8883")
    text = out.getvalue()
    assert "hunter22" not in text and "abc.def" not in text and "eyJhbGciOi" not in text
    assert "password=*** user=porch" in text
    assert "'token': '***'" in text
    assert "/etc/edge-agent/mqtt.secret" in text
    assert "Bearer ***" in text
    assert "mqtts://porch:***@broker.lan:8883" in text


def test_registered_secrets_are_redacted_everywhere_including_tracebacks():
    """A value registered with add_secret never appears, not even inside an exception message."""
    out = io.StringIO()
    setup_logging("info", stream=out, journald=True)
    add_secret("Tr0ub4dor&3-test")
    log = logging.getLogger("edge_agent.test")
    log.info("read %s from file", "Tr0ub4dor&3-test")
    try:
        raise ConnectionError("auth failed for secret Tr0ub4dor&3-test")
    except ConnectionError:
        log.exception("mqtt connect failed")
    assert "Tr0ub4dor" not in out.getvalue()
    assert "read *** from file" in out.getvalue()


def test_short_registered_secrets_are_ignored():
    """Registering a value shorter than 4 characters does not garble every log line."""
    add_secret("ab")
    add_secret(b"")
    add_secret(None)
    assert redact("a table about abbots") == "a table about abbots"


def test_secret_redactor_filter_works_on_other_handlers():
    """SecretRedactor masks the message of records passing through any handler."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(SecretRedactor())
    log = logging.getLogger("edge_agent.test.filter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("api_key=%s", "k-123456")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    assert out.getvalue() == "api_key=***\n"


def test_journald_is_detected_from_journal_stream(tmp_path, monkeypatch):
    """JOURNAL_STREAM matching the stream's device and inode switches to journald format."""
    with open(tmp_path / "stderr", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("info", stream=stream)
        logging.getLogger("edge_agent.test").info("hello")
    assert (tmp_path / "stderr").read_text() == "<6>edge_agent.test: hello\n"


def test_journal_stream_of_another_file_is_ignored(tmp_path, monkeypatch):
    """A JOURNAL_STREAM inherited by a process whose stderr was redirected elsewhere is ignored."""
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    with open(tmp_path / "stderr", "w") as stream:
        setup_logging("info", stream=stream)
        logging.getLogger("edge_agent.test").info("hello")
    assert TIMESTAMP.match((tmp_path / "stderr").read_text())
    assert logs._is_journal_stream(io.StringIO(), {"JOURNAL_STREAM": "1:1"}) is False


def test_setup_twice_replaces_the_handler():
    """Calling setup_logging again (e.g. on SIGHUP) does not duplicate lines."""
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", stream=first, journald=True)
    setup_logging("info", stream=second, journald=True)
    logging.getLogger("edge_agent.test").info("once")
    assert first.getvalue() == ""
    assert _lines(second) == ["<6>edge_agent.test: once"]


def test_unknown_level_is_rejected():
    """An unknown level name raises ValueError naming it."""
    with pytest.raises(ValueError, match="verbose"):
        setup_logging("verbose")
