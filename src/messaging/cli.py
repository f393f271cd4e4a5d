"""The ``messaging`` command: ``serve``, ``stack up|down|status|logs``,
``db init [--no-topics] [--brokers N]``,
``dlq list|replay``, ``doctor``, ``bench``, ``lab``.

Settings are read and validated once, here, before anything starts; a bad value ends the
command with exit code 2 and a message naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence

from messaging.settings import Settings, SettingsError, env_var, from_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="messaging", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the app with uvicorn (MESSAGING_HOST/MESSAGING_PORT)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="app processes sharing the port with SO_REUSEPORT, one per core (default 1)",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)

    stack = commands.add_parser("stack", help="the local Kafka, DynamoDB API and Redis")
    stack_cmds = stack.add_subparsers(dest="stack_command", required=True)
    stack_up = stack_cmds.add_parser("up", help="start what is not running, wait until healthy")
    stack_up.add_argument(
        "--kafka-brokers",
        type=int,
        choices=(1, 3),
        help="KRaft nodes: 1 (default) or 3, the replicated profile (ADR 0029)",
    )
    stack_up.add_argument(
        "--apps",
        type=int,
        choices=range(33),
        metavar="N",
        help="N app processes behind HAProxy on MESSAGING_PORT (ADR 0031); 0 stops them "
        "(default: the number running)",
    )
    stack_cmds.add_parser("down", help="stop the processes the stack started")
    stack_cmds.add_parser("status", help="each service with its address and health")
    logs = stack_cmds.add_parser("logs", help="the last lines of each service's log")
    logs.add_argument("service", nargs="?", help="redis, dynamodb or kafka (default: all)")
    logs.add_argument("-n", "--lines", type=int, default=40)

    db = commands.add_parser("db", help="the DynamoDB tables and the Kafka topics")
    db_cmds = db.add_subparsers(dest="db_command", required=True)
    db_init = db_cmds.add_parser(
        "init",
        help="create missing tables and Kafka topics (idempotent; same code as on AWS)",
    )
    db_init.add_argument(
        "--no-topics",
        action="store_true",
        help="tables only, Kafka not contacted (where the topics are provisioned elsewhere)",
    )
    db_init.add_argument(
        "--brokers",
        type=int,
        metavar="N",
        help="the cluster's size: topics are created once N brokers have registered, "
        "replicated for N (default: the brokers registered now)",
    )

    dlq = commands.add_parser("dlq", help="the fanout's dead-letter topic (ADR 0030)")
    dlq_cmds = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_cmds.add_parser("list", help="the last dead letters, oldest first")
    dlq_list.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    replay = dlq_cmds.add_parser(
        "replay", help="re-publish dead letters to the messages topic (undecodable ones stay)"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--offset", type=int, action="append", help="a dead letter's offset")
    which.add_argument("--all", action="store_true", help="every dead letter in the topic")

    doctor = commands.add_parser(
        "doctor", help="what is installed, which ports are taken and by whom, caches and logs"
    )
    doctor.add_argument("--strict", action="store_true", help="exit 1 when something is wrong")

    from messaging.bench import command as bench

    bench.configure(commands.add_parser("bench", help="load scenarios and baselines"))

    from messaging.lab import command as lab

    lab.configure(
        commands.add_parser(
            "lab", help="the lab console: break the system from the browser (not in production)"
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = from_env()
    except SettingsError as exc:
        print(f"messaging: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "serve":
        return _serve(settings, args.workers, args.reuse_port)
    if args.command == "stack":
        return _stack(settings, args)
    if args.command == "db":
        if args.brokers is not None and args.brokers < 1:
            print("messaging db init: --brokers must be 1 or more", file=sys.stderr)
            return 2
        return _db_init(settings, topics=not args.no_topics, brokers=args.brokers)
    if args.command == "dlq":
        return _dlq(settings, args)
    if args.command == "doctor":
        from messaging.devstack import doctor

        return doctor.run(settings, strict=args.strict)
    if args.command == "bench":
        from messaging.bench import command as bench

        return bench.run(settings, args)
    if args.command == "lab":
        from messaging.lab import command as lab

        return lab.run(settings, args)
    raise AssertionError(args.command)


def _serve(settings: Settings, workers: int, reuse_port: bool) -> int:
    from messaging import serving

    if workers < 1:
        print("messaging serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if workers == 1:
        return serving.serve(settings, reuse_port=reuse_port)
    return serving.serve_workers(settings, workers)


def _stack(settings: Settings, args: argparse.Namespace) -> int:
    import attrs

    from messaging.devstack import stack
    from messaging.devstack.process import StackError

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        if args.stack_command == "up":
            if args.kafka_brokers:
                settings = attrs.evolve(settings, stack_kafka_brokers=args.kafka_brokers)
            if args.apps is not None:
                settings = attrs.evolve(settings, stack_apps=args.apps)
            elif not settings.stack_apps:
                settings = stack.recorded_apps(settings)
        else:
            settings = stack.recorded_profile(settings)
        if args.stack_command == "up":
            stack.up(settings, say)
        elif args.stack_command == "down":
            stack.down(settings, say)
        elif args.stack_command == "status":
            return 0 if stack.status(settings, say) else 1
        elif args.stack_command == "logs":
            stack.logs(settings, args.service, args.lines, say)
    except StackError as exc:
        print(f"messaging stack {args.stack_command}: {exc}", file=sys.stderr)
        return 1
    return 0


def _db_init(settings: Settings, *, topics: bool = True, brokers: int | None = None) -> int:
    from messaging.infra.dynamodb import open_dynamo
    from messaging.infra.schema import ensure_tables

    def progress(line: str) -> None:
        if not line.startswith("table "):  # "table X exists" on every later run: not news
            print(line, flush=True)

    async def run() -> list[str]:
        async with open_dynamo(
            settings.dynamodb_endpoint, settings.aws_region, client=settings.dynamodb_client
        ) as client:
            return await ensure_tables(client, settings.table_prefix, progress=progress)

    started = time.monotonic()
    try:
        created = asyncio.run(run())
    except Exception as exc:
        print(f"messaging db init: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    print(f"== tables: {len(created)} created, all ready ({elapsed:.1f}s)", flush=True)
    return _topics_init(settings, brokers) if topics else 0


def _topics_init(settings: Settings, brokers: int | None = None) -> int:
    """The messages topic and its dead-letter topic (ADRs 0029, 0030), like the tables:
    created when missing, left as they are when they exist; with ``brokers``, once that many
    have registered and replicated for that many."""
    from messaging.infra.kafka import TopicsError, ensure_topics

    started = time.monotonic()
    try:
        done = asyncio.run(
            ensure_topics(settings.kafka_bootstrap, settings.kafka_topics, brokers=brokers)
        )
    except TopicsError as exc:
        hint = (
            "start Kafka (or set MESSAGING_KAFKA_BOOTSTRAP) and run it again"
            if exc.unreachable
            else "fix the cause and run it again"
        )
        print(
            f"messaging db init: {exc}\n  the tables are ready; {hint}, or pass --no-topics "
            "where the topics are provisioned elsewhere",
            file=sys.stderr,
        )
        return 1
    elapsed = time.monotonic() - started
    replication = done.replication
    copies = f"{replication.replicas} replica(s) on {replication.brokers} broker(s)"
    if replication.configs:
        copies += ", min.insync.replicas=" + replication.configs["min.insync.replicas"]
    created = ", ".join(
        f"{n} ({settings.kafka_topics[n]} partition{'' if settings.kafka_topics[n] == 1 else 's'})"
        for n in done.created
    )
    print(
        f"== topics: {len(done.created)} created{': ' + created if created else ''}, "
        f"{len(done.existing)} existing; new ones get {copies} ({elapsed:.1f}s)",
        flush=True,
    )
    for name, has, asked in done.short:
        print(
            f"messaging db init: topic {name} has {has} partition(s), the settings ask {asked} "
            f"({env_var('kafka_messages_partitions')} for the messages topic): left as it is. "
            "Adding partitions moves chats to other partitions; do it deliberately "
            "(kafka-topics.sh --alter --partitions) or set the partition count to match.",
            file=sys.stderr,
        )
    return 1 if done.short else 0


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from messaging.bootstrap import open_dead_letter_topic

    if args.dlq_command == "list" and not 1 <= args.limit <= 10_000:
        print("messaging dlq list: --limit must be from 1 to 10000", file=sys.stderr)
        return 2

    async def run() -> int:
        async with open_dead_letter_topic(settings) as topic:
            if args.dlq_command == "list":
                letters = await topic.list(args.limit)
                print(f"== {len(letters)} dead letter(s) in {settings.kafka_dead_letter_topic}")
                for letter in letters:
                    parked = time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.parked_at_ms / 1000)
                    )
                    if letter.message is not None:
                        what = f"{letter.message.chat_id}#{letter.message.sequence}"
                    else:
                        what = f"undecodable {len(letter.raw)} bytes {letter.raw[:40]!r}"
                    print(
                        f"offset {letter.offset}  parked {parked}  from partition "
                        f"{letter.partition} offset {letter.source_offset}  {what}  "
                        f"reason: {letter.reason}"
                    )
                return 0
            done = await topic.replay(None if args.all else args.offset)
            for letter in done.published:
                assert letter.message is not None
                print(
                    f"replayed offset {letter.offset}: "
                    f"{letter.message.chat_id}#{letter.message.sequence}"
                )
            for letter in done.left:
                print(f"left offset {letter.offset}: undecodable, not replayed ({letter.reason})")
            asked = None if args.all else set(args.offset)
            missing = (
                sorted(asked - {d.offset for d in (*done.published, *done.left)}) if asked else []
            )
            for offset in missing:
                print(f"no dead letter at offset {offset}", file=sys.stderr)
            print(f"== {len(done.published)} replayed, {len(done.left)} left")
            return 1 if missing else 0

    try:
        return asyncio.run(run())
    except Exception as exc:
        print(f"messaging dlq {args.dlq_command}: {exc}", file=sys.stderr)
        return 1
