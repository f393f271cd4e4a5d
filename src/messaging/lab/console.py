"""The lab console's server: the page (``GET /lab``), its live state (``GET /lab/api/state``,
polled every second) and its actions (``POST /lab/api/traffic``, ``/lab/api/fault``,
``/lab/api/check``).

Same origin only: the page and its API are served by this process, every answer carries the
demo page's Content-Security-Policy (no inline script, nothing from another origin), and every
state-changing request must be a POST with JSON, carry the ``X-Lab-Token`` header (a random
token made at start and embedded in the page, which another site cannot read), and, when the
browser says where it comes from (``Origin``, ``Sec-Fetch-Site``), come from this origin.
Anything else is refused with 403 (ADR 0032).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import attrs
import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from messaging.devstack import stack as devstack
from messaging.devstack.faults import FaultError, flush_redis
from messaging.devstack.process import StackError
from messaging.devstack.toxiproxy import Toxiproxy, ToxiproxyError
from messaging.lab.processes import PATHS, LabApp, parse_metrics
from messaging.lab.traffic import Plan, PlanError, Traffic
from messaging.protocol.faults import FaultPoint
from messaging.settings import Settings

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TOKEN_HEADER = "X-Lab-Token"
PACKAGE = "messaging.lab"
STACK_FAULT_SERVICES = ("redis", "dynamodb", "kafka")
"""Services the console may stop and start (and every Kafka node ``kafka-N``); never the
fault proxy itself."""
SERIES_POINTS = 600


@attrs.define
class Window:
    key: str
    label: str
    start: float
    end: float | None = None


class Lab:
    """The lab's processes, traffic, fault windows and samples."""

    def __init__(
        self,
        settings: Settings,
        apps: Sequence[LabApp],
        proxy: Toxiproxy | None,
        *,
        stack_faults: bool,
    ) -> None:
        self.settings = settings
        self.apps = list(apps)
        self.proxy = proxy
        self.stack_faults = stack_faults
        self.began = time.monotonic()
        self.series: deque[dict[str, Any]] = deque(maxlen=SERIES_POINTS)
        self.windows: list[Window] = []
        self.events: deque[str] = deque(maxlen=30)
        self.app_samples: dict[str, dict[str, Any]] = {}
        self.services: list[dict[str, Any]] = []
        self.path_faults: dict[str, str] = {}
        self.traffic: Traffic | None = None
        self._traffic_task: asyncio.Task[None] | None = None
        self.check_result: dict[str, Any] | None = None
        self._check_task: asyncio.Task[None] | None = None
        self._previous: dict[str, dict[str, float]] = {}
        self._last_sample = time.monotonic()
        self._last_recorder = (0, 0)
        self._tasks: list[asyncio.Task[None]] = []
        self._stalls: set[asyncio.Task[None]] = set()
        self._stalled = 0
        self._http = httpx.AsyncClient(timeout=1.5, trust_env=False)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._sample_loop(), name="lab-sampler"),
            asyncio.create_task(self._services_loop(), name="lab-services"),
        ]

    async def close(self) -> None:
        tasks = [*self._tasks, *self._stalls, self._traffic_task, self._check_task]
        for task in tasks:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        if self.traffic is not None:
            await self.traffic.close()
        await self._http.aclose()

    def now(self) -> float:
        return round(time.monotonic() - self.began, 2)

    def note(self, line: str) -> None:
        self.events.append(f"+{self.now():.1f}s {line}")

    def open_window(self, key: str, label: str) -> None:
        if not any(w.key == key and w.end is None for w in self.windows):
            self.windows.append(Window(key, label, self.now()))

    def close_window(self, key: str) -> None:
        for window in self.windows:
            if window.key == key and window.end is None:
                window.end = self.now()

    def instant(self, label: str) -> None:
        at = self.now()
        self.windows.append(Window(f"instant:{at}", label, at, at + 0.5))

    # ------------------------------------------------------------ sampling

    async def _sample_loop(self) -> None:
        while True:
            started = time.monotonic()
            with contextlib.suppress(Exception):
                await self.sample()
            await asyncio.sleep(max(0.1, 1.0 - (time.monotonic() - started)))

    async def sample(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_sample, 1e-3)
        self._last_sample = now
        texts = await asyncio.gather(*(app.metrics_text(self._http) for app in self.apps))
        health = await asyncio.gather(*(app.ready(self._http) for app in self.apps))
        sends = deliveries = 0.0
        for app, text, state in zip(self.apps, texts, health, strict=True):
            values = parse_metrics(text) if text is not None else {}
            previous = self._previous.get(app.name, {})

            app_sends = _rate(values, previous, "messaging_sends_total", elapsed) if values else 0.0
            app_deliveries = (
                _rate(values, previous, "messaging_fanout_deliveries_total", elapsed)
                if values
                else 0.0
            )
            sends += app_sends
            deliveries += app_deliveries
            if values:
                self._previous[app.name] = values
            else:
                self._previous.pop(app.name, None)
            key = f"app:{app.name}"
            if state == "down" and not app.busy:
                self.open_window(key, f"{app.name} down")
            elif state == "ok" and app.alive and not app.busy:  # not a probe from before a kill
                self.close_window(key)
            self.app_samples[app.name] = {
                "name": app.name,
                "port": app.port,
                "pid": app.proc.pid if app.alive and app.proc is not None else None,
                "health": state,
                "restarts": app.restarts,
                "connections": int(values.get("messaging_ws_connections", 0)),
                "sends_per_s": round(app_sends, 1),
                "deliveries_per_s": round(app_deliveries, 1),
                "fanout_lag": int(values.get("messaging_fanout_lag_records", 0)),
                "publish_failures": int(values.get("messaging_outbox_publish_failures_total", 0)),
                "slow_consumer_disconnects": int(
                    values.get("messaging_ws_slow_consumer_disconnects_total", 0)
                ),
                "outbound_queue_depth": int(values.get("messaging_ws_outbound_queue_depth", 0)),
            }
        point: dict[str, Any] = {
            "t": self.now(),
            "sends": round(sends, 1),
            "deliveries": round(deliveries, 1),
        }
        traffic = self.traffic
        if traffic is not None:
            recorder = traffic.recorder
            interval = recorder.take_interval()
            acked, delivered = recorder.acked, recorder.deliveries
            before_acked, before_delivered = self._last_recorder
            self._last_recorder = (acked, delivered)
            point["client_acks"] = round(max(0, acked - before_acked) / elapsed, 1)
            point["client_deliveries"] = round(max(0, delivered - before_delivered) / elapsed, 1)
            point["p50"] = round(interval.percentile_ms(50), 1)
            point["p99"] = round(interval.percentile_ms(99), 1)
        self.series.append(point)

    async def _services_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.services = await asyncio.to_thread(self._service_health)
            await asyncio.sleep(2.0)

    def _service_health(self) -> list[dict[str, Any]]:
        found = []
        for service in devstack.services(devstack.recorded_profile(self.settings)):
            pid = service.process.pid()
            problem = service.health() if pid is not None else "not running"
            found.append(
                {
                    "name": service.name,
                    "address": service.address(),
                    "health": "ok" if problem is None else problem,
                    "can_stop": self.stack_faults and service.name != "toxiproxy",
                }
            )
        return found

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        traffic = self.traffic
        traffic_state: dict[str, Any] | None = None
        if traffic is not None:
            recorder = traffic.recorder
            traffic_state = {
                "phase": traffic.phase,
                "error": traffic.error,
                "plan": attrs.asdict(traffic.plan),
                "clients": len(traffic.members),
                "chats": len(traffic.chat_members),
                "submitted": recorder.submitted,
                "acked": recorder.acked,
                "deliveries": recorder.deliveries,
                "in_flight": recorder.in_flight,
                "errors": dict(recorder.errors),
                "remaining_s": (
                    round(max(0.0, traffic.loop_ends_at - time.monotonic()), 1)
                    if traffic.loop_ends_at is not None and traffic.phase == "running"
                    else None
                ),
                "send_to_deliver_ms": recorder.deliver.summary(),
            }
        return {
            "now": self.now(),
            "apps": [self.app_samples.get(app.name, {"name": app.name}) for app in self.apps],
            "services": self.services,
            "paths": [
                {
                    "name": path.name,
                    "app": app.name,
                    "kind": kind,
                    "listen": path.listen,
                    "upstream": path.upstream,
                    "fault": self.path_faults.get(path.name, "none"),
                }
                for app in self.apps
                for kind, path in app.paths.items()
            ],
            "proxied": self.proxy is not None,
            "stack_faults": self.stack_faults,
            "fault_points": [p.value for p in FaultPoint],
            "traffic": traffic_state,
            "series": list(self.series),
            "windows": [attrs.asdict(w) for w in self.windows[-50:]],
            "checking": self._check_task is not None and not self._check_task.done(),
            "check": self.check_result,
            "events": list(self.events),
        }

    # ------------------------------------------------------------ actions

    def app_named(self, name: object) -> LabApp:
        for app in self.apps:
            if app.name == name:
                return app
        raise ActionError(f"unknown app process {name!r}")

    async def start_traffic(self, plan: Plan) -> None:
        if self._traffic_task is not None and not self._traffic_task.done():
            raise ActionError("traffic is running: stop it first")
        if self._check_task is not None and not self._check_task.done():
            raise ActionError("a check is running")
        alive = [app for app in self.apps if app.alive]
        if not alive:
            raise ActionError("no app process is running")
        if self.traffic is not None:
            await self.traffic.close()
        self.check_result = None
        self.traffic = Traffic(plan, alive[0].base_url, [app.ws_url for app in self.apps])
        self._last_recorder = (0, 0)
        self._traffic_task = asyncio.create_task(self.traffic.run(), name="lab-traffic")
        self.note(
            f"traffic: {plan.users} users, {plan.chats} chats of {plan.group_size}, "
            f"{plan.rate:g}/s for {plan.seconds:g}s"
        )

    async def stop_traffic(self) -> None:
        task = self._traffic_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.note("traffic stopped")

    async def start_check(self) -> None:
        if self.traffic is None or not self.traffic.members:
            raise ActionError("no traffic to check: start the generator first")
        if self._check_task is not None and not self._check_task.done():
            raise ActionError("a check is running")
        await self.stop_traffic()
        traffic = self.traffic
        self.check_result = None
        self.note("check: final sync, then the checker")

        async def run() -> None:
            try:
                self.check_result = await traffic.check()
            except Exception as exc:
                self.check_result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            verdict = "clean" if self.check_result.get("ok") else "VIOLATIONS"
            self.note(f"check: {verdict}")

        self._check_task = asyncio.create_task(run(), name="lab-check")

    async def fault(self, body: dict[str, Any]) -> str:
        action = body.get("action")
        handlers: dict[str, Callable[[dict[str, Any]], Awaitable[str]]] = {
            "kill": self._kill,
            "restart": self._restart,
            "arm": self._arm,
            "stop_service": self._stop_service,
            "start_service": self._start_service,
            "flushall": self._flushall,
            "cut": self._cut,
            "slow": self._slow,
            "heal": self._heal,
            "stall": self._stall,
        }
        handler = handlers.get(str(action))
        if handler is None:
            raise ActionError(f"unknown fault action {action!r}; one of {', '.join(handlers)}")
        done = await handler(body)
        self.note(done)
        return done

    async def _kill(self, body: dict[str, Any]) -> str:
        app = self.app_named(body.get("app"))
        self.open_window(f"app:{app.name}", f"kill {app.name}")
        app.busy = True
        try:
            await app.kill()
        finally:
            app.busy = False
        return f"SIGKILL {app.name}"

    async def _restart(self, body: dict[str, Any]) -> str:
        app = self.app_named(body.get("app"))
        if app.alive:
            raise ActionError(f"{app.name} is running")
        app.busy = True
        try:
            await app.restart()
        finally:
            app.busy = False
        self.close_window(f"app:{app.name}")
        return f"restarted {app.name} on port {app.port}"

    async def _arm(self, body: dict[str, Any]) -> str:
        app = self.app_named(body.get("app"))
        point = str(body.get("point"))
        if point not in {p.value for p in FaultPoint}:
            raise ActionError(f"unknown fault point {point!r}")
        await app.arm(point)
        self.instant(f"arm {point} on {app.name}")
        return f"armed {point} on {app.name}: it dies when it passes there"

    def _service_name(self, body: dict[str, Any]) -> str:
        if not self.stack_faults:
            raise ActionError(
                "stack faults are disabled here (`messaging lab --no-stack-faults`): "
                "they would stop or flush services shared with others"
            )
        name = str(body.get("service"))
        if name not in STACK_FAULT_SERVICES and not name.startswith("kafka-"):
            raise ActionError(f"not a service the console stops: {name!r}")
        return name

    async def _stop_service(self, body: dict[str, Any]) -> str:
        name = self._service_name(body)
        self.open_window(f"svc:{name}", f"{name} stopped")
        await asyncio.to_thread(devstack.stop_service, self.settings, name)
        return f"stopped {name}"

    async def _start_service(self, body: dict[str, Any]) -> str:
        name = self._service_name(body)
        await asyncio.to_thread(devstack.start_service, self.settings, name, _quiet)
        self.close_window(f"svc:{name}")
        return f"started {name}"

    async def _flushall(self, body: dict[str, Any]) -> str:
        if not self.stack_faults:
            raise ActionError("stack faults are disabled here: FLUSHALL would flush a shared Redis")
        await flush_redis(self.settings.redis_url)
        self.instant("FLUSHALL redis")
        return "FLUSHALL redis"

    def _path(self, body: dict[str, Any]) -> tuple[Toxiproxy, Any]:
        if self.proxy is None:
            raise ActionError("Toxiproxy is not running: no path to cut")
        app = self.app_named(body.get("app"))
        kind = body.get("path")
        if kind not in PATHS or kind not in app.paths:
            raise ActionError(f"unknown path {kind!r}; one of {', '.join(PATHS)}")
        return self.proxy, app.paths[str(kind)]

    async def _cut(self, body: dict[str, Any]) -> str:
        proxy, path = self._path(body)
        await proxy.heal(path)
        await proxy.blackhole(path)
        self.path_faults[path.name] = "cut"
        self.open_window(f"path:{path.name}", f"cut {path.name}")
        return f"cut {path.name} (blackhole both ways)"

    async def _slow(self, body: dict[str, Any]) -> str:
        proxy, path = self._path(body)
        millis = body.get("millis", 500)
        if isinstance(millis, bool) or not isinstance(millis, int) or not 1 <= millis <= 10_000:
            raise ActionError("millis: expected 1 to 10000")
        await proxy.heal(path)
        await proxy.latency(path, millis, millis // 5)
        self.path_faults[path.name] = f"+{millis} ms"
        self.open_window(f"path:{path.name}", f"slow {path.name}")
        return f"slowed {path.name} by {millis} ms"

    async def _heal(self, body: dict[str, Any]) -> str:
        proxy, path = self._path(body)
        await proxy.heal(path)
        self.path_faults.pop(path.name, None)
        self.close_window(f"path:{path.name}")
        return f"healed {path.name}"

    async def _stall(self, body: dict[str, Any]) -> str:
        """Pause one client's reading for ``seconds`` (the nemesis's ``stall``, the slow-client
        scenario's ``pause_reading``): its socket buffers and the server's outbound queue fill."""
        traffic = self.traffic
        if traffic is None or not traffic.members:
            raise ActionError("no client to pause: start the generator first")
        seconds = body.get("seconds", 10)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 1 <= seconds <= 60
        ):
            raise ActionError("seconds: expected 1 to 60")
        member = traffic.members[self._stalled % len(traffic.members)]
        self._stalled += 1
        client = member.client
        name = f"client {member.user.index} ({member.chats[0][:10]}...)"
        key = f"stall:{self._stalled}"
        self.open_window(key, f"stall {name}")

        async def stall() -> None:
            client.pause_reading()
            try:
                await asyncio.sleep(float(seconds))
            finally:
                client.resume_reading()
                self.close_window(key)
                self.note(f"{name} reads again")

        task = asyncio.create_task(stall(), name=f"lab-{key}")
        self._stalls.add(task)
        task.add_done_callback(self._stalls.discard)
        return f"paused the reading of {name} for {seconds:g} s"


class ActionError(Exception):
    pass


def _rate(now: dict[str, float], before: dict[str, float], name: str, seconds: float) -> float:
    """A counter's rate; a restarted process's counter starts again from zero."""
    current, previous = now.get(name, 0.0), before.get(name, 0.0)
    return max(0.0, current - previous if current >= previous else current) / seconds


def _quiet(_line: str) -> None:
    return None


# ---------------------------------------------------------------- the web app


class _StaticFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def refusal(request: Request, token: str) -> str | None:
    """Why a state-changing request is refused (None: accepted)."""
    given = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return f"missing or wrong {TOKEN_HEADER} header"
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host')}":
        return f"cross-origin request (Origin: {origin})"
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return "expected Content-Type: application/json"
    return None


def _json(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=SECURITY_HEADERS)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_lab_app(
    lab_factory: Callable[[], AsyncIterator[Lab]],
    *,
    token: str | None = None,
    hosts: Sequence[str] = LOCAL_HOSTS,
) -> Starlette:
    """The console's app; ``lab_factory`` is an async generator yielding the running lab.
    Requests naming another ``Host`` are refused (400): a page of another site whose name was
    made to resolve to this machine (DNS rebinding) would otherwise be same-origin with it."""
    token = token or secrets.token_urlsafe(24)
    page = (resources.files(PACKAGE) / "static" / "lab.html").read_text()
    page = page.replace("{{TOKEN}}", token)
    holder: dict[str, Lab] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async for lab in lab_factory():
            holder["lab"] = lab
            lab.start()
            try:
                yield
            finally:
                await lab.close()

    async def index(_: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def root(_: Request) -> Response:
        return RedirectResponse("/lab", status_code=307)

    async def state(_: Request) -> Response:
        return _json(holder["lab"].state())

    def action(
        run: Callable[[Lab, dict[str, Any]], Awaitable[Any]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            why = refusal(request, token)
            if why is not None:
                return _json({"error": "forbidden", "message": why}, 403)
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "invalid_input", "message": "body: expected JSON"}, 400)
            if not isinstance(body, dict):
                return _json({"error": "invalid_input", "message": "body: expected an object"}, 400)
            try:
                result = await run(holder["lab"], body)
            except (PlanError, ActionError) as exc:
                return _json({"error": "invalid_input", "message": str(exc)}, 409)
            except (FaultError, ToxiproxyError, StackError, httpx.HTTPError, RuntimeError) as exc:
                return _json({"error": "fault_failed", "message": str(exc)}, 502)
            return _json({"ok": True, "result": result})

        return endpoint

    async def traffic(lab: Lab, body: dict[str, Any]) -> str:
        what = body.pop("action", None)
        if what == "start":
            await lab.start_traffic(Plan.parse(body))
            return "traffic started"
        if what == "stop":
            await lab.stop_traffic()
            return "traffic stopped"
        raise ActionError("action: expected start or stop")

    async def fault(lab: Lab, body: dict[str, Any]) -> str:
        return await lab.fault(body)

    async def check(lab: Lab, _body: dict[str, Any]) -> str:
        await lab.start_check()
        return "check started"

    return Starlette(
        routes=[
            Route("/", root, methods=["GET"]),
            Route("/lab", index, methods=["GET"]),
            Route("/lab/api/state", state, methods=["GET"]),
            Route("/lab/api/traffic", action(traffic), methods=["POST"]),
            Route("/lab/api/fault", action(fault), methods=["POST"]),
            Route("/lab/api/check", action(check), methods=["POST"]),
            Mount("/lab/static", app=_StaticFiles(packages=[(PACKAGE, "static")])),
        ],
        lifespan=lifespan,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))],
    )
