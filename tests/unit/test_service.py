from __future__ import annotations

import numpy as np

from pdserve.kinds.image import top_k


def test_top_k_is_sorted_by_score_with_labels() -> None:
    probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)
    result = top_k(probs, 3, ["a", "b", "c", "d", "e"])
    assert [(p.class_id, p.label) for p in result] == [(1, "b"), (3, "d"), (0, "a")]
    assert [round(p.score, 2) for p in result] == [0.5, 0.3, 0.1]


def test_top_k_caps_at_the_number_of_classes_and_falls_back_to_ids() -> None:
    result = top_k(np.array([0.2, 0.8], np.float32), 5, None)
    assert [(p.class_id, p.label) for p in result] == [(1, "1"), (0, "0")]
