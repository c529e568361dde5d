"""Admission at the door: bounds, the drain-rate estimate, deadlines that cannot be met."""

from __future__ import annotations

import math

import pytest

from pdserve.admission import DrainRate, ModelAdmission, ProcessLimits
from pdserve.errors import Overloaded


class Door:
    def __init__(self, max_pending: int = 10, queued: int = 0, serving: int = 2) -> None:
        self.queued = queued
        self.serving = serving
        self.counts: dict[str, int] = {}
        self.admission = ModelAdmission("m", max_pending, lambda: self.queued, lambda: self.serving, self._count)

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


def test_images_decoding_and_queued_count_against_the_bound() -> None:
    door = Door(max_pending=10, queued=6)
    door.admission.admit(3, math.inf)  # 6 queued + 3 decoding = 9
    assert door.admission.pending == 9
    with pytest.raises(Overloaded) as refused:
        door.admission.admit(2, math.inf)
    assert refused.value.status_code == 429
    assert refused.value.reason == "queue_full"
    door.admission.decoded(3)  # they moved on (into the queue, or out with an error)
    door.admission.admit(2, math.inf)
    assert door.counts == {"admitted": 2, "queue_full": 1}


def test_check_room_refuses_before_the_body_is_read_only_when_full() -> None:
    door = Door(max_pending=4, queued=3)
    door.admission.check_room()
    door.queued = 4
    with pytest.raises(Overloaded):
        door.admission.check_room()


def test_drain_rate_is_a_moving_average_per_instance_times_instances_serving() -> None:
    door = Door(serving=2)
    assert door.admission.drain_rate() is None  # nothing measured yet: no estimate, no refusal
    door.admission.rate.observe(8, 0.1)  # 80 images/s on one instance
    assert door.admission.drain_rate() == pytest.approx(160)
    door.serving = 1  # an instance died: the queue drains at half the speed
    assert door.admission.drain_rate() == pytest.approx(80)


def test_a_request_whose_estimated_wait_exceeds_its_deadline_is_refused_at_once() -> None:
    door = Door(max_pending=1000, queued=100, serving=1)
    door.admission.rate.observe(10, 0.1)  # 100 images/s: 100 ahead is about 1 s of waiting
    with pytest.raises(Overloaded, match="estimated wait 1000 ms") as refused:
        door.admission.admit(1, time_left_s=0.5)
    assert refused.value.reason == "deadline"
    assert refused.value.headers == {"Retry-After": "1"}
    door.admission.admit(1, time_left_s=2.0)


def test_retry_after_follows_the_observed_drain_rate() -> None:
    door = Door(max_pending=300, queued=300, serving=1)
    door.admission.rate.observe(10, 0.1)  # 100 images/s: 300 ahead take 3 s
    with pytest.raises(Overloaded) as refused:
        door.admission.admit(1, math.inf)
    assert refused.value.headers == {"Retry-After": "3"}


def test_drain_rate_smooths_outliers() -> None:
    rate = DrainRate()
    rate.observe(10, 0.1)
    rate.observe(10, 1.0)  # one slow batch moves the estimate a fifth of the way
    assert rate.per_instance == pytest.approx(100 + 0.2 * (10 - 100))


def test_process_limits_on_requests_and_body_bytes() -> None:
    limits = ProcessLimits(max_requests=2, max_body_bytes=100)
    limits.enter()
    limits.enter()
    with pytest.raises(Overloaded) as refused:
        limits.enter()
    assert refused.value.reason == "requests_in_flight"
    limits.leave()
    limits.enter()
    limits.reserve_body(80)
    with pytest.raises(Overloaded) as too_many:
        limits.reserve_body(30)
    assert too_many.value.reason == "body_bytes_in_flight"
    limits.release_body(80)
    limits.reserve_body(150)  # one body alone may always be read (its own limit is checked elsewhere)
