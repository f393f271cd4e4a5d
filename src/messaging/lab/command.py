"""``messaging lab``: the lab console on http://127.0.0.1:8010/lab (ADR 0032).

It prepares a private namespace on the running stack (tables, topic, consumer group), creates
Toxiproxy paths for each of its app processes when the fault proxy runs, starts ``--apps`` app
processes with the fault hooks on, and serves the page. On exit (Ctrl-C, SIGTERM) it stops its
processes, removes its paths and deletes its tables and topic. Refused with
``MESSAGING_ENV=production``, like the fault hooks it relies on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx

from messaging.bench.apps import Namespace, app_env, cleanup, prepare, wait_for_stack
from messaging.devstack.toxiproxy import Toxiproxy
from messaging.lab.console import LOCAL_HOSTS, Lab, create_lab_app
from messaging.lab.processes import LabApp
from messaging.settings import Settings

DEFAULT_PORT = 8010
MAX_APPS = 4
Say = Callable[[str], None]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default 8010")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument(
        "--apps", type=int, default=2, help=f"app processes to start (1-{MAX_APPS}, default 2)"
    )
    parser.add_argument(
        "--no-stack-faults",
        action="store_true",
        help="disable stopping stack services and FLUSHALL (for a stack shared with others)",
    )
    parser.add_argument("--log-dir", default=".lab", help="where the app processes log")


def namespace(run_id: str) -> Namespace:
    return Namespace(
        run_id=run_id,
        table_prefix=f"lab{run_id}-",
        topic=f"lab-{run_id}",
        consumer_group=f"lab-fanout-{run_id}",
        partitions=4,
    )


async def toxiproxy_if_running(settings: Settings) -> Toxiproxy | None:
    url = f"http://127.0.0.1:{settings.stack_toxiproxy_port}"
    try:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            answer = await http.get(url + "/version")
    except httpx.HTTPError:
        return None
    return Toxiproxy(url) if answer.status_code == 200 else None


async def open_lab(
    settings: Settings, *, apps: int, stack_faults: bool, log_dir: Path, say: Say
) -> AsyncIterator[Lab]:
    """The running lab: namespace, paths and processes; all undone when the caller ends."""
    run_id = secrets.token_hex(3)
    space = namespace(run_id)
    await wait_for_stack(settings, say)
    await prepare(settings, space)
    proxy = await toxiproxy_if_running(settings)
    if proxy is None:
        say("lab: Toxiproxy is not running: no network paths to cut (`messaging stack up`)")
    processes = [
        LabApp(f"lab{run_id}-app{i + 1}", app_env(space), log_dir, proxied=proxy is not None)
        for i in range(apps)
    ]
    try:
        if proxy is not None:
            for app in processes:
                await app.make_paths(proxy, settings)
        await asyncio.gather(*(app.launch() for app in processes))
        say(f"lab: {apps} app process(es) ready: " + ", ".join(a.base_url for a in processes))
        yield Lab(settings, processes, proxy, stack_faults=stack_faults)
    finally:
        await asyncio.gather(
            *(asyncio.to_thread(app.stop, 10.0) for app in processes), return_exceptions=True
        )
        if proxy is not None:
            for app in processes:
                await app.remove_paths(proxy)
            await proxy.aclose()
        with contextlib.suppress(Exception):
            await cleanup(settings, space)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.is_production:
        print(
            "messaging lab: refused when MESSAGING_ENV=production (it injects faults)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.apps <= MAX_APPS:
        print(f"messaging lab: --apps must be 1 to {MAX_APPS}", file=sys.stderr)
        return 2
    import logging

    import uvicorn

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    logging.getLogger("messaging.client").setLevel(logging.WARNING)  # every retried frame

    def say(line: str) -> None:
        print(line, flush=True)

    def factory() -> AsyncIterator[Lab]:
        return open_lab(
            settings,
            apps=args.apps,
            stack_faults=not args.no_stack_faults,
            log_dir=Path(args.log_dir),
            say=say,
        )

    app = create_lab_app(factory, hosts=sorted({args.host, *LOCAL_HOSTS}))
    say(f"lab console: http://{args.host}:{args.port}/lab")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="on")
    return 0
