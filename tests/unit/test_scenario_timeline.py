"""The scenario timeline (tests/scenarios/timeline.py): recovery times from recorded histories,
and a PNG drawn from them."""

from __future__ import annotations

from pathlib import Path

from messaging.client.history import History, ReceivedRecord
from tests.scenarios.timeline import FaultWindow, draw, recoveries


def _received(created: int, received: int, *, replay: bool = False) -> ReceivedRecord:
    return ReceivedRecord(
        chat_id="g",
        sequence=created,
        sender_id="u",
        sender_device="d",
        client_message_id=str(created),
        text="",
        created_at_ms=created,
        received_at_ms=received,
        replay=replay,
    )


def _history(*records: ReceivedRecord) -> History:
    history = History()
    history.received.extend(records)
    return history


def test_recovery_is_from_the_fault_end_to_the_last_delivery_of_what_was_persisted_before_it() -> (
    None
):
    fault = FaultWindow("cut", 1_000, 5_000)
    histories = [
        _history(_received(900, 950), _received(4_000, 7_500, replay=True)),
        _history(_received(4_900, 6_000), _received(5_100, 9_999)),  # after the end: not counted
    ]
    assert recoveries(histories, [fault], until_ms=20_000)[0].seconds == 2.5
    # What only the final explicit sync brought is not recovery by the mechanisms.
    assert recoveries(histories, [fault], until_ms=7_000)[0].seconds == 1.0
    assert recoveries([_history()], [fault], until_ms=7_000)[0].seconds == 0.0


def test_the_timeline_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "t" / "run.png"
    found = draw(
        path,
        "run",
        {"m0": _history(_received(1_000, 1_020), _received(2_000, 6_000, replay=True))},
        [FaultWindow("cut", 1_500, 4_000)],
        until_ms=10_000,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [(r.fault, r.seconds) for r in found] == [("cut", 2.0)]


def test_a_timeline_of_many_faults_numbers_them(tmp_path: Path) -> None:
    faults = [FaultWindow(f"cut {n}", 1_000 * n, 1_000 * n + 500) for n in range(1, 9)]
    history = _history(*(_received(100 * n, 100 * n + 30) for n in range(100)))
    found = draw(tmp_path / "many.png", "nemesis", {"m0": history}, faults, until_ms=20_000)
    assert len(found) == 8
    assert (tmp_path / "many.png").stat().st_size > 0
