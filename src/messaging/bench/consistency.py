"""The consistency check of a run: every member's recorded history and final view through
:func:`messaging.client.checker.check` (the one place the bench touches the checker's API)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from messaging.bench.load import Member
from messaging.client.checker import check, view_of
from messaging.client.history import History


def histories_of(members: Sequence[Member]) -> dict[str, History]:
    return {f"{m.user.user_id}/{m.user.device_id}#{i}": m.history for i, m in enumerate(members)}


def run_checker(
    members: Sequence[Member],
    starts: Mapping[int, Mapping[str, int]] | None = None,
    *,
    extra: Mapping[str, History] | None = None,
) -> dict[str, Any]:
    """Check the members' histories and final views (what each delivered to its application,
    from the position it started at: ``starts[index]``, default 0 for every chat it knows).
    ``extra``: histories of clients that only sent. Returns the JSON-ready verdict."""
    began = time.monotonic()
    histories = histories_of(members)
    views = {}
    for index, (name, member) in enumerate(zip(histories, members, strict=True)):
        after = dict((starts or {}).get(index, {}))
        for chat in member.chats:
            after.setdefault(chat, 0)
        views[name] = view_of(member.history, after=after)
    histories.update(extra or {})
    report = check(histories, views)
    kinds = Counter(v.kind.value for v in report.violations)
    return {
        "checker": "messaging.client.checker.check",
        "ok": report.ok,
        "violations": len(report.violations),
        "by_kind": dict(kinds),
        "first": [str(v) for v in report.violations[:20]],
        "clients": report.clients,
        "chats": report.chats,
        "acked_sends": report.acked_sends,
        "observations": report.observations,
        "seconds": round(time.monotonic() - began, 2),
    }
