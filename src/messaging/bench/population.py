"""Users and chats for a run, through the public REST API: every user logs in through the real
OTP flow (request a code, read it from the dev sender, verify), many at once."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import attrs
import httpx

from messaging.client import ChatInfo, ClientApiError, RestClient, Session

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class User:
    index: int
    session: Session

    @property
    def user_id(self) -> str:
        return self.session.user_id

    @property
    def device_id(self) -> str:
        return self.session.device_id

    @property
    def token(self) -> str:
        return self.session.token


class Population:
    """Logs users in and creates chats; one shared HTTP connection pool for all of them."""

    def __init__(self, base_url: str, *, concurrency: int = 32, tag: str | None = None) -> None:
        self.base_url = base_url
        self._limit = asyncio.Semaphore(concurrency)
        self._transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        )
        # A run's own phone block: +1 999 <3 digits> <6 digits> (E.164, 13 digits).
        self._block = tag or f"{random.randrange(1000):03d}"

    async def aclose(self) -> None:
        await self._transport.aclose()

    def rest(self, session: Session | None = None) -> RestClient:
        """A RestClient on the shared pool (do not close it: the pool is closed by aclose)."""
        return RestClient(self.base_url, session=session, transport=self._transport)

    def phone(self, index: int) -> str:
        return f"+1999{self._block}{index:06d}"

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` under the concurrency limit; transport errors and retriable API errors
        (a stack service restarting: 503 store_unavailable) are retried, 6 attempts at most."""
        async with self._limit:
            for attempt in range(6):
                try:
                    return await call()
                except (httpx.TransportError, ClientApiError) as exc:
                    if attempt == 5 or (isinstance(exc, ClientApiError) and not exc.retriable):
                        raise
                    await asyncio.sleep(0.25 * 2**attempt)
        raise AssertionError("unreachable")

    async def login(self, index: int, device_id: str | None = None) -> User:
        session = await self._retrying(
            lambda: self.rest().login_dev(
                self.phone(index), device_id or f"bench-device-{index:06d}"
            )
        )
        return User(index=index, session=session)

    async def users(
        self,
        count: int,
        *,
        start: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[list[User], float]:
        """Log ``count`` users in concurrently; returns them and the logins per second."""
        began = time.monotonic()
        done = 0
        last = began

        async def one(index: int) -> User:
            nonlocal done, last
            user = await self.login(index)
            done += 1
            now = time.monotonic()
            if progress is not None and now - last >= 1.0:
                last = now
                progress(f"logged in {done}/{count} users ({done / (now - began):.0f}/s)")
            return user

        users = await asyncio.gather(*(one(start + i) for i in range(count)))
        elapsed = max(time.monotonic() - began, 1e-6)
        return list(users), count / elapsed

    async def direct_chat(self, a: User, b: User) -> ChatInfo:
        return await self._retrying(lambda: self.rest(a.session).create_direct_chat(b.user_id))

    async def direct_chats(self, pairs: Sequence[tuple[User, User]]) -> list[ChatInfo]:
        return list(await asyncio.gather(*(self.direct_chat(a, b) for a, b in pairs)))

    async def group(self, creator: User, members: Sequence[User], title: str) -> ChatInfo:
        others = [m.user_id for m in members if m.user_id != creator.user_id]
        return await self._retrying(lambda: self.rest(creator.session).create_group(title, others))
