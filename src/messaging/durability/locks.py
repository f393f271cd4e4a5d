"""Per-chat bounded queues, each drained by one worker task that exists only while it has work.

The ingest's group commit (ADR 0024): sends to one chat queue here, and the chat's worker (its
committer) takes what queued into one transaction at a time. The queues own their tasks: a task
starts with the first item of an idle chat, ends when its queue is empty, and :meth:`close`
answers what still waits and awaits (at last cancels) what is in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class ChatQueues(Generic[T]):
    def __init__(self, limit: int, worker: Callable[[str, deque[T]], Awaitable[None]]) -> None:
        self._limit = limit
        self._worker = worker
        self._queues: dict[str, deque[T]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def put(self, key: str, item: T) -> bool:
        """Queue ``item`` for ``key``'s worker (started if idle); ``False`` when the queue is
        full or closed (nothing was queued)."""
        if self._closed:
            return False
        queue = self._queues.setdefault(key, deque())
        if len(queue) >= self._limit:
            return False
        queue.append(item)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._run(key, queue), name=f"commit {key}")
        return True

    async def _run(self, key: str, queue: deque[T]) -> None:
        try:
            await self._worker(key, queue)
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - the worker answers its own failures
            log.exception("the worker of %s failed", key)
        finally:
            # No await between the worker's last look at its queue and here: an item put
            # meanwhile would have found this task and not started another.
            del self._tasks[key]
            if queue and not self._closed:
                self._tasks[key] = asyncio.create_task(self._run(key, queue), name=f"commit {key}")
            elif not queue:
                del self._queues[key]

    async def close(self, refuse: Callable[[T], None], grace_seconds: float = 10.0) -> None:
        """Refuse new items, hand every queued one to ``refuse``, let the workers finish what
        they hold (cancelled after ``grace_seconds``) and await them."""
        self._closed = True
        for queue in self._queues.values():
            while queue:
                refuse(queue.popleft())
        tasks = set(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def busy(self, key: str) -> bool:
        """Whether ``key``'s worker is running (an item in hand or queued)."""
        return key in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)
