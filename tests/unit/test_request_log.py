"""Structured logs and the settings-generated command line, as pure logic."""

from __future__ import annotations

import argparse
import json
import logging

from pdserve.cli import build_parser
from pdserve.request_log import JsonFormatter, RequestRecord, TextFormatter, _current, _WithRequestId, request_id_from
from pdserve.settings import Settings


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pdserve.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_log_lines_written_during_a_request_carry_its_id() -> None:
    record = _record()
    token = _current.set(RequestRecord("abc", "GET", "/"))
    try:
        _WithRequestId().filter(record)
    finally:
        _current.reset(token)
    doc = json.loads(JsonFormatter().format(record))
    assert doc["request_id"] == "abc"
    assert doc["message"] == "hello there"
    assert doc["level"] == "info"


def test_structured_fields_become_json_keys_or_text_pairs() -> None:
    record = _record(event="worker_died", model="m", instance=0, pid=None)
    assert json.loads(JsonFormatter().format(record))["event"] == "worker_died"
    assert "pid" not in json.loads(JsonFormatter().format(record))  # unset fields are left out
    assert TextFormatter().format(record).endswith("hello there event=worker_died model=m instance=0")


def test_client_ids_are_kept_only_when_sane() -> None:
    assert request_id_from("abc-1.2:3") == "abc-1.2:3"
    assert request_id_from("a b") != "a b"
    assert len(request_id_from(None)) == 32


def test_every_setting_is_an_option_with_its_default_and_variable() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["serve"].format_help()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"PDSERVE_{name.upper()}" in text.replace("\n", "").replace(" ", "")
    args = build_parser().parse_args(["serve", "--port", "9", "--no-strict-readiness", "--log-format", "json"])
    assert (args.port, args.strict_readiness, args.log_format, args.host) == (9, False, "json", None)
