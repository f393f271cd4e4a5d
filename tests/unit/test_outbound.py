"""The outbound queue's two lanes: live offers never wait and refuse what does not fit; paced
puts wait for the queue to drain below half, so a long replay follows the reader's pace."""

from __future__ import annotations

import asyncio

from messaging.connection.outbound import OutboundQueue


def test_offer_refuses_past_either_limit() -> None:
    by_count = OutboundQueue(max_messages=3, max_bytes=1000)
    assert all(by_count.offer(b"x") for _ in range(3))
    assert not by_count.offer(b"x")
    by_bytes = OutboundQueue(max_messages=100, max_bytes=10)
    assert by_bytes.offer(b"12345")
    assert by_bytes.offer(b"12345")
    assert not by_bytes.offer(b"1")
    assert (len(by_bytes), by_bytes.size_bytes) == (2, 10)


def test_bytes_are_utf8_bytes_not_characters() -> None:
    queue = OutboundQueue(max_messages=100, max_bytes=8)
    assert queue.offer("👍👍".encode())  # 8 bytes, 2 characters
    assert not queue.offer(b"x")


async def test_frames_come_out_in_order() -> None:
    queue = OutboundQueue(max_messages=10, max_bytes=1000)
    for i in range(5):
        assert queue.offer(str(i).encode())
    assert [await queue.get() for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]


async def test_a_paced_replay_of_ten_thousand_frames_never_overflows_and_leaves_room() -> None:
    """10,000 replayed frames through a 100-frame queue, read at the reader's pace: all arrive
    in order, the queue never holds more than half, and live offers always fit meanwhile."""
    queue = OutboundQueue(max_messages=100, max_bytes=64 * 1024)
    received: list[bytes] = []
    live_refused = 0
    deepest = 0

    async def replay() -> None:
        for i in range(10_000):
            await queue.put_paced(f"r{i}".encode())

    async def reader() -> None:
        nonlocal live_refused, deepest
        replayed = 0
        while replayed < 10_000:
            deepest = max(deepest, len(queue))
            if len(received) % 100 == 0 and not queue.offer(b"live"):
                live_refused += 1
            frame = await queue.get()
            received.append(frame)
            replayed += frame.startswith(b"r")
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(replay(), reader()), 30)
    replayed = [f for f in received if f.startswith(b"r")]
    assert replayed == [f"r{i}".encode() for i in range(10_000)]
    assert live_refused == 0
    assert deepest <= 100 // 2 + 1
