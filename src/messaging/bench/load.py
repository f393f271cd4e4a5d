"""The load engine: connected members (one :class:`~messaging.client.ChatClient` each, every
one consuming what it receives), open- and closed-loop senders, and the recorder.

Latency is measured in this process with ``time.monotonic()``: send -> ack from the moment a
send was due (open loop: its scheduled time, so a backlog counts against the system; closed
loop: when the worker issued it) until the client library resolved it; send -> deliver from
the same moment until a receiving member's application took the message from its client.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from messaging.bench.hist import Latency
from messaging.bench.population import User
from messaging.client import (
    ChatClient,
    ClientError,
    ClientOptions,
    History,
    SendExpired,
    SendRejected,
    SendResult,
)
from messaging.client.errors import AuthRejected, ClientClosed
from messaging.client.history import now_ms

Say = Callable[[str], None]


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, SendRejected):
        return exc.code
    if isinstance(exc, SendExpired):
        return "send_expired"
    if isinstance(exc, AuthRejected):
        return f"auth_rejected_{exc.close_code}"
    if isinstance(exc, ClientClosed):
        return "client_closed"
    return type(exc).__name__


@attrs.define(eq=False)
class Member:
    """One connected device of one user, with its consumer task."""

    user: User
    client: ChatClient
    chats: tuple[str, ...]
    consumed: dict[str, int] = attrs.field(factory=dict)
    deliveries: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def history(self) -> History:
        return self.client.history


@attrs.define(eq=False)
class _Countdown:
    remaining: int
    event: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.frozen
class Target:
    """Where a sender sends: a member and one of its chats."""

    member: Member
    chat_id: str


class Recorder:
    """Counters, HDR histograms and the per-second timeline of one measured load phase."""

    def __init__(self, *, text_size: int = 64, tag: str = "b") -> None:
        self.ack = Latency()
        self.deliver = Latency()
        self._window_ack = Latency()
        self.sent_at: dict[str, float] = {}
        self.submitted = 0
        self.acked = 0
        self.duplicate_acks = 0
        self.deliveries = 0
        self.in_flight = 0
        self.errors: Counter[str] = Counter()
        self.max_sequence: dict[str, int] = {}
        self.timeline: list[dict[str, Any]] = []
        self.window_start = time.monotonic()
        self.window_end: float | None = None
        self.window_start_ms = now_ms()
        self.window_end_ms: int | None = None
        """The window in wall-clock milliseconds, to compare with the histories' times."""
        self._text_pad = "x" * max(0, text_size - 24)
        self._ids = itertools.count(1)
        self._tag = tag
        self._last = (time.monotonic(), 0, 0, 0, 0)
        self._fanout = 0
        self._fanout_waiters: dict[str, _Countdown] = {}
        self.idle = asyncio.Event()
        """Set while no send is unanswered."""
        self.idle.set()

    # ------------------------------------------------------------ phases

    def start_window(self) -> None:
        """Start measuring (after a warm-up): histograms and counters restart from zero."""
        self.ack = Latency()
        self.deliver = Latency()
        self._window_ack = Latency()
        self.submitted = self.acked = self.duplicate_acks = self.deliveries = 0
        self.errors.clear()
        self.timeline.clear()
        self.window_start = time.monotonic()
        self.window_end = None
        self.window_start_ms = now_ms()
        self.window_end_ms = None
        self._last = (self.window_start, 0, 0, 0, 0)

    def end_window(self) -> None:
        if self.window_end is None:
            self.window_end = time.monotonic()
            self.window_end_ms = now_ms()

    @property
    def window_seconds(self) -> float:
        end = self.window_end if self.window_end is not None else time.monotonic()
        return max(end - self.window_start, 1e-6)

    def _in_window(self, at: float) -> bool:
        return at >= self.window_start and (self.window_end is None or at <= self.window_end)

    # ------------------------------------------------------------ sends

    def expect_fanout(self, deliveries: int) -> None:
        """From now on, track each send until ``deliveries`` members took it (0: do not)."""
        self._fanout = deliveries

    async def wait_fanout(self, client_message_id: str, seconds: float) -> bool:
        waiter = self._fanout_waiters.get(client_message_id)
        if waiter is None:
            return True
        try:
            async with asyncio.timeout(seconds):
                await waiter.event.wait()
            return True
        except TimeoutError:
            self.errors["fanout_timeout"] += 1
            self._fanout_waiters.pop(client_message_id, None)
            return False

    def submit(self, target: Target, due: float) -> tuple[str, asyncio.Future[SendResult]]:
        cmid = f"{self._tag}-{next(self._ids):x}"
        text = f"{cmid} {self._text_pad}"
        self.sent_at[cmid] = due
        self.idle.clear()
        if self._fanout:
            self._fanout_waiters[cmid] = _Countdown(self._fanout)
        self.in_flight += 1
        try:
            future = target.member.client.submit(target.chat_id, text, client_message_id=cmid)
        except ClientError as exc:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()
            self.errors[_error_kind(exc)] += 1
            raise
        if self._in_window(due):
            self.submitted += 1
        future.add_done_callback(lambda f: self._done(f, due))
        return cmid, future

    def _done(self, future: asyncio.Future[SendResult], due: float) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self.idle.set()
        now = time.monotonic()
        if future.cancelled():
            self.errors["cancelled"] += 1
            return
        exc = future.exception()
        if exc is not None:
            self.errors[_error_kind(exc)] += 1
            return
        result = future.result()
        if result.sequence > self.max_sequence.get(result.chat_id, 0):
            self.max_sequence[result.chat_id] = result.sequence
        if not self._in_window(now):
            return
        self.acked += 1
        self.duplicate_acks += result.duplicate
        self.ack.record(now - due)
        self._window_ack.record(now - due)

    # ------------------------------------------------------------ deliveries

    def delivered(self, client_message_id: str) -> None:
        now = time.monotonic()
        waiter = self._fanout_waiters.get(client_message_id)
        if waiter is not None:
            waiter.remaining -= 1
            if waiter.remaining <= 0:
                waiter.event.set()
                del self._fanout_waiters[client_message_id]
        if not self._in_window(now):
            return
        self.deliveries += 1
        due = self.sent_at.get(client_message_id)
        if due is not None:
            self.deliver.record(now - due)

    # ------------------------------------------------------------ reporting

    def tick(self, extra: Mapping[str, Any]) -> dict[str, Any]:
        """Close one timeline interval (about a second); returns its entry."""
        now = time.monotonic()
        at, submitted, acked, deliveries, errors = self._last
        elapsed = max(now - at, 1e-6)
        total_errors = sum(self.errors.values())
        entry: dict[str, Any] = {
            "t": round(now - self.window_start, 2),
            "submitted_per_s": round((self.submitted - submitted) / elapsed, 1),
            "acked_per_s": round((self.acked - acked) / elapsed, 1),
            "deliveries_per_s": round((self.deliveries - deliveries) / elapsed, 1),
            "errors": total_errors - errors,
            "in_flight": self.in_flight,
            "ack_p50_ms": round(self._window_ack.percentile_ms(50), 2),
            "ack_p99_ms": round(self._window_ack.percentile_ms(99), 2),
            **extra,
        }
        self._window_ack = Latency()
        self._last = (now, self.submitted, self.acked, self.deliveries, total_errors)
        self.timeline.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        seconds = self.window_seconds
        return {
            "window_seconds": round(seconds, 2),
            "submitted": self.submitted,
            "acked": self.acked,
            "duplicate_acks": self.duplicate_acks,
            "deliveries": self.deliveries,
            "acked_per_s": round(self.acked / seconds, 1),
            "deliveries_per_s": round(self.deliveries / seconds, 1),
            "send_to_ack_ms": self.ack.summary(),
            "send_to_deliver_ms": self.deliver.summary(),
            "errors": dict(self.errors),
            "unfinished_sends": self.in_flight,
        }


def progress_line(label: str, entry: Mapping[str, Any]) -> str:
    procs = entry.get("processes", {})
    parts = [
        f"[{label} {entry['t']:6.1f}s]",
        f"acked {entry['acked_per_s']:7.0f}/s",
        f"deliv {entry['deliveries_per_s']:8.0f}/s",
        f"ack p50/p99 {entry['ack_p50_ms']:6.1f}/{entry['ack_p99_ms']:7.1f} ms",
        f"inflight {entry['in_flight']:5d}",
        f"err {entry['errors']:3d}",
    ]
    for name, sample in procs.items():
        parts.append(f"{name} {sample['cpu_pct']:3.0f}% {sample['rss_mb']:5.0f}MB")
    return " ".join(parts)


class Fleet:
    """Connected members: start, consume, close, and their client statistics."""

    def __init__(
        self,
        ws_url: str | Sequence[str],
        recorder: Recorder,
        *,
        options: ClientOptions | None = None,
    ) -> None:
        # Several apps: the n-th client connects to the (n mod apps)-th, so that sends and
        # sockets are spread over every process (as a load balancer would).
        self.ws_urls = (ws_url,) if isinstance(ws_url, str) else tuple(ws_url)
        if not self.ws_urls:
            raise ValueError("no WebSocket URL")
        self.recorder = recorder
        self.options = options or ClientOptions(discover_on_reconnect=False)
        self.members: list[Member] = []

    async def connect(
        self,
        users: Sequence[User],
        chats_of: Callable[[User], Iterable[str]],
        *,
        concurrency: int = 64,
        positions: Callable[[User], Mapping[str, int]] | None = None,
        say: Say | None = None,
    ) -> list[Member]:
        """Start one client per user (``concurrency`` handshakes at a time); each knows its
        chats from position ``positions(user)`` (default 0) and consumes from the start."""
        limit = asyncio.Semaphore(concurrency)
        began = time.monotonic()
        connected = 0
        last_note = began

        async def one(index: int, user: User) -> Member:
            nonlocal connected, last_note
            chats = tuple(chats_of(user))
            start_at = dict(positions(user)) if positions else {c: 0 for c in chats}
            client = ChatClient(
                self.ws_urls[(len(self.members) + index) % len(self.ws_urls)],
                user.token,
                user.device_id,
                options=self.options,
                positions=start_at,
                history=History(),
            )
            member = Member(user=user, client=client, chats=chats, consumed=dict(start_at))
            async with limit:
                await client.start()
            member.task = asyncio.create_task(self._consume(member))
            connected += 1
            now = time.monotonic()
            if say is not None and now - last_note >= 1.0:
                last_note = now
                say(f"connected {connected}/{len(users)} clients")
            return member

        members = await asyncio.gather(*(one(i, user) for i, user in enumerate(users)))
        self.members.extend(members)
        return list(members)

    async def _consume(self, member: Member) -> None:
        recorder = self.recorder
        try:
            async for message in member.client.messages():
                member.deliveries += 1
                if message.sequence > member.consumed.get(message.chat_id, 0):
                    member.consumed[message.chat_id] = message.sequence
                recorder.delivered(message.client_message_id)
        except ClientError as exc:
            recorder.errors[f"consumer_{_error_kind(exc)}"] += 1

    async def wait_delivered(self, expected: Mapping[str, int], seconds: float) -> list[str]:
        """Wait until every member consumed each of its chats up to ``expected[chat]``; returns
        what is still missing after ``seconds`` (empty when complete)."""
        deadline = time.monotonic() + seconds
        while True:
            missing = [
                f"{m.user.user_id}/{m.user.device_id} {chat}: {m.consumed.get(chat, 0)} < {head}"
                for m in self.members
                for chat in m.chats
                if (head := expected.get(chat, 0)) > m.consumed.get(chat, 0)
            ]
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.1)

    async def close(self, concurrency: int = 256) -> None:
        limit = asyncio.Semaphore(concurrency)

        async def one(member: Member) -> None:
            async with limit:
                await member.client.close()
            if member.task is not None:
                try:
                    async with asyncio.timeout(5):
                        await member.task
                except TimeoutError:
                    member.task.cancel()

        await asyncio.gather(*(one(m) for m in self.members))

    def client_stats(self) -> dict[str, Any]:
        totals: Counter[str] = Counter()
        close_codes: Counter[str] = Counter()
        for member in self.members:
            stats = member.client.stats
            for name in (
                "connects",
                "reconnects",
                "connect_failures",
                "slow_consumer_disconnects",
                "resends",
                "gaps_detected",
                "gap_syncs",
                "resyncs",
                "duplicates",
                "skipped",
                "bad_frames",
            ):
                totals[name] += int(getattr(stats, name))
            for code, count in stats.close_codes.items():
                close_codes[str(code)] += count
        return {**dict(totals), "close_codes": dict(close_codes), "clients": len(self.members)}


def client_hops(members: Sequence[Member], start_ms: int, end_ms: int | None) -> dict[str, Any]:
    """The last hops, from the members' recorded histories (wall-clock milliseconds of one
    machine, so 1 ms resolution), for the messages created in ``[start_ms, end_ms]``: from the
    message's ``created_at`` to its live frame reaching a client, and from there to the
    application taking it (time held for order plus time queued); replayed messages apart."""
    end = end_ms if end_ms is not None else now_ms()
    to_socket, to_app, replayed = Latency(), Latency(), Latency()
    for member in members:
        for record in member.history.received:
            if not start_ms <= record.created_at_ms <= end:
                continue
            if record.replay:
                replayed.record(max(0, record.received_at_ms - record.created_at_ms) / 1000)
                continue
            to_socket.record(max(0, record.received_at_ms - record.created_at_ms) / 1000)
            if record.delivered_at_ms is not None:
                to_app.record(max(0, record.delivered_at_ms - record.received_at_ms) / 1000)
    return {
        "created -> live frame received by the client": to_socket.summary(),
        "live frame received -> taken by the application": to_app.summary(),
        "created -> replayed frame received (sync)": replayed.summary(),
    }


async def closed_loop(
    recorder: Recorder,
    targets: Sequence[Target],
    *,
    concurrency: int,
    duration: float,
    max_messages: int,
    warmup: float = 0.0,
    fanout_timeout: float = 30.0,
) -> None:
    """``concurrency`` workers, each sending its next message when the previous was acked
    (and, after :meth:`Recorder.expect_fanout`, delivered to every member)."""
    began = time.monotonic()
    stop_at = began + warmup + duration
    issued = itertools.count()
    if warmup <= 0:
        recorder.start_window()

    async def worker(k: int) -> None:
        target = targets[k % len(targets)]
        while time.monotonic() < stop_at and next(issued) < max_messages:
            try:
                cmid, future = recorder.submit(target, time.monotonic())
                await future
            except ClientError:
                await asyncio.sleep(0.01)
                continue
            await recorder.wait_fanout(cmid, fanout_timeout)

    async def window() -> None:
        if warmup > 0:
            await asyncio.sleep(warmup)
            recorder.start_window()

    workers = [asyncio.create_task(worker(k)) for k in range(concurrency)]
    opener = asyncio.create_task(window())
    try:
        done, pending = await asyncio.wait([*workers, opener], timeout=warmup + duration + 60.0)
    finally:
        recorder.end_window()
    for task in pending:
        task.cancel()
    await asyncio.gather(*workers, opener, return_exceptions=True)
    del done


async def open_loop(
    recorder: Recorder,
    targets: Sequence[Target],
    *,
    rate: float,
    duration: float,
    max_messages: int,
    max_in_flight: int = 20_000,
    warmup: float = 0.0,
) -> None:
    """Sends due at a fixed rate (round robin over ``targets``) whatever the answers; a send
    due while ``max_in_flight`` are unanswered is not issued and counts as ``backlog_full``."""
    began = time.monotonic()
    total = warmup + duration
    issued = 0
    windowed = warmup <= 0
    if windowed:
        recorder.start_window()
    try:
        while issued < max_messages:
            now = time.monotonic()
            if now - began >= total:
                break
            if not windowed and now - began >= warmup:
                recorder.start_window()
                windowed = True
            due_count = min(max_messages, int((now - began) * rate) + 1)
            while issued < due_count:
                due = began + issued / rate
                target = targets[issued % len(targets)]
                issued += 1
                if recorder.in_flight >= max_in_flight:
                    recorder.errors["backlog_full"] += 1
                    continue
                try:
                    recorder.submit(target, due)
                except ClientError:
                    continue
            await asyncio.sleep(max(0.0, began + issued / rate - time.monotonic()))
    finally:
        recorder.end_window()


async def drain(recorder: Recorder, seconds: float) -> int:
    """Wait for unanswered sends (at most ``seconds``); returns how many are still open."""
    if recorder.in_flight > 0:
        try:
            async with asyncio.timeout(seconds):
                await recorder.idle.wait()
        except TimeoutError:
            pass
    return recorder.in_flight
