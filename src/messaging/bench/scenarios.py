"""The scenarios: ``direct``, ``group``, ``catchup``, ``connections``, ``mixed``.

Each one provisions its users through the real OTP flow, connects them (one ChatClient per
device, every one consuming), runs bounded load phases with a progress line per second, waits
until every acknowledged message reached every member (bounded), runs the consistency checker
over the recorded histories, and returns a JSON-ready result.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from messaging.bench import baselines
from messaging.bench.apps import Namespace, stack_pids
from messaging.bench.consistency import run_checker
from messaging.bench.cost import cpu_cost
from messaging.bench.load import (
    Fleet,
    Recorder,
    Target,
    client_hops,
    closed_loop,
    drain,
    open_loop,
    progress_line,
)
from messaging.bench.options import HOT_SENDERS, HotLayout, Options
from messaging.bench.population import Population, User
from messaging.bench.procstat import Sampler, rss_bytes
from messaging.bench.server import Scrape, metrics_delta, scrape
from messaging.bench.server import value as server_value
from messaging.client import ClientOptions, History
from messaging.settings import Settings

Say = Callable[[str], None]


@attrs.define(kw_only=True)
class Context:
    settings: Settings
    namespace: Namespace
    options: Options
    out_dir: Path
    say: Say
    sampler: Sampler
    base_urls: list[str]
    app_pids: list[int]
    population: Population
    stack: dict[str, int] = attrs.field(factory=dict)
    """The stack's pids when the scenario started."""
    workers: int = 1
    """App instances behind each base URL (``serve --workers N``)."""
    disruptions: list[str] = attrs.field(factory=list)
    """Stack services that stopped or restarted during the scenario (other runs share it)."""

    def check_stack(self, at: str) -> None:
        now = stack_pids(self.settings)
        for name, pid in self.stack.items():
            if now.get(name) != pid:
                note = (
                    f"{name} stopped (pid {pid}) during {at}"
                    if name not in now
                    else f"{name} restarted (pid {pid} -> {now[name]}) during {at}"
                )
                if note not in self.disruptions:
                    self.disruptions.append(note)
                    self.say(f"STACK DISRUPTION: {note}")
                if name in now:
                    self.stack[name] = now[name]
                    self.sampler.track(name, now[name])

    @property
    def base_url(self) -> str:
        return self.base_urls[0]

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/v1/ws"

    @property
    def ws_urls(self) -> tuple[str, ...]:
        """Every app's WebSocket URL: a fleet spreads its clients over them."""
        return tuple(base.replace("http://", "ws://", 1) + "/v1/ws" for base in self.base_urls)

    def app_cpu(self, processes: Mapping[str, Mapping[str, float]]) -> float:
        """The app processes' CPU, % of one core, summed (workers included)."""
        return round(sum(v["cpu_pct_avg"] for k, v in processes.items() if k.startswith("app")), 1)

    async def scrape(self) -> Scrape:
        return await scrape(self.base_urls, self.workers)


# ---------------------------------------------------------------- shared machinery


def client_options(ctx: Context) -> ClientOptions:
    """Client library defaults, except: every chat is known from the start (no position-less
    discovery on reconnect) and the ack interval from ``--ack-interval``."""
    return ClientOptions(discover_on_reconnect=False, ack_interval=ctx.options.ack_interval)


async def _with_progress(
    ctx: Context, recorder: Recorder, label: str, load: Awaitable[None]
) -> None:
    async def ticker() -> None:
        while True:
            await asyncio.sleep(1.0)
            ctx.check_stack(label)
            entry = recorder.tick({"processes": ctx.sampler.sample()})
            ctx.say(progress_line(label, entry))

    task = asyncio.create_task(ticker())
    try:
        await load
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run_phase(
    ctx: Context,
    recorder: Recorder,
    targets: Sequence[Target],
    *,
    label: str,
    rate: float | None,
    concurrency: int,
    duration: float,
    await_deliveries: int = 0,
    fleet: Fleet | None = None,
) -> dict[str, Any]:
    """One measured load phase (after a warm-up), then the drain of its unanswered sends.
    With ``fleet``: the client-side hops of the messages created in the measured window, and
    the duplicate frames its clients dropped during the phase."""
    opts = ctx.options
    duplicates_before = _duplicate_frames(fleet)
    before = await ctx.scrape()
    ctx.sampler.restart()
    recorder.expect_fanout(await_deliveries)
    if rate is not None:
        ctx.say(f"{label}: open loop at {rate:.0f} sends/s for {duration:g}s")
        load = open_loop(
            recorder,
            targets,
            rate=rate,
            duration=duration,
            max_messages=opts.max_messages,
            warmup=opts.warmup,
        )
    else:
        ctx.say(
            f"{label}: closed loop, {concurrency} concurrent sends"
            + (" (each waits for full delivery)" if await_deliveries else "")
            + f", {duration:g}s"
        )
        load = closed_loop(
            recorder,
            targets,
            concurrency=concurrency,
            duration=duration,
            max_messages=opts.max_messages,
            warmup=opts.warmup,
        )
    await _with_progress(ctx, recorder, label, load)
    processes = ctx.sampler.totals()
    summary = recorder.summary()
    unfinished = await drain(recorder, opts.drain_timeout)
    after = await ctx.scrape()
    phase = {
        "label": label,
        "mode": "open" if rate is not None else "closed",
        "offered_rate": rate,
        "concurrency": None if rate is not None else concurrency,
        **summary,
        "unfinished_after_drain": unfinished,
        "timeline": list(recorder.timeline),
        "processes": processes,
        "app_cpu_pct": ctx.app_cpu(processes),
        "server": metrics_delta(before, after),
    }
    if fleet is not None:
        phase["client_hops"] = client_hops(
            fleet.members, recorder.window_start_ms, recorder.window_end_ms
        )
        phase["duplicate_frames"] = _duplicate_frames(fleet) - duplicates_before
    return phase


def _duplicate_frames(fleet: Fleet | None) -> int:
    if fleet is None:
        return 0
    return sum(m.client.stats.duplicates for m in fleet.members)


async def idle_point(ctx: Context, label: str) -> dict[str, Any] | None:
    """The app's CPU with every client connected and nothing sent for ``--idle-duration``
    seconds (None when 0): the measured zero-load point of the CPU cost line."""
    seconds = ctx.options.idle_duration
    if seconds <= 0:
        return None
    ctx.sampler.restart()
    await asyncio.sleep(seconds)
    processes = ctx.sampler.totals()
    idle = {"seconds": seconds, "app_cpu_pct": ctx.app_cpu(processes), "processes": processes}
    ctx.say(f"{label}: idle (connected, nothing sent) app CPU {idle['app_cpu_pct']:.1f}%")
    return idle


async def warm_fanout(ctx: Context, fleet: Fleet, target: Target, seconds: float = 60.0) -> float:
    """Send one message and wait until every member has it: a new consumer group's first
    assignment takes seconds (the broker delays the first rebalance), and ``/readyz`` does not
    wait for it. Returns how long the first delivery took."""
    began = time.monotonic()
    _, future = fleet.recorder.submit(target, began)
    result = await asyncio.wait_for(future, seconds)
    missing = await fleet.wait_delivered({result.chat_id: result.sequence}, seconds)
    if missing:
        raise RuntimeError(f"fanout not working after {seconds:g}s: {missing[:3]}")
    took = time.monotonic() - began
    ctx.say(f"fanout warm: first message reached every member in {took:.2f}s")
    return took


def _restart_totals(ctx: Context) -> None:
    """Start the per-phase CPU averages from now."""
    ctx.sampler.restart()


async def finish(
    ctx: Context,
    fleet: Fleet,
    recorder: Recorder,
    *,
    starts: Mapping[int, Mapping[str, int]] | None = None,
    extra: Mapping[str, History] | None = None,
) -> dict[str, Any]:
    """Wait until every member has every acknowledged message (bounded), check, close."""
    missing = await fleet.wait_delivered(recorder.max_sequence, ctx.options.drain_timeout)
    ctx.check_stack("the drain")
    if missing:
        ctx.say(f"after {ctx.options.drain_timeout:g}s {len(missing)} member chat(s) incomplete:")
        for line in missing[:5]:
            ctx.say(f"  {line}")
    stats = fleet.client_stats()
    deliveries = sum(m.deliveries for m in fleet.members)
    await fleet.close()
    ctx.say(f"checking {len(fleet.members)} histories ...")
    verdict = run_checker(fleet.members, starts, extra=extra)
    ctx.say(
        "checker: "
        + ("no violation" if verdict["ok"] else f"{verdict['violations']} VIOLATION(S)")
        + f" ({verdict['acked_sends']} acked sends, {verdict['observations']} observations, "
        f"{verdict['seconds']}s)"
    )
    for line in verdict["first"][:5]:
        ctx.say(f"  {line}")
    frames = {
        "deliveries": deliveries,
        "duplicate_frames": stats["duplicates"],
        "duplicate_ratio": round(stats["duplicates"] / deliveries, 5) if deliveries else None,
        "gaps_detected": stats["gaps_detected"],
    }
    ctx.say(
        f"delivery frames: {deliveries} delivered, {frames['duplicate_frames']} duplicate "
        f"frame(s) dropped by the clients, {frames['gaps_detected']} gap(s) seen"
    )
    return {
        "incomplete_after_drain": len(missing),
        "incomplete_examples": missing[:10],
        "client_stats": stats,
        "delivery_frames": frames,
        "checker": verdict,
    }


# ---------------------------------------------------------------- direct


async def direct(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    pairs = max(opts.chats or 0, opts.concurrency, 1)
    ctx.say(f"direct: {pairs} 1:1 chats ({2 * pairs} users)")
    users, login_rate = await ctx.population.users(2 * pairs, progress=ctx.say)
    chats = await ctx.population.direct_chats([(users[i], users[pairs + i]) for i in range(pairs)])
    chat_of = {u.user_id: chats[i % pairs].chat_id for i, u in enumerate(users)}
    recorder = Recorder(text_size=opts.text_size, tag=f"d{ctx.namespace.run_id}")
    fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    members = await fleet.connect(
        users,
        lambda u: (chat_of[u.user_id],),
        concurrency=opts.connect_concurrency,
        say=ctx.say,
    )
    # Senders: side A of every chat first, so that k workers write k different chats.
    targets = [Target(m, m.chats[0]) for m in members]
    await warm_fanout(ctx, fleet, targets[0])
    idle = await idle_point(ctx, "direct")
    phases: list[dict[str, Any]] = []
    if opts.sweep:
        top = await run_phase(
            ctx,
            recorder,
            targets,
            label="max",
            rate=None,
            concurrency=opts.concurrency,
            duration=opts.duration,
            fleet=fleet,
        )
        phases.append(top)
        peak = max(top["acked_per_s"], 1.0)
        for fraction in opts.sweep:
            phases.append(
                await run_phase(
                    ctx,
                    recorder,
                    targets,
                    label=f"{fraction:g}x",
                    rate=round(peak * fraction, 1),
                    concurrency=opts.concurrency,
                    duration=opts.duration,
                    fleet=fleet,
                )
            )
    else:
        phases.append(
            await run_phase(
                ctx,
                recorder,
                targets,
                label="direct",
                rate=opts.rate,
                concurrency=opts.concurrency,
                duration=opts.duration,
                fleet=fleet,
            )
        )
    result: dict[str, Any] = {
        "scenario": "direct",
        "chats": pairs,
        "users": len(users),
        "logins_per_s": round(login_rate, 1),
        "idle": idle,
        "phases": phases,
        "cpu_cost": cpu_cost(phases, idle),
    }
    result.update(await finish(ctx, fleet, recorder))
    if "dynamodb" in opts.baselines:
        half = next((p for p in phases if p["label"] == "0.5x"), None)
        if half is not None:
            result["store_at_half_load"] = await baselines.dynamodb(
                ctx.settings,
                ctx.namespace,
                concurrency=pairs,
                duration=opts.duration,
                max_ops=opts.max_messages,
                rate=half["offered_rate"],
                text_size=opts.text_size,
                say=ctx.say,
            )
    return result


# ---------------------------------------------------------------- group


def _only(chat_id: str) -> Callable[[User], tuple[str]]:
    def chats(_user: User) -> tuple[str]:
        return (chat_id,)

    return chats


async def group(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    largest = max(opts.members)
    ctx.say(f"group: sizes {', '.join(map(str, opts.members))}; {largest} users")
    users, login_rate = await ctx.population.users(largest, progress=ctx.say)
    sizes: list[dict[str, Any]] = []
    for size in opts.members:
        chosen = users[:size]
        chat = await ctx.population.group(chosen[0], chosen, f"bench group of {size}")
        recorder = Recorder(text_size=opts.text_size, tag=f"g{size}{ctx.namespace.run_id}")
        fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
        ctx.say(f"group of {size}: connecting {size} members")
        members = await fleet.connect(
            chosen,
            _only(chat.chat_id),
            concurrency=opts.connect_concurrency,
            say=ctx.say,
        )
        senders = min(size, opts.senders or opts.concurrency)
        targets = [Target(m, chat.chat_id) for m in members[:senders]]
        await warm_fanout(ctx, fleet, targets[0])
        idle = await idle_point(ctx, f"group of {size}")
        _restart_totals(ctx)
        phase = await run_phase(
            ctx,
            recorder,
            targets,
            label=f"group{size}",
            rate=opts.rate,
            concurrency=senders,
            duration=opts.duration,
            await_deliveries=0 if opts.rate is not None else size,
            fleet=fleet,
        )
        entry: dict[str, Any] = {
            "members": size,
            "senders": senders,
            "chat_id": chat.chat_id,
            "idle": idle,
            "phase": phase,
            "cpu_cost": cpu_cost([phase], idle),
        }
        entry.update(await finish(ctx, fleet, recorder))
        sizes.append(entry)
    return {
        "scenario": "group",
        "users": len(users),
        "logins_per_s": round(login_rate, 1),
        "sizes": sizes,
    }


# ---------------------------------------------------------------- catchup


async def catchup(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    senders = max(1, min(opts.senders or 4, 32))
    ctx.say(f"catchup: {senders} sender(s) write {opts.messages} messages; 1 member is offline")
    users, login_rate = await ctx.population.users(senders + 1, progress=ctx.say)
    writers, reader = users[:senders], users[senders]
    chat = await ctx.population.group(writers[0], users, "bench catch-up")
    recorder = Recorder(text_size=opts.text_size, tag=f"c{ctx.namespace.run_id}")
    fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    members = await fleet.connect(
        writers, lambda _u: (chat.chat_id,), concurrency=opts.connect_concurrency
    )
    targets = [Target(m, chat.chat_id) for m in members]
    await warm_fanout(ctx, fleet, targets[0])
    saved = attrs.evolve(opts)
    ctx.options = attrs.evolve(
        opts, max_messages=opts.messages, warmup=0.0, duration=max(opts.duration, 600.0)
    )
    try:
        fill = await run_phase(
            ctx,
            recorder,
            targets,
            label="fill",
            rate=None,
            concurrency=senders,
            duration=ctx.options.duration,
            fleet=fleet,
        )
    finally:
        ctx.options = saved
    head = recorder.max_sequence.get(chat.chat_id, 0)
    ctx.say(f"the offline member now connects and syncs {head} messages")
    # The reader starts from position 0 with an explicit sync, as a device that was offline.
    before = await ctx.scrape()
    ctx.sampler.sample()
    _restart_totals(ctx)
    began = time.monotonic()
    catch_fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    (late,) = await catch_fleet.connect([reader], lambda _u: (chat.chat_id,))
    last = 0
    deadline = began + max(60.0, opts.drain_timeout + head / 200)
    next_note = began + 1.0
    while late.consumed.get(chat.chat_id, 0) < head and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        if time.monotonic() >= next_note:
            next_note += 1.0
            now_at = late.consumed.get(chat.chat_id, 0)
            procs = ctx.sampler.sample()
            ctx.say(
                f"[catchup {time.monotonic() - began:5.1f}s] {now_at}/{head} delivered "
                f"({now_at - last}/s) "
                + " ".join(f"{n} {s['cpu_pct']:.0f}%" for n, s in procs.items())
            )
            last = now_at
    seconds = time.monotonic() - began
    caught = late.consumed.get(chat.chat_id, 0)
    after = await ctx.scrape()
    processes = ctx.sampler.totals()
    late_stats = catch_fleet.client_stats()
    fleet.members.append(late)
    result: dict[str, Any] = {
        "scenario": "catchup",
        "users": len(users),
        "logins_per_s": round(login_rate, 1),
        "senders": senders,
        "phases": [fill],
        "catchup": {
            "messages": head,
            "delivered": caught,
            "complete": caught >= head,
            "seconds": round(seconds, 3),
            "messages_per_s": round(caught / max(seconds, 1e-6), 1),
            "slow_consumer_disconnects": late_stats["slow_consumer_disconnects"],
            "close_codes": late_stats["close_codes"],
            "reconnects": late_stats["reconnects"],
            "processes": processes,
            "server": metrics_delta(before, after),
        },
    }
    ctx.say(
        f"catch-up: {caught}/{head} messages in {seconds:.2f}s = "
        f"{result['catchup']['messages_per_s']:.0f} msgs/s, slow-consumer disconnects "
        f"{late_stats['slow_consumer_disconnects']}"
    )
    result.update(await finish(ctx, fleet, recorder))
    return result


# ---------------------------------------------------------------- connections


async def connections(ctx: Context) -> dict[str, Any]:
    opts = ctx.options
    count = opts.connections
    distinct = min(count, opts.users or 1000)
    ctx.say(f"connections: {count} idle authenticated sockets, {distinct} users")
    users, login_rate = await ctx.population.users(distinct, progress=ctx.say)
    await asyncio.sleep(1.0)
    pid = ctx.app_pids[0] if ctx.app_pids else None
    rss_before = rss_bytes(pid) if pid else None
    procs = max(1, opts.client_procs)
    slices: list[list[tuple[str, str]]] = [[] for _ in range(procs)]
    for j in range(count):
        user = users[j % distinct]
        slices[j % procs].append((user.token, user.device_id))
    workers: list[tuple[asyncio.subprocess.Process, Path]] = []
    began = time.monotonic()
    for k, chunk in enumerate(slices):
        path = ctx.out_dir / f"sockets-{k}.json"
        path.write_text(json.dumps(chunk))
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "messaging.bench.sockets",
            "--url",
            ctx.ws_url,
            "--input",
            str(path),
            "--concurrency",
            str(max(8, opts.connect_concurrency // procs)),
            "--timeout",
            str(max(120.0, count / 50)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ},
        )
        workers.append((process, path))
        ctx.sampler.track(f"client{k}", process.pid)
    ready: dict[int, dict[str, Any]] = {}
    progress: dict[int, int] = {}

    async def read(k: int, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            line = await process.stdout.readline()
            if not line:
                return
            event = json.loads(line)
            if event.get("event") == "progress":
                progress[k] = int(event["connected"])
            elif event.get("event") == "ready":
                ready[k] = event
                return

    readers = [asyncio.create_task(read(k, p)) for k, (p, _) in enumerate(workers)]
    next_note = time.monotonic() + 1.0
    while not all(t.done() for t in readers):
        await asyncio.sleep(0.1)
        if time.monotonic() >= next_note:
            next_note += 1.0
            sample = ctx.sampler.sample()
            app = sample.get("app1", {})
            ctx.say(
                f"[connect {time.monotonic() - began:5.1f}s] {sum(progress.values())}/{count} "
                f"sockets; app cpu {app.get('cpu_pct', 0):.0f}% rss {app.get('rss_mb', 0):.0f}MB"
            )
    connect_seconds = time.monotonic() - began
    opened = sum(int(e.get("connected", 0)) for e in ready.values())
    failed = sum(int(e.get("failed", 0)) for e in ready.values())
    ctx.say(f"{opened} sockets ready ({failed} failed) in {connect_seconds:.1f}s; settling")
    await asyncio.sleep(3.0)
    server_view = await ctx.scrape()
    rss_after = rss_bytes(pid) if pid else None
    ctx.sampler.sample()
    _restart_totals(ctx)
    hold = min(opts.duration, 60.0)
    ctx.say(f"holding {opened} idle sockets for {hold:g}s")
    await asyncio.sleep(hold)
    idle = ctx.sampler.totals()
    rss_end = rss_bytes(pid) if pid else None
    finals: list[dict[str, Any]] = []
    for process, _ in workers:
        assert process.stdin is not None
        process.stdin.write(b"close\n")
        await process.stdin.drain()
    for process, path in workers:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(120):
                async for line in process.stdout:
                    event = json.loads(line)
                    if event.get("event") == "closed":
                        finals.append(event)
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        path.unlink(missing_ok=True)
    for k in range(len(workers)):
        ctx.sampler.forget(f"client{k}")
    per_connection = (
        (rss_after - rss_before) / opened if rss_before and rss_after and opened else None
    )
    stats: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()
    client_rss = 0
    for event in finals:
        for key, value in event.get("stats", {}).items():
            if isinstance(value, int):
                stats[key] += value
        for code, n in event.get("close_codes", {}).items():
            close_codes[code] += n
        client_rss += int(event.get("rss_delta", 0))
    result = {
        "scenario": "connections",
        "users": distinct,
        "logins_per_s": round(login_rate, 1),
        "requested": count,
        "opened": opened,
        "failed": failed,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_s": round(opened / max(connect_seconds, 1e-6), 1),
        "server_gauge_connections": server_value(server_view, "messaging_ws_connections"),
        "app_rss_before_mb": round((rss_before or 0) / 1_048_576, 1),
        "app_rss_after_mb": round((rss_after or 0) / 1_048_576, 1),
        "app_rss_end_of_hold_mb": round((rss_end or 0) / 1_048_576, 1),
        "bytes_per_connection": round(per_connection) if per_connection else None,
        "kb_per_connection": round(per_connection / 1024, 2) if per_connection else None,
        "client_bytes_per_connection": round(client_rss / opened) if opened else None,
        "client_processes": len(workers),
        "hold_seconds": hold,
        "idle_processes": idle,
        "client_stats": {**dict(stats), "close_codes": dict(close_codes)},
        "checker": {
            "checker": "not applicable: no message is sent in this scenario",
            "ok": True,
            "violations": 0,
        },
    }
    ctx.say(
        f"server memory per connection: {result['kb_per_connection']} KB "
        f"(RSS {result['app_rss_before_mb']} -> {result['app_rss_after_mb']} MB for {opened})"
    )
    return result


# ---------------------------------------------------------------- mixed


async def mixed(ctx: Context) -> dict[str, Any]:
    """A blend: 1:1 chats (70 % of sends), groups of 10 (25 %) and of 50 (5 %); 20 % of the
    online users only read; 1 % of the connections drop each second (the client reconnects and
    syncs); 5 % of the users are offline during the load and catch up at the end."""
    opts = ctx.options
    rng = random.Random(7)
    count = max(opts.users or 200, 20)
    ctx.say(f"mixed: {count} users")
    users, login_rate = await ctx.population.users(count, progress=ctx.say)
    chats_of: dict[str, list[str]] = {u.user_id: [] for u in users}
    pairs = [(users[i], users[(i + step) % count]) for i in range(count) for step in (1, 7)]
    directs = await ctx.population.direct_chats(pairs)
    for (a, b), chat in zip(pairs, directs, strict=True):
        chats_of[a.user_id].append(chat.chat_id)
        chats_of[b.user_id].append(chat.chat_id)
    shuffled = users[:]
    rng.shuffle(shuffled)
    small = []
    for start in range(0, count - 9, 10):
        chosen = shuffled[start : start + 10]
        small.append((await ctx.population.group(chosen[0], chosen, "small"), chosen))
    large = []
    for k in range(2 if count >= 50 else 0):
        chosen = rng.sample(users, 50)
        large.append((await ctx.population.group(chosen[0], chosen, f"large {k}"), chosen))
    for chat, chosen in (*small, *large):
        for user in chosen:
            chats_of[user.user_id].append(chat.chat_id)
    offline = set(rng.sample(range(count), max(1, count // 20)))
    online = [u for i, u in enumerate(users) if i not in offline]
    readers = {u.user_id for u in rng.sample(online, len(online) // 5)}
    recorder = Recorder(text_size=opts.text_size, tag=f"m{ctx.namespace.run_id}")
    fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    members = await fleet.connect(
        online,
        lambda u: tuple(chats_of[u.user_id]),
        concurrency=opts.connect_concurrency,
        say=ctx.say,
    )
    by_user = {m.user.user_id: m for m in members}
    weighted: list[Target] = []
    pools = (
        ([(a, c.chat_id) for (a, _b), c in zip(pairs, directs, strict=True)], 70),
        ([(u, c.chat_id) for c, chosen in small for u in chosen], 25),
        ([(u, c.chat_id) for c, chosen in large for u in chosen], 5),
    )
    for pool, weight in pools:
        usable = [(u, c) for u, c in pool if u.user_id in by_user and u.user_id not in readers]
        if usable:
            weighted.extend(
                Target(by_user[u.user_id], c) for u, c in rng.choices(usable, k=weight * 20)
            )
    rng.shuffle(weighted)
    await warm_fanout(ctx, fleet, weighted[0])
    rate = opts.rate or 100.0

    async def churn() -> None:
        while True:
            await asyncio.sleep(1.0)
            for member in rng.sample(members, max(1, len(members) // 100)):
                member.client.drop_connection()

    churner = asyncio.create_task(churn())
    try:
        phase = await run_phase(
            ctx,
            recorder,
            weighted,
            label="mixed",
            rate=rate,
            concurrency=opts.concurrency,
            duration=opts.duration,
            fleet=fleet,
        )
    finally:
        churner.cancel()
        await asyncio.gather(churner, return_exceptions=True)
    late_users = [users[i] for i in sorted(offline)]
    ctx.say(f"{len(late_users)} offline user(s) connect and catch up")
    began = time.monotonic()
    late_members = await fleet.connect(
        late_users, lambda u: tuple(chats_of[u.user_id]), concurrency=opts.connect_concurrency
    )
    waiting = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    waiting.members = late_members
    missing = await waiting.wait_delivered(recorder.max_sequence, opts.drain_timeout)
    catch_seconds = time.monotonic() - began
    caught = sum(m.deliveries for m in late_members)
    result: dict[str, Any] = {
        "scenario": "mixed",
        "users": count,
        "logins_per_s": round(login_rate, 1),
        "direct_chats": len(directs),
        "small_groups": len(small),
        "large_groups": len(large),
        "offline_users": len(late_users),
        "read_only_users": len(readers),
        "phases": [phase],
        "catchup": {
            "users": len(late_users),
            "messages": caught,
            "complete": not missing,
            "seconds": round(catch_seconds, 3),
            "messages_per_s": round(caught / max(catch_seconds, 1e-6), 1),
        },
    }
    result.update(await finish(ctx, fleet, recorder))
    return result


# ---------------------------------------------------------------- hot


def store_calls(server: Mapping[str, Any]) -> dict[str, Any]:
    """The app's DynamoDB calls over a phase (warm-up and drain included, as the server's
    counters are), per operation: calls, mean ms, and calls per send the app stored in the
    same span (``TransactWriteItems`` per stored send is one over the mean group-commit
    batch)."""
    stored = server.get("messaging_sends_total{outcome=stored}", 0)
    prefix = "messaging_dynamodb_call_seconds{operation="
    out: dict[str, Any] = {"stored_sends": int(stored)}
    for key, entry in server.items():
        if key.startswith(prefix) and isinstance(entry, dict):
            out[key[len(prefix) : -1]] = {
                **entry,
                "per_stored_send": round(entry["calls"] / stored, 3) if stored else None,
            }
    return out


async def hot(ctx: Context) -> dict[str, Any]:
    """One hot chat: ``--members`` users, ``--senders`` sending connections spread as devices
    over them (:class:`HotLayout`; every device of every member receives everything), each
    sender keeping ``--in-flight`` sends in flight (closed loop, not waiting for delivery), one
    phase per ``--in-flight`` value on the same connections. The checker and the full-delivery
    wait run after the last phase."""
    opts = ctx.options
    layout = HotLayout(opts.members[0], opts.senders or HOT_SENDERS)
    ctx.say(
        f"hot: one chat of {layout.members} members x {layout.devices} device(s) = "
        f"{layout.connections} connections, {layout.senders} of them sending, in flight per "
        f"sender {', '.join(map(str, opts.in_flight))}"
    )
    users, login_rate = await ctx.population.users(layout.members, progress=ctx.say)
    # Device 0 of each member is its first login; the others are further logins of the same
    # phone number with their own device ids (each its own session and socket). One login per
    # phone at a time (a new code replaces the one before), the members' in parallel.
    devices = list(users)
    for device in range(1, layout.devices):
        devices += await asyncio.gather(
            *(
                ctx.population.login(user.index, f"bench-hot-{user.index:06d}-{device}")
                for user in users
            )
        )
    chat = await ctx.population.group(users[0], users, f"bench hot chat of {layout.members}")
    recorder = Recorder(text_size=opts.text_size, tag=f"h{ctx.namespace.run_id}")
    fleet = Fleet(ctx.ws_urls, recorder, options=client_options(ctx))
    members = await fleet.connect(
        devices, _only(chat.chat_id), concurrency=opts.connect_concurrency, say=ctx.say
    )
    targets = [Target(m, chat.chat_id) for m in members[: layout.senders]]
    await warm_fanout(ctx, fleet, targets[0])
    idle = await idle_point(ctx, "hot")
    phases: list[dict[str, Any]] = []
    for k in opts.in_flight:
        phase = await run_phase(
            ctx,
            recorder,
            targets,
            label=f"hot k={k}",
            rate=None,
            concurrency=layout.senders * k,
            duration=opts.duration,
            fleet=fleet,
        )
        phase["in_flight_per_sender"] = k
        phase["store_calls"] = store_calls(phase["server"])
        phase["app_cpu_ms_per_acked_send"] = (
            round(10 * phase["app_cpu_pct"] / phase["acked_per_s"], 3)
            if phase["acked_per_s"]
            else None
        )
        phases.append(phase)
    best = max(phases, key=lambda p: float(p["acked_per_s"]))
    entry: dict[str, Any] = {
        "members": layout.members,
        "devices_per_member": layout.devices,
        "connections": layout.connections,
        "senders": layout.senders,
        "chat_id": chat.chat_id,
        "idle": idle,
        "phase": best,
        "cpu_cost": cpu_cost(phases, idle),
    }
    entry.update(await finish(ctx, fleet, recorder))
    return {
        "scenario": "hot",
        "users": layout.members,
        "logins_per_s": round(login_rate, 1),
        "phases": phases,
        "sizes": [entry],
    }


SCENARIOS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "direct": direct,
    "group": group,
    "catchup": catchup,
    "connections": connections,
    "mixed": mixed,
    "hot": hot,
}
