"""A small client of Toxiproxy's HTTP API (ADR 0028): proxies for one TCP path each, and the
network faults ("toxics") a test puts on them.

A *path* is one proxy: clients connect to ``listen``, the proxy connects to ``upstream``. A fault
applies to the connections that exist and to new ones, in one direction or both:

- ``blackhole``: bytes stop, connections stay open (Toxiproxy's ``timeout`` toxic with 0): what a
  partition or a vanished peer looks like to both ends: no FIN, no RST, only silence;
- ``latency``: added delay with jitter;
- ``bandwidth``: a rate limit in KB/s;
- ``reset``: connections reset (RST) after a delay;
- ``disable``: the proxy stops listening and closes its connections (a refused path).

``heal`` removes every fault of one path; ``reset`` every fault of every path.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal

import attrs
import httpx

Stream = Literal["upstream", "downstream", "both"]


class ToxiproxyError(RuntimeError):
    pass


@attrs.frozen
class Path:
    name: str
    listen_port: int
    upstream: str

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.listen_port}"


class Toxiproxy:
    """``async with Toxiproxy(url) as proxy: path = await proxy.path(...)``."""

    def __init__(self, url: str, timeout_seconds: float = 5.0) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_seconds, trust_env=False)

    async def __aenter__(self) -> Toxiproxy:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, body: Any = None) -> Any:
        answer = await self._http.request(method, url, json=body)
        if answer.status_code >= 300:
            raise ToxiproxyError(f"{method} {url}: {answer.status_code} {answer.text.strip()}")
        return answer.json() if answer.content else None

    async def path(self, name: str, listen_port: int, upstream: str) -> Path:
        """Create (or re-create, clean) a proxy from ``127.0.0.1:listen_port`` to ``upstream``."""
        await self.remove(name)
        path = Path(name, listen_port, upstream)
        await self._call(
            "POST", "/proxies", {"name": name, "listen": path.listen, "upstream": upstream}
        )
        return path

    async def remove(self, name: str) -> None:
        answer = await self._http.delete(f"/proxies/{name}")
        if answer.status_code not in (204, 404):
            raise ToxiproxyError(f"DELETE /proxies/{name}: {answer.status_code} {answer.text}")

    async def _toxic(
        self, path: Path, kind: str, stream: Stream, attributes: dict[str, int], label: str
    ) -> None:
        for direction in ("upstream", "downstream") if stream == "both" else (stream,):
            await self._call(
                "POST",
                f"/proxies/{path.name}/toxics",
                {
                    "name": f"{label}-{direction}",
                    "type": kind,
                    "stream": direction,
                    "toxicity": 1.0,
                    "attributes": attributes,
                },
            )

    async def blackhole(self, path: Path, stream: Stream = "both") -> None:
        """Bytes stop in ``stream`` ("upstream": towards the upstream server); nothing closes."""
        await self._toxic(path, "timeout", stream, {"timeout": 0}, "blackhole")

    async def latency(
        self, path: Path, millis: int, jitter_millis: int = 0, stream: Stream = "both"
    ) -> None:
        await self._toxic(
            path, "latency", stream, {"latency": millis, "jitter": jitter_millis}, "latency"
        )

    async def bandwidth(self, path: Path, kilobytes_per_second: int, stream: Stream) -> None:
        await self._toxic(path, "bandwidth", stream, {"rate": kilobytes_per_second}, "bandwidth")

    async def reset_connections(self, path: Path, after_millis: int = 0) -> None:
        await self._toxic(path, "reset_peer", "both", {"timeout": after_millis}, "reset")

    async def disable(self, path: Path) -> None:
        await self._call("POST", f"/proxies/{path.name}", {"enabled": False})

    async def heal(self, path: Path) -> None:
        """Remove every fault of ``path`` and enable it again."""
        proxy = await self._call("GET", f"/proxies/{path.name}")
        for toxic in proxy.get("toxics") or []:
            await self._call("DELETE", f"/proxies/{path.name}/toxics/{toxic['name']}")
        if not proxy.get("enabled", True):
            await self._call("POST", f"/proxies/{path.name}", {"enabled": True})

    async def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        await self._call("POST", "/reset")
