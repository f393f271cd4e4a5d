"""The lab's traffic generator: the bench's population and open-loop engine, bounded in users,
chats, rate and time, with every client's history recorded; and the check over those
histories (as the scenario harness's ``Scenario.final_check``: a final explicit sync by every
client, then :func:`messaging.client.checker.check` over every history, every client's final
view and one REST read of every chat)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from messaging.bench.consistency import histories_of
from messaging.bench.hist import Latency
from messaging.bench.load import Fleet, Member, Recorder, Target, drain, open_loop
from messaging.bench.population import Population, User
from messaging.client import ClientOptions, RestClient
from messaging.client.checker import ChatView, ViewEntry, check, view_of
from messaging.domain.model import Message

MAX_USERS = 200
MAX_CHATS = 100
MAX_GROUP = 20
MAX_RATE = 200.0
MAX_SECONDS = 300.0

OPTIONS = ClientOptions(
    backoff_initial=0.05,
    backoff_max=1.0,
    start_timeout=30.0,
    connect_timeout=5.0,
    close_timeout=1.0,
    ack_interval=0.05,
    gap_delay=0.2,
    send_ack_timeout=5.0,
    sync_timeout=10.0,
)
"""The scenario harness's client options: fast reconnects and resends (faults last seconds)."""


class PlanError(ValueError):
    pass


@attrs.frozen(kw_only=True)
class Plan:
    """What to generate: ``users`` users (one device each) in ``chats`` chats of ``group_size``
    members (2: direct chats), sending ``rate`` messages per second in total for ``seconds``."""

    users: int = 6
    chats: int = 3
    group_size: int = 3
    rate: float = 10.0
    seconds: float = 60.0

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Plan:
        def number(name: str, low: float, high: float) -> float:
            value = body.get(name, getattr(cls(), name))
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PlanError(f"{name}: expected a number")
            if not low <= value <= high:
                raise PlanError(f"{name}: expected {low:g} to {high:g}, got {value}")
            return float(value)

        users = int(number("users", 2, MAX_USERS))
        plan = cls(
            users=users,
            chats=int(number("chats", 1, MAX_CHATS)),
            group_size=int(number("group_size", 2, min(MAX_GROUP, users))),
            rate=number("rate", 0.5, MAX_RATE),
            seconds=number("seconds", 1, MAX_SECONDS),
        )
        unknown = sorted(set(body) - set(attrs.fields_dict(cls)))
        if unknown:
            raise PlanError(f"unknown field(s): {', '.join(unknown)}")
        return plan


class WindowedRecorder(Recorder):
    """The bench's recorder, plus send -> deliver latency per sampling interval."""

    def __init__(self) -> None:
        super().__init__(text_size=32, tag=f"lab{int(time.time()) % 100000}")
        self.interval = Latency()

    def delivered(self, client_message_id: str) -> None:
        due = self.sent_at.get(client_message_id)
        if due is not None:
            self.interval.record(time.monotonic() - due)
        super().delivered(client_message_id)

    def take_interval(self) -> Latency:
        latency, self.interval = self.interval, Latency()
        return latency


class Traffic:
    """One generator run: set-up (logins, chats, clients on every app), the open loop, and the
    check. ``ws_urls[i]`` is where the clients of app ``i`` connect; users are spread over the
    apps round robin, so that every chat crosses processes."""

    def __init__(self, plan: Plan, base_url: str, ws_urls: Sequence[str]) -> None:
        self.plan = plan
        self.base_url = base_url
        self.ws_urls = list(ws_urls)
        self.recorder = WindowedRecorder()
        self.fleets = [Fleet(url + "/v1/ws", self.recorder, options=OPTIONS) for url in ws_urls]
        self.chat_members: dict[str, list[Member]] = {}
        self.phase = "preparing"
        self.error: str | None = None
        self.started_at = time.monotonic()
        self.loop_ends_at: float | None = None
        self._population: Population | None = None
        self._sessions: dict[str, User] = {}

    @property
    def members(self) -> list[Member]:
        return [m for fleet in self.fleets for m in fleet.members]

    async def prepare(self) -> None:
        plan = self.plan
        population = self._population = Population(self.base_url, concurrency=16)
        users, _ = await population.users(plan.users)
        chats_of: dict[str, list[str]] = {u.user_id: [] for u in users}
        groups: list[list[User]] = []
        for k in range(plan.chats):
            start = (k * plan.group_size) % len(users)
            groups.append([users[(start + j) % len(users)] for j in range(plan.group_size)])
        infos = await asyncio.gather(
            *(
                population.direct_chat(g[0], g[1])
                if plan.group_size == 2
                else population.group(g[0], g[1:], f"lab chat {k + 1}")
                for k, g in enumerate(groups)
            )
        )
        members_of: dict[str, list[User]] = {}
        for info, group in zip(infos, groups, strict=True):
            members_of[info.chat_id] = group
            for user in group:
                chats_of[user.user_id].append(info.chat_id)
        for user in users:
            self._sessions[user.user_id] = user
        by_app: list[list[User]] = [[] for _ in self.fleets]
        for user in users:
            if chats_of[user.user_id]:
                by_app[user.index % len(self.fleets)].append(user)
        await asyncio.gather(
            *(
                fleet.connect(mine, lambda u: chats_of[u.user_id], concurrency=16)
                for fleet, mine in zip(self.fleets, by_app, strict=True)
                if mine
            )
        )
        member_of = {m.user.user_id: m for m in self.members}
        self.chat_members = {
            chat: [member_of[u.user_id] for u in group] for chat, group in members_of.items()
        }

    def targets(self) -> list[Target]:
        return [
            Target(member, chat)
            for chat, members in self.chat_members.items()
            for member in members
        ]

    async def run(self) -> None:
        """Prepare, then send until the plan's time is up (or the task is cancelled)."""
        try:
            await self.prepare()
            self.phase = "running"
            self.loop_ends_at = time.monotonic() + self.plan.seconds
            await open_loop(
                self.recorder,
                self.targets(),
                rate=self.plan.rate,
                duration=self.plan.seconds,
                max_messages=int(self.plan.rate * self.plan.seconds) + 1,
                max_in_flight=2000,
            )
            self.phase = "finished"
        except asyncio.CancelledError:
            self.phase = "stopped"
            raise
        except Exception as exc:
            self.phase = "failed"
            self.error = f"{type(exc).__name__}: {exc}"

    async def check(self, seconds: float = 45.0) -> dict[str, Any]:
        """Wait for unanswered sends, sync every client explicitly, then the checker."""
        began = time.monotonic()
        unanswered = await drain(self.recorder, seconds)
        members = self.members
        syncs = [asyncio.ensure_future(m.client.sync(list(m.chats))) for m in members if m.chats]
        sync_problems: list[str] = []
        try:
            async with asyncio.timeout(seconds):
                results = await asyncio.gather(*syncs, return_exceptions=True)
            sync_problems = [repr(r) for r in results if isinstance(r, BaseException)]
        except TimeoutError:
            for future in syncs:
                future.cancel()
            sync_problems = ["the final sync did not complete in time"]
        for _ in range(200):
            if not any(r.delivered_at_ms is None for m in members for r in m.history.received):
                break
            await asyncio.sleep(0.05)
        histories = histories_of(members)
        views: dict[str, Mapping[str, ChatView | Iterable[ViewEntry]]] = {
            name: view_of(m.history, after={c: 0 for c in m.chats})
            for name, m in zip(histories, members, strict=True)
        }
        rest = await self.rest_views()
        views.update({f"rest:{chat}": {chat: entries} for chat, entries in rest.items()})
        report = check(histories, views)
        by_sequence = {(chat, e.sequence): e for chat, entries in rest.items() for e in entries}
        violations = []
        for v in report.violations[:50]:
            involved = []
            if v.chat_id is not None and v.sequence is not None:
                entry = by_sequence.get((v.chat_id, v.sequence))
                if entry is not None:
                    involved.append(
                        {
                            "chat": v.chat_id,
                            "sequence": entry.sequence,
                            "sender": entry.sender_id,
                            "client_message_id": entry.client_message_id,
                            "text": entry.text,
                        }
                    )
            violations.append(
                {
                    "kind": v.kind.value,
                    "message": v.message,
                    "chat": v.chat_id,
                    "sequence": v.sequence,
                    "clients": list(v.clients),
                    "involved": involved,
                }
            )
        return {
            "ok": report.ok and not sync_problems and not unanswered,
            "checker_ok": report.ok,
            "violations": violations,
            "violation_count": len(report.violations),
            "unanswered_sends": unanswered,
            "sync_problems": sync_problems[:10],
            "clients": report.clients,
            "chats": report.chats,
            "acked_sends": report.acked_sends,
            "observations": report.observations,
            "errors": dict(self.recorder.errors),
            "seconds": round(time.monotonic() - began, 2),
        }

    async def rest_views(self) -> dict[str, list[ViewEntry]]:
        """Every chat read over REST (by one of its members), page by page."""
        assert self._population is not None
        views: dict[str, list[ViewEntry]] = {}
        for chat, members in self.chat_members.items():
            rest: RestClient = self._population.rest(members[0].user.session)
            messages: list[Message] = []
            after = 0
            for _ in range(10_000):
                page = await rest.messages(chat, after=after, limit=100)
                messages.extend(page.messages)
                if not page.has_more or not page.messages:
                    break
                after = page.messages[-1].sequence
            views[chat] = [ViewEntry.of_message(m) for m in messages]
        return views

    async def close(self) -> None:
        for fleet in self.fleets:
            with contextlib.suppress(Exception):
                await fleet.close()
        if self._population is not None:
            await self._population.aclose()
