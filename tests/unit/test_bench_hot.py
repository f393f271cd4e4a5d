"""``messaging bench hot``: one hot chat, more sending connections than members (issue 16's
"one hot 10-member chat with 50 concurrent senders")."""

from __future__ import annotations

import argparse

import pytest

from messaging.bench.command import SUITE, configure, options_from
from messaging.bench.options import HotLayout
from messaging.bench.report import targets


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(argv)


def test_hot_takes_members_senders_and_a_list_of_in_flight_values() -> None:
    options = options_from(
        _parse("hot", "--members", "10", "--senders", "50", "--in-flight", "1,2,4")
    )
    assert options.members == (10,)
    assert options.senders == 50
    assert options.in_flight == (1, 2, 4)
    assert options_from(_parse("hot")).in_flight == (1,)
    assert "hot" not in SUITE  # run on its own, not in `suite`


@pytest.mark.parametrize(
    "argv",
    [
        ("hot", "--members", "10,100"),  # one hot chat, one size
        ("hot", "--members", "1"),
        ("hot", "--senders", "0"),
        ("hot", "--members", "2", "--senders", "100"),  # 50 devices per member
        ("hot", "--in-flight", "0"),
        ("hot", "--in-flight", "65"),
    ],
)
def test_hot_refuses_shapes_it_cannot_run(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        options_from(_parse(*argv))


def test_fifty_senders_in_ten_members_are_five_devices_each_every_one_sending() -> None:
    layout = HotLayout(members=10, senders=50)
    assert layout.devices == 5
    assert layout.connections == 50
    slots = [layout.slot(c) for c in range(layout.connections)]
    assert len(set(slots)) == 50
    # The senders are taken device by device across the members: every member sends from
    # each of its devices, and the first ten senders are ten different members.
    assert {m for m, _ in slots[:10]} == set(range(10))
    assert {d for m, d in slots if m == 3} == set(range(5))


def test_senders_not_a_multiple_of_the_members_round_up_the_devices() -> None:
    layout = HotLayout(members=10, senders=15)
    assert (layout.devices, layout.connections) == (2, 20)  # 5 devices receive only
    assert HotLayout(members=10, senders=4).devices == 1


def test_the_hot_target_is_met_only_at_600_with_a_clean_checker() -> None:
    def report(acked: float, ok: bool, members: int = 10, senders: int = 50) -> bool | None:
        chat = {
            "members": members,
            "senders": senders,
            "connections": senders,
            "devices_per_member": senders // members,
            "phase": {"acked_per_s": acked},
            "checker": {"ok": ok},
        }
        hot = {"scenario": "hot", "phases": [{"in_flight_per_sender": 1}], "sizes": [chat]}
        (row,) = [t for t in targets({"hot": hot}, {}) if "hot" in t["target"]]
        met: bool | None = row["met"]
        return met

    assert report(650, ok=True) is True
    assert report(590, ok=True) is False
    assert report(650, ok=False) is False
    assert report(650, ok=True, senders=10) is None  # not the target's shape
