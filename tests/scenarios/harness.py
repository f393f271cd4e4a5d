"""The scenario harness: real app processes, clients built on ``messaging.client``, faults, and
the final consistency check.

- :class:`App`: one ``messaging serve`` process that can be SIGKILLed (directly, or by arming a
  fault point) and restarted **on the same port**, so that its clients reconnect to it as they
  would to a restarted pod behind a stable address.
- :class:`Member`: one device of one user: a REST session, a :class:`ChatClient` with its
  :class:`History`, and a consumer task that takes every message (so it counts as delivered and
  is acked). A member can be taken offline and brought back (a new ``ChatClient`` continuing the
  same history from its delivered positions).
- :class:`Scenario`: the apps and members of one test, chat creation, stack faults (always
  undone in ``finally``), waits, and :meth:`Scenario.final_check`: every member syncs
  explicitly, then the checker runs over every history, every member's final view and one REST
  read of every chat, and the test fails with the checker's report.

Blocking calls (starting processes, the stack's stop/start) run in threads: the event loop also
runs the clients, which must keep reading while a fault is injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from messaging.client import ChatClient, ClientOptions, History, RestClient, SendResult
from messaging.client.checker import ChatView, Report, ViewEntry, check, view_of
from messaging.devstack.faults import arm_fault_point, flush_redis
from messaging.devstack.stack import start_service, stop_service
from messaging.domain.model import Message
from messaging.protocol.wire import decode_event
from messaging.settings import Settings
from tests.harness import ARTIFACTS, AppProcess
from tests.scenarios.timeline import FaultWindow, Recovery, draw

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
"""Fast reconnects and resends: faults last seconds, not minutes."""

STACK_SERVICES = ("redis", "dynamodb", "kafka")
log = logging.getLogger("scenario")


def _quiet(_line: str) -> None:
    return None


def random_phone() -> str:
    return "+1555" + "".join(random.choice("0123456789") for _ in range(7))


# ---------------------------------------------------------------- app processes


class App(AppProcess):
    """An app process that keeps its port (chosen once) across restarts."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        super().__init__(name, env)
        self.armed: set[str] = set()
        self.restarts = 0
        self.restarting = False

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    async def launch(self) -> None:
        self.armed.clear()
        try:
            await asyncio.to_thread(self.start, 60.0)
        except RuntimeError:
            await self.sigkill()  # it may still be starting: never two on one port
            raise

    async def restart(self, attempts: int = 10) -> None:
        """Start it again if it is dead (retrying: a dependency may be down just now)."""
        if self.alive:
            return
        self.restarts += 1
        self.restarting = True
        try:
            for attempt in range(attempts):
                try:
                    await self.launch()
                    return
                except RuntimeError:
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(1.0)
        finally:
            self.restarting = False

    async def sigkill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def stop(self) -> None:
        await asyncio.to_thread(self.terminate)

    async def arm(self, point: str) -> None:
        """Arm a fault point: the process SIGKILLs itself the next time it passes it."""
        await arm_fault_point(self.base_url, point)
        self.armed.add(point)

    async def wait_dead(self, seconds: float) -> bool:
        for _ in range(int(seconds / 0.05)):
            if not self.alive:
                return True
            await asyncio.sleep(0.05)
        return not self.alive

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                return (await http.get(self.base_url + "/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def metric(self, name: str, labels: str = "") -> float:
        """The sum of a metric's samples (0 when absent), of those whose labels contain
        ``labels`` (e.g. ``'path="sweep"'``) if given."""
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(self.base_url + "/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                if labels and labels not in line.rsplit(" ", 1)[0]:
                    continue
                total += float(line.rsplit(" ", 1)[1])
        return total


# ---------------------------------------------------------------- members


class Member:
    """One device of one user, driven through ``messaging.client``."""

    def __init__(
        self,
        name: str,
        rest: RestClient,
        app: App,
        *,
        options: ClientOptions = OPTIONS,
        discover: bool = True,
    ) -> None:
        assert rest.session is not None
        self.name = name
        self.rest = rest
        self.app = app
        self.options = options
        self.discover = discover
        self.history = History()
        self.chats: set[str] = set()
        self.start_positions: dict[str, int] = {}
        self.client: ChatClient | None = None
        self._consumer: asyncio.Task[None] | None = None
        self.pending: list[asyncio.Future[SendResult]] = []

    @property
    def user_id(self) -> str:
        assert self.rest.session is not None
        return self.rest.session.user_id

    @property
    def device_id(self) -> str:
        assert self.rest.session is not None
        return self.rest.session.device_id

    @property
    def chat(self) -> ChatClient:
        assert self.client is not None, f"{self.name} is offline"
        return self.client

    async def connect(
        self,
        app: App | None = None,
        *,
        positions: Mapping[str, int] | None = None,
        options: ClientOptions | None = None,
    ) -> None:
        """Start a ChatClient (on ``app``, default: the member's app) continuing the history,
        from the positions delivered so far (or ``positions``: e.g. stale ones)."""
        assert self.client is None, f"{self.name} is connected already"
        assert self.rest.session is not None
        self.app = app or self.app
        if positions is None:
            positions = self.delivered_positions()
        for chat_id in self.chats:
            self.start_positions.setdefault(chat_id, positions.get(chat_id, 0))
        opts = options or self.options
        if not self.discover:
            opts = attrs.evolve(opts, discover_on_reconnect=False)
        client = ChatClient(
            self.app.ws_url + "/v1/ws",
            self.rest.session.token,
            self.device_id,
            options=opts,
            positions={chat_id: positions.get(chat_id, 0) for chat_id in self.chats},
            history=self.history,
        )
        await client.start()
        self.client = client
        self._consumer = asyncio.create_task(self._consume(client), name=f"consume-{self.name}")

    async def _consume(self, client: ChatClient) -> None:
        async for _message in client.messages():
            pass

    def delivered_positions(self) -> dict[str, int]:
        positions: dict[str, int] = dict(self.start_positions)
        for record in self.history.received:
            if record.delivered_at_ms is not None:
                positions[record.chat_id] = max(positions.get(record.chat_id, 0), record.sequence)
        return positions

    async def disconnect(self) -> None:
        """Go offline: close the client (pending sends are abandoned) after the application
        took what was already queued."""
        client, consumer = self.client, self._consumer
        self.client = self._consumer = None
        if client is None:
            return
        await client.close()
        if consumer is not None:
            try:
                async with asyncio.timeout(10):
                    await consumer
            except Exception as exc:  # the client failed: the test reports it
                raise AssertionError(f"{self.name}'s client failed: {exc!r}") from exc

    def submit(
        self, chat_id: str, text: str, cmid: str | None = None
    ) -> asyncio.Future[SendResult]:
        future = self.chat.submit(chat_id, text, cmid)
        self.pending.append(future)
        return future

    async def send(self, chat_id: str, text: str, cmid: str | None = None) -> SendResult:
        async with asyncio.timeout(60):
            return await asyncio.shield(self.submit(chat_id, text, cmid))

    def undelivered(self) -> int:
        return sum(1 for record in self.history.received if record.delivered_at_ms is None)


# ---------------------------------------------------------------- the scenario


class Scenario:
    """Everything one scenario test uses; ``close()`` undoes it."""

    def __init__(self, settings: Settings, apps: Sequence[App], *, label: str = "") -> None:
        self.settings = settings
        self.apps = list(apps)
        self.label = label
        self.members: list[Member] = []
        self.chat_members: dict[str, list[Member]] = {}
        self.context: list[str] = []
        """Lines added to every failure message (the nemesis seed, what was injected)."""
        self._rests: list[RestClient] = []
        self._began = time.monotonic()
        self.faults: list[FaultWindow] = []
        """Fault windows, drawn over the run's timeline by ``final_check``."""
        self.recoveries: list[Recovery] = []

    @contextlib.asynccontextmanager
    async def fault(self, name: str) -> AsyncIterator[None]:
        """Record a fault window: from entering (the fault is injected inside) to leaving
        (healed). ``final_check`` draws it on the run's timeline with its recovery time."""
        start = int(time.time() * 1000)
        self.note(f"fault: {name}")
        try:
            yield
        finally:
            self.faults.append(FaultWindow(name, start, int(time.time() * 1000)))
            self.note(f"healed: {name}")

    def note(self, what: str) -> None:
        """Record a step (shown in failure messages and in the log)."""
        line = f"+{time.monotonic() - self._began:.1f}s {what}"
        self.context.append(line)
        log.info("%s: %s", self.label, line)

    # ------------------------------------------------------------ set-up

    async def ensure_ready(self, seconds: float = 90.0) -> None:
        """Every app alive and ready (a previous test may have left one dead, or a stack
        service restarting)."""
        await self.ensure_services()
        for app in self.apps:
            if app.armed and app.alive:  # an armed fault that never fired: clear it
                await app.sigkill()
            await app.restart()
        for _ in range(int(seconds / 0.5)):
            states = await asyncio.gather(*(app.ready() for app in self.apps))
            if all(states):
                return
            await asyncio.sleep(0.5)
        else:
            pytest.fail(f"apps not ready after {seconds}s: {[a.log_tail(10) for a in self.apps]}")

    async def ensure_services(self) -> None:
        """Every stack service running (a failed test may have left one stopped)."""
        for service in STACK_SERVICES:
            await asyncio.to_thread(start_service, self.settings, service, _quiet)

    async def member(
        self,
        name: str,
        app: App,
        *,
        phone: str | None = None,
        connect: bool = False,
        options: ClientOptions = OPTIONS,
        discover: bool = True,
    ) -> Member:
        """Log in a new user (or a new device of ``phone``'s user) through ``app``."""
        rest = RestClient(app.base_url, timeout=20)
        self._rests.append(rest)
        await rest.login_dev(phone or random_phone(), f"{name}-{uuid.uuid4().hex[:8]}")
        member = Member(name, rest, app, options=options, discover=discover)
        self.members.append(member)
        if connect:
            await member.connect()
        return member

    def _track(self, chat_id: str, members: Iterable[Member]) -> str:
        joined = list(members)
        self.chat_members[chat_id] = joined
        for member in joined:
            member.chats.add(chat_id)
            member.start_positions.setdefault(chat_id, 0)
        return chat_id

    def devices_of(self, member: Member) -> list[Member]:
        return [m for m in self.members if m.user_id == member.user_id]

    async def device(
        self,
        of: Member,
        name: str,
        app: App,
        *,
        positions: Mapping[str, int] | None = None,
        connect: bool = True,
        **kwargs: Any,
    ) -> Member:
        """Another device of ``of``'s user, in the same chats, starting from ``positions``
        (default 0 in each chat)."""
        assert of.rest.session is not None
        member = await self.member(name, app, phone=of.rest.session.phone, **kwargs)
        for chat_id in of.chats:
            self.chat_members[chat_id].append(member)
            member.chats.add(chat_id)
            member.start_positions[chat_id] = (positions or {}).get(chat_id, 0)
        if connect:
            await member.connect(positions=member.start_positions)
        return member

    async def direct(self, a: Member, b: Member) -> str:
        chat = await a.rest.create_direct_chat(b.user_id)
        return self._track(chat.chat_id, [*self.devices_of(a), *self.devices_of(b)])

    async def group(
        self,
        owner: Member,
        others: Sequence[Member],
        title: str = "g",
        *,
        accept: Callable[[str], bool] | None = None,
    ) -> str:
        """A group chat of ``owner`` and ``others`` (every device of each). With ``accept``,
        groups are created until one's chat id is accepted (at most 50); the others stay
        empty and are not tracked."""
        users = list(dict.fromkeys(m.user_id for m in others if m.user_id != owner.user_id))
        for _ in range(50):
            chat = await owner.rest.create_group(title, users)
            if accept is None or accept(chat.chat_id):
                break
        else:
            raise AssertionError("no group chat id accepted in 50 tries")
        devices = {id(m): m for o in [owner, *others] for m in self.devices_of(o)}
        return self._track(chat.chat_id, devices.values())

    # ------------------------------------------------------------ faults

    async def stop_service(self, name: str) -> None:
        self.note(f"stop {name}")
        await asyncio.to_thread(stop_service, self.settings, name)

    async def start_service(self, name: str) -> None:
        await asyncio.to_thread(start_service, self.settings, name, _quiet)
        self.note(f"{name} started")

    async def service_outage(
        self, name: str, seconds: float, during: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Stop a stack service, wait (or run ``during``), and always start it again."""
        try:
            await self.stop_service(name)
            if during is not None:
                await during()
            await asyncio.sleep(seconds)
        finally:
            await self.start_service(name)

    async def flush_redis(self) -> None:
        self.note("FLUSHALL redis")
        await flush_redis(self.settings.redis_url)

    # ------------------------------------------------------------ waiting and checking

    def online(self) -> list[Member]:
        return [m for m in self.members if m.client is not None]

    async def settle_sends(self, seconds: float = 90.0, *, allow_abandoned: bool = False) -> None:
        """Every send submitted so far is answered, and acknowledged (or, with
        ``allow_abandoned``, given up by a client that was closed meanwhile)."""
        futures = [f for m in self.members for f in m.pending]
        self.note(f"settling {sum(not f.done() for f in futures)} unanswered send(s)")
        if not futures:
            return
        try:
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(asyncio.shield(f) for f in futures), return_exceptions=True)
        except TimeoutError:
            stuck = [
                f"{m.name}: {r.client_message_id} ({r.attempts} attempts, errors {r.errors})"
                for m in self.members
                for r in m.history.sends
                if r.outcome == "pending"
            ]
            self.fail(f"{len(stuck)} send(s) never answered within {seconds}s", stuck)
        failed = [
            f"{m.name}: {r.client_message_id} {r.outcome} {r.error_code}"
            for m in self.members
            for r in m.history.sends
            if r.outcome not in ("acked", "pending")
            and not (allow_abandoned and r.outcome == "abandoned")
        ]
        if failed:
            self.fail("sends did not succeed", failed)

    async def heads(self) -> dict[str, int]:
        """Each chat's head, read over REST."""
        heads: dict[str, int] = {}
        for chat_id, members in self.chat_members.items():
            page = await members[0].rest.messages(chat_id, after=0, limit=1)
            heads[chat_id] = page.visible_head
        return heads

    async def converge(
        self, seconds: float = 45.0, members: Sequence[Member] | None = None
    ) -> None:
        """Every online member holds every message of its chats, *without* an explicit sync:
        what reconnect syncs, gap syncs, resync hints, redelivery and the outbox repair path
        achieve on their own (eventual visibility)."""
        heads = await self.heads()
        who = list(members) if members is not None else self.online()

        def behind() -> list[str]:
            lagging = []
            for member in who:
                for chat_id in sorted(member.chats):
                    have = member.chat.delivered_sequence(chat_id)
                    if have < heads[chat_id]:
                        lagging.append(
                            f"{member.name} has {chat_id} up to {have} of {heads[chat_id]}"
                        )
                if member.undelivered():
                    lagging.append(f"{member.name} has {member.undelivered()} undelivered")
            return lagging

        self.note(f"converging {len(who)} member(s) to {heads}")
        for _ in range(int(seconds / 0.1)):
            if not behind():
                self.note("converged")
                return
            await asyncio.sleep(0.1)
        else:
            failures = [
                await app.metric("messaging_outbox_publish_failures_total") if app.alive else None
                for app in self.apps
            ]
            self.fail(
                f"members did not converge without help within {seconds}s",
                [*behind(), f"publish failures per process: {failures}"],
            )

    async def rest_views(self) -> dict[str, dict[str, list[ViewEntry]]]:
        views: dict[str, dict[str, list[ViewEntry]]] = {}
        for chat_id, members in self.chat_members.items():
            messages: list[Message] = []
            after = 0
            for _ in range(10_000):
                page = await members[0].rest.messages(chat_id, after=after, limit=100)
                messages.extend(page.messages)
                if not page.has_more or not page.messages:
                    break
                after = page.messages[-1].sequence
            views[f"rest:{chat_id}"] = {chat_id: [ViewEntry.of_message(m) for m in messages]}
        return views

    async def final_check(self, sync_seconds: float = 60.0) -> Report:
        """Final views after an explicit ``sync()`` of every chat by every online member, then
        the checker over every history, those views and a REST read of every chat."""
        online = self.online()
        synced_ms = int(time.time() * 1000)
        self.note("final sync")
        syncs = {
            m.name: asyncio.ensure_future(m.chat.sync(sorted(m.chats))) for m in online if m.chats
        }
        try:
            async with asyncio.timeout(sync_seconds):
                await asyncio.gather(*syncs.values())
        except TimeoutError:
            stuck = [
                f"{m.name}: sync unanswered; error frames {dict(m.history.errors)}"
                for m in online
                if m.name in syncs and not syncs[m.name].done()
            ]
            self.fail(f"the final sync did not complete within {sync_seconds}s", stuck)
        for _ in range(200):
            if not any(m.undelivered() for m in online):
                break
            await asyncio.sleep(0.05)
        histories = {m.name: m.history for m in self.members}
        if self.faults:
            self._timeline(histories, synced_ms)
        views: dict[str, Mapping[str, ChatView | Iterable[ViewEntry]]] = {
            m.name: view_of(m.history, after={c: m.start_positions.get(c, 0) for c in m.chats})
            for m in self.members
        }
        views.update(await self.rest_views())
        report = check(histories, views)
        self.note(f"checked: {report.summary(0)}")
        if not report.ok:
            self.fail("the consistency checker found violations", [report.summary(50)])
        return report

    def _timeline(self, histories: Mapping[str, History], until_ms: int) -> None:
        """test-artifacts/timelines/<test>.png, and each fault's recovery time in the log."""
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.label)[:120]
        path = ARTIFACTS / "timelines" / f"{name or 'scenario'}.png"
        self.recoveries = draw(path, self.label, histories, self.faults, until_ms)
        for recovery in self.recoveries:
            self.note(f"{recovery.fault}: converged {recovery.seconds:.1f}s after healing")
        self.note(f"timeline: {path}")

    def fail(self, what: str, details: Sequence[str]) -> None:
        lines = [f"{self.label}: {what}", *details[:40]]
        if self.context:
            lines.append("context: " + "; ".join(self.context[-30:]))
        pytest.fail("\n".join(lines), pytrace=False)

    async def close(self) -> None:
        for member in self.members:
            with contextlib.suppress(AssertionError):
                await member.disconnect()
        for rest in self._rests:
            await rest.aclose()


# ---------------------------------------------------------------- reading the log


async def published(settings: Settings, topic: str) -> set[tuple[str, int]]:
    """Every (chat, sequence) in the topic, read from the beginning without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka_messages_partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: set[tuple[str, int]] = set()
        for _ in range(1000):
            if all([await _at_end(consumer, p, ends[p]) for p in partitions]):
                break
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    if record.value is None:
                        continue
                    try:
                        message = decode_event(record.value)
                    except (ValueError, KeyError, TypeError):
                        # Not a message: e.g. the poison scenario's garbage, which shares the
                        # isolated processes' topic within a session (it is dead-lettered).
                        continue
                    found.add((message.chat_id, message.sequence))
        return found
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer, partition: TopicPartition, end: int) -> bool:
    return int(await consumer.position(partition)) >= end


def seed_from_env(name: str = "MESSAGING_TEST_NEMESIS_SEED") -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


# ---------------------------------------------------------------- traffic


class Traffic:
    """Every given member sends to its chats at random intervals, with up to ``inflight``
    unanswered sends each, until :meth:`stop`. Offline members pause."""

    def __init__(
        self,
        members: Sequence[Member],
        rng: random.Random,
        *,
        interval: tuple[float, float] = (0.05, 0.4),
        inflight: int = 3,
        tag: str = "t",
    ) -> None:
        self.members = list(members)
        self.interval = interval
        self.inflight = inflight
        self.tag = tag
        self.sent = 0
        # One generator per member, drawn from the scenario's: the choices are the seed's.
        self._rngs = {m.name: random.Random(rng.getrandbits(64)) for m in self.members}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Traffic:
        self._tasks = [
            asyncio.create_task(self._run(member), name=f"traffic-{member.name}")
            for member in self.members
        ]
        return self

    async def _run(self, member: Member) -> None:
        rng = self._rngs[member.name]
        mine: list[asyncio.Future[SendResult]] = []
        for n in range(1_000_000):
            await asyncio.sleep(rng.uniform(*self.interval))
            if member.client is None or not member.chats:
                continue
            mine = [f for f in mine if not f.done()]
            if len(mine) >= self.inflight:
                await asyncio.wait(mine, return_when=asyncio.FIRST_COMPLETED)
                continue
            chat_id = rng.choice(sorted(member.chats))
            text = f"{self.tag} {member.name} {n} " + "🙂" * rng.randint(0, 2)
            try:
                mine.append(member.submit(chat_id, text))
            except Exception:  # the client closed between the check and the submit
                continue
            self.sent += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
