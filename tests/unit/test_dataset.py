from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pdserve.pipeline.dataset import read_binary, read_folder, read_label_list, write_binary
from pdserve.pipeline.errors import PipelineError


def test_label_list_paths_are_relative_to_the_list(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "list.txt").write_text("images/a.jpg 3\n\nimages/a.jpg 7\n")
    samples = read_label_list(tmp_path / "list.txt")
    assert [(s.path, s.label) for s in samples] == [(tmp_path / "images" / "a.jpg", 3), (tmp_path / "images/a.jpg", 7)]


@pytest.mark.parametrize("line", ["images/a.jpg", "images/a.jpg cat", "images/a.jpg 1 2"])
def test_malformed_lines_name_file_and_line(tmp_path: Path, line: str) -> None:
    (tmp_path / "list.txt").write_text(f"images/a.jpg 1\n{line}\n")
    with pytest.raises(PipelineError, match=r"list.txt:2: expected '<image path> <class id>'"):
        read_label_list(tmp_path / "list.txt")


def test_missing_list_images_and_folder(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found"):
        read_label_list(tmp_path / "nope.txt")
    (tmp_path / "list.txt").write_text("gone.jpg 1\n")
    with pytest.raises(PipelineError, match=r"1 images of .* not found"):
        read_label_list(tmp_path / "list.txt")
    with pytest.raises(PipelineError, match=r"image folder .* not found"):
        read_folder(tmp_path / "none")
    with pytest.raises(PipelineError, match="no JPEG/PNG/WebP/BMP images"):
        read_folder(tmp_path)


def test_binary_layout_round_trips_and_matches_paddles_tool(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    labels = np.array([5, 9])
    path = tmp_path / "data.bin"
    write_binary(path, images, labels)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:8], np.int64)[0] == 2  # int64 count ...
    assert np.array_equal(np.frombuffer(raw[8 : 8 + images.nbytes], np.float32), images.ravel())  # ... images ...
    assert np.array_equal(np.frombuffer(raw[8 + images.nbytes :], np.int64), labels)  # ... then labels
    got_images, got_labels = read_binary(path, (3, 4, 4))
    assert np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)
    with pytest.raises(PipelineError, match="another --data-dim"):
        read_binary(path, (3, 5, 5))
