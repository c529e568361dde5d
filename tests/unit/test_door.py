"""The front door's reading of inference routes, and the throttle on refusals' access lines."""

from __future__ import annotations

import pytest

from pdserve.api.door import inference_target, rest_params
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
        ("/predict", b"version=%D9%A3"),  # a digit to str.isdigit, not to the route
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


@pytest.mark.parametrize(
    ("query", "timeout", "expected"),
    [
        (b"", None, ({"top_k": 5, "score_threshold": None}, None)),
        (b"model=m&top_k=1&score_threshold=0.25", "150", ({"top_k": 1, "score_threshold": 0.25}, 150)),
        (b"top_k=2&top_k=1000&score_threshold=.5", None, ({"top_k": 1000, "score_threshold": 0.5}, None)),
        (b"score_threshold=1", None, ({"top_k": 5, "score_threshold": 1.0}, None)),
    ],
)
def test_plainly_valid_rest_parameters_are_read_as_the_route_reads_them(
    query: bytes, timeout: str | None, expected: object
) -> None:
    assert rest_params(query, timeout) == expected


@pytest.mark.parametrize(
    ("query", "timeout"),
    [
        (b"top_k=0", None),
        (b"top_k=1001", None),
        (b"top_k=x", None),
        (b"top_k=-1", None),
        (b"top_k=%D9%A3", None),  # an Arabic-Indic digit: Python's int() reads it, the route does not
        (b"score_threshold=1.5", None),
        (b"score_threshold=-0.1", None),
        (b"score_threshold=nan", None),
        (b"score_threshold=", None),
        (b"score_threshold=.", None),
        (b"", "0"),
        (b"", "soon"),
    ],
)
def test_anything_else_goes_to_the_route_whose_validation_answers_422(query: bytes, timeout: str | None) -> None:
    assert rest_params(query, timeout) is None
