"""The front door's reading of inference routes, and the throttle on refusals' access lines."""

from __future__ import annotations

import pytest

from pdserve.api.door import inference_target
from pdserve.request_log import RefusalLines, request_id_from


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/predict", b"", (None, None, False)),
        ("/predict", b"model=m&top_k=1", ("m", None, False)),
        ("/predict", b"model=m&version=3", ("m", 3, False)),
        ("/models/m/predict", b"top_k=2", ("m", None, False)),
        ("/models/m/predict", b"version=2", ("m", 2, False)),
        ("/v2/models/m/infer", b"", ("m", None, True)),
        ("/v2/models/m/versions/4/infer", b"", ("m", 4, True)),
    ],
)
def test_inference_routes_name_their_model(path: str, query: bytes, expected: tuple[object, ...]) -> None:
    assert inference_target(path, query) == expected


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v2/models/m", b""),  # metadata, not inference
        ("/healthz", b""),
        ("/ocr", b""),
        ("/predict", b"version=x"),  # the route answers 422
        ("/predict", b"version=0"),
        ("/v2/models/m/versions/01/infer", b""),
        ("/models//predict", b""),
        ("/models/a/b/predict", b""),
        ("/v2/models//infer", b""),
    ],
)
def test_anything_else_goes_on_to_the_app(path: str, query: bytes) -> None:
    assert inference_target(path, query) is None


def test_refusal_lines_are_written_at_most_once_per_interval_and_count_the_rest() -> None:
    lines = RefusalLines(interval_s=1.0)
    assert lines.take(10.0) == 0
    assert [lines.take(10.0 + i / 10) for i in range(1, 10)] == [None] * 9
    assert lines.take(11.0) == 9
    assert lines.take(11.5) is None
    assert lines.take(12.5) == 1


def test_new_request_ids_are_distinct_32_hex_digit_tokens() -> None:
    ids = {request_id_from(None) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    "query",
    [b"model=a%20b&version=2", b"version=1&model=x&model=y+z", b"top_k=3", b"model=&version=", b"modelx=1"],
)
def test_the_query_is_read_as_parse_qs_reads_it(query: bytes) -> None:
    from urllib.parse import parse_qs

    from pdserve.api.door import _query_value

    args = parse_qs(query.decode(), keep_blank_values=True)
    for key in ("model", "version"):
        assert _query_value(query, key.encode()) == (args[key][-1] if key in args else None)
