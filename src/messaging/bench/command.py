"""``messaging bench SCENARIO [options]``: arguments and the run's orchestration.

A run: results folder ``bench-results/<timestamp>/``; unless ``--url``, the run's tables and
topic and fresh app process(es) for each scenario (stopped after it); the baselines; the
scenario(s); the checker; the report (``report.json``, ``summary.md``, PNG charts). The exit
code is 1 when the checker found a violation (or a scenario failed), 0 otherwise: a missed
performance target is reported, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import shlex
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from messaging.bench.options import HOT_SENDERS, SCENARIO_NAMES, SUITE_NAMES, HotLayout, Options
from messaging.settings import Settings

if TYPE_CHECKING:
    from messaging.bench import apps as app_procs
    from messaging.bench.procstat import Sampler

SUITE = SUITE_NAMES
MAX_DURATION = 600.0
Say = Callable[[str], None]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _bounded(low: float, high: float) -> Any:
    def parse(text: str) -> float:
        value = float(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low:g} to {high:g}, got {text}")
        return value

    return parse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Load scenarios against app processes it starts (or --url), with the DynamoDB API, "
        "Kafka and a bare WebSocket echo measured as limits in the same run."
    )
    parser.add_argument("scenario", choices=[*SCENARIO_NAMES, "suite"])
    parser.add_argument("--url", help="target a running app instead of starting processes")
    parser.add_argument("--app-pid", type=int, help="with --url: the app's pid, for CPU and RSS")
    parser.add_argument(
        "--apps",
        type=_ints,
        default=(1,),
        help="app processes to start (default 1); a list (1,2,3) runs each scenario once per "
        "count and adds a throughput and p99 table per count (ADR 0031)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="each app as `serve --workers N` (default 1)"
    )
    parser.add_argument("--rate", type=_bounded(0.1, 1e6), help="open loop: sends per second")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="closed loop: sends in flight (default 16)"
    )
    parser.add_argument(
        "--duration", type=_bounded(0.5, MAX_DURATION), default=10.0, help="seconds per phase"
    )
    parser.add_argument(
        "--warmup", type=_bounded(0, 60), default=1.0, help="seconds before measuring"
    )
    parser.add_argument(
        "--max-messages", type=int, default=1_000_000, help="sends per phase, at most"
    )
    parser.add_argument(
        "--members", type=_ints, default=(10,), help="group: members per chat, e.g. 10,100,1000"
    )
    parser.add_argument(
        "--senders",
        type=int,
        help="group/catchup: members that send; hot: sending connections, spread as devices "
        f"over the members (default {HOT_SENDERS})",
    )
    parser.add_argument(
        "--in-flight",
        type=_ints,
        default=(1,),
        help="hot: sends each sending connection keeps in flight; a list (1,2,4) runs one "
        "closed-loop phase per value on the same connections (default 1)",
    )
    parser.add_argument(
        "--messages", type=int, default=10_000, help="catchup: messages missed while offline"
    )
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections: idle sockets to open"
    )
    parser.add_argument("--users", type=int, help="connections/mixed: distinct users")
    parser.add_argument("--chats", type=int, help="direct: 1:1 chats (default: --concurrency)")
    parser.add_argument(
        "--sweep",
        type=_floats,
        default=(),
        help="direct: after a closed-loop max, open loop at these fractions of it (0.25,0.5,...)",
    )
    parser.add_argument(
        "--idle-duration",
        type=_bounded(0, 60),
        default=3.0,
        help="direct/group: seconds with clients connected and nothing sent, for the app's "
        "idle CPU (0: skip; default 3)",
    )
    parser.add_argument("--text-size", type=int, default=64, help="bytes of text per message")
    parser.add_argument(
        "--ack-interval",
        type=_bounded(0.01, 60),
        default=0.1,
        help="clients ack what they delivered at most this often (the library's default 0.1)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=2, help="connections: client processes (default 2)"
    )
    parser.add_argument("--drain-timeout", type=_bounded(1, 300), default=30.0)
    parser.add_argument(
        "--baselines",
        default="dynamodb,kafka,echo",
        help="comma list of dynamodb,kafka,echo, or none",
    )
    parser.add_argument("--baseline-duration", type=_bounded(0.5, 120), default=5.0)
    parser.add_argument(
        "--out", type=Path, default=Path("bench-results"), help="results parent folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's tables and topics")


def options_from(args: argparse.Namespace) -> Options:
    chosen = frozenset(
        b.strip() for b in args.baselines.split(",") if b.strip() not in ("", "none")
    )
    unknown = chosen - {"dynamodb", "kafka", "echo"}
    if unknown:
        raise SystemExit(f"messaging bench: unknown baseline(s) {', '.join(sorted(unknown))}")
    if not args.apps or min(args.apps) < 1 or max(args.apps) > 32:
        raise SystemExit("messaging bench: --apps takes counts from 1 to 32, e.g. 1,2,3")
    if args.max_messages < 1 or args.concurrency < 1 or args.connections < 1:
        raise SystemExit("messaging bench: --max-messages, --concurrency, --connections >= 1")
    if not args.in_flight or min(args.in_flight) < 1 or max(args.in_flight) > 64:
        raise SystemExit("messaging bench: --in-flight takes values from 1 to 64, e.g. 1,2,4")
    if args.scenario == "hot":
        if len(args.members) != 1:
            raise SystemExit("messaging bench hot: --members takes one size (one hot chat)")
        try:
            HotLayout(args.members[0], HOT_SENDERS if args.senders is None else args.senders)
        except ValueError as exc:
            raise SystemExit(f"messaging bench hot: {exc}") from None
    return Options(
        rate=args.rate,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        max_messages=args.max_messages,
        members=args.members,
        senders=args.senders,
        messages=args.messages,
        connections=min(args.connections, 20_000),
        users=args.users,
        chats=args.chats,
        sweep=args.sweep,
        text_size=max(24, min(args.text_size, 4000)),
        client_procs=max(1, min(args.client_procs, 8)),
        drain_timeout=args.drain_timeout,
        baselines=chosen,
        baseline_duration=args.baseline_duration,
        ack_interval=args.ack_interval,
        idle_duration=args.idle_duration,
        in_flight=args.in_flight,
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    # One progress line per second is the output: no per-request logging from the libraries.
    logging.getLogger().setLevel(logging.WARNING)
    options = options_from(args)
    return asyncio.run(_main(settings, args, options))


async def _main(settings: Settings, args: argparse.Namespace, options: Options) -> int:
    from messaging.bench import apps as app_procs
    from messaging.bench import report
    from messaging.bench.procstat import Sampler, loadavg, machine, raise_nofile

    started = datetime.datetime.now().astimezone()
    run_id = uuid.uuid4().hex[:6]
    out_dir = args.out / f"{started:%Y%m%d-%H%M%S}-{args.scenario}-{run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (out_dir / "progress.log").open("a")

    def say(line: str) -> None:
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    nofile = raise_nofile(max(4096, options.connections + 2048))
    namespace = app_procs.Namespace.for_run(run_id)
    command = "messaging bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    before = loadavg()
    say(f"bench run {run_id}: {command}")
    say(f"results: {out_dir}; load average {before}; open-file limit {nofile}")
    sampler = Sampler()
    for name, pid in app_procs.stack_pids(settings).items():
        sampler.track(name, pid)
    sampler.track("bench", os.getpid())
    names = list(SUITE) if args.scenario == "suite" else [args.scenario]
    results: dict[str, Any] = {}
    base: dict[str, Any] = {}
    failures: list[str] = []
    managed = args.url is None
    try:
        await app_procs.wait_for_stack(settings, say)
        if managed:
            await app_procs.prepare(settings, namespace)
        base = await _baselines(settings, namespace, options, out_dir, sampler, say)
        counts = list(dict.fromkeys(args.apps)) if managed else [1]
        for name in names:
            scenario_options = _for_suite(name, options) if args.scenario == "suite" else options
            for count in counts:
                key = name if len(counts) == 1 else f"{name}@{count}apps"
                try:
                    result = await _scenario(
                        name,
                        settings,
                        args,
                        scenario_options,
                        namespace,
                        out_dir,
                        sampler,
                        say,
                        apps=count,
                    )
                except Exception:
                    failures.append(key)
                    say(f"scenario {key} FAILED:\n{traceback.format_exc()}")
                    continue
                result["apps"] = count
                if len(counts) > 1:
                    result["scenario"] = f"{name} {count} apps"
                results[key] = result
    finally:
        if managed and not args.keep:
            for problem in await app_procs.cleanup(settings, namespace):
                say(f"cleanup: {problem}")
        after = loadavg()
    consistent = all(_consistent(r) for r in results.values()) and not failures
    full = {
        "run": {
            "run_id": run_id,
            "started_at": started.isoformat(timespec="seconds"),
            "command": command,
            "machine": machine(),
            "loadavg_before": before,
            "loadavg_after": after,
            "out_dir": str(out_dir),
            "target": args.url or "own app processes",
            "apps": list(args.apps) if managed else None,
            "workers": args.workers if managed else None,
            "options": attrs.asdict(
                options,
                value_serializer=lambda _i, _a, v: sorted(v) if isinstance(v, frozenset) else v,
            ),
            "histogram": "HDR (PyPI hdrhistogram), microseconds, 3 significant digits",
        },
        "baselines": base,
        "scenarios": results,
        "failed_scenarios": failures,
        "delivery_order": {
            name: order
            for name, result in results.items()
            if (order := report.delivery_order(result)) is not None
        },
        "targets": report.targets(results, base),
        "ratios": report.ratios(results.values(), base),
        "apps_scaling": report.apps_scaling(results),
        "consistent": consistent,
    }
    try:
        full["charts"] = report.charts(full, out_dir)
    except Exception:
        say(f"charts failed:\n{traceback.format_exc()}")
        full["charts"] = []
    report.write_json(out_dir / "report.json", full)
    (out_dir / "summary.md").write_text(report.summary_markdown(full))
    say(report.console_summary(full))
    say(f"load average before {before}, after {after}")
    log.close()
    return 0 if consistent else 1


def _consistent(result: dict[str, Any]) -> bool:
    parts = result.get("sizes") or [result]
    return all(bool(part["checker"]["ok"]) for part in parts)


def _for_suite(name: str, options: Options) -> Options:
    """The suite's sizes: the issue's targets (100-member fanout, 10,000 messages, 10,000
    sockets) with the command line's durations and rates."""
    if name == "direct":
        return attrs.evolve(options, sweep=options.sweep or (0.25, 0.5, 0.75))
    if name == "group":
        return attrs.evolve(options, rate=None)
    if name == "catchup":
        return attrs.evolve(options, rate=None)
    if name == "mixed":
        return attrs.evolve(options, rate=options.rate or 100.0)
    return options


async def _baselines(
    settings: Settings,
    namespace: app_procs.Namespace,
    options: Options,
    out_dir: Path,
    sampler: Sampler,
    say: Say,
) -> dict[str, Any]:
    from messaging.bench import baselines

    base: dict[str, Any] = {}
    seconds = options.baseline_duration
    if "dynamodb" in options.baselines:
        base["dynamodb"] = await baselines.dynamodb(
            settings,
            namespace,
            concurrency=options.concurrency,
            duration=seconds,
            max_ops=options.max_messages,
            text_size=options.text_size,
            say=say,
        )
    if "kafka" in options.baselines:
        base["kafka"] = await baselines.kafka(
            settings, namespace, duration=seconds, max_messages=options.max_messages, say=say
        )
    if "echo" in options.baselines:
        base["echo"] = await baselines.websocket_echo(
            out_dir,
            sampler,
            concurrency=options.concurrency,
            duration=seconds,
            max_round_trips=options.max_messages,
            say=say,
        )
    return base


async def _scenario(
    name: str,
    settings: Settings,
    args: argparse.Namespace,
    options: Options,
    namespace: app_procs.Namespace,
    out_dir: Path,
    sampler: Sampler,
    say: Say,
    *,
    apps: int = 1,
) -> dict[str, Any]:
    from messaging.bench import apps as app_procs
    from messaging.bench.population import Population
    from messaging.bench.scenarios import SCENARIOS, Context
    from messaging.bench.server import metrics_delta

    say(f"===== scenario {name}")
    processes: list[app_procs.AppProcess] = []
    if args.url is None:
        for attempt in range(3):
            # The stack is shared: another run may be restarting a service right now.
            await app_procs.wait_for_stack(settings, say)
            try:
                processes = await app_procs.start_apps(
                    apps, namespace, out_dir, workers=args.workers
                )
                break
            except RuntimeError as exc:
                if attempt == 2:
                    raise
                say(f"app start failed ({str(exc).splitlines()[0]}); retrying")
        base_urls = [p.base_url for p in processes]
        pids = [pid for p in processes for pid in p.worker_pids()]
        say(
            f"started {len(processes)} app process(es): "
            + ", ".join(f"{p.base_url} (pid {p.pid})" for p in processes)
        )
    else:
        base_urls = [args.url.rstrip("/")]
        pids = [args.app_pid] if args.app_pid else []
    for i, pid in enumerate(pids):
        sampler.track(f"app{i + 1}", pid)
    population = Population(base_urls[0], concurrency=32)
    ctx = Context(
        settings=settings,
        namespace=namespace,
        options=options,
        out_dir=out_dir,
        say=say,
        sampler=sampler,
        base_urls=base_urls,
        app_pids=pids,
        population=population,
        stack=app_procs.stack_pids(settings),
        workers=args.workers if args.url is None else 1,
    )
    began = time.monotonic()
    try:
        before = await ctx.scrape()
        result = await SCENARIOS[name](ctx)
        result["server_total"] = metrics_delta(before, await ctx.scrape())
    finally:
        await population.aclose()
        for i in range(len(pids)):
            sampler.forget(f"app{i + 1}")
        for process in processes:
            code = process.stop()
            if code not in (0, None):
                say(f"{process.name} exited with {code}; log: {process.log_path}")
    ctx.check_stack("the scenario")
    result["seconds"] = round(time.monotonic() - began, 1)
    result["stack_disruptions"] = ctx.disruptions
    return result
