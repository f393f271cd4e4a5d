"""History: plain records, filled by the client, exported as JSON-ready dicts."""

from __future__ import annotations

import orjson

from messaging.client.history import History


def test_records_and_views() -> None:
    history = History(user_id="u_1", device_id="d1")
    send = history.send_requested("g_1", "d1-1", "hi")
    assert send.outcome == "pending"
    assert history.send("d1-1") is send
    assert history.send("nope") is None

    first = history.message_received(
        chat_id="g_1",
        sequence=1,
        sender_id="u_2",
        sender_device="d2",
        client_message_id="d2-1",
        text="hello",
        created_at_ms=1,
        received_at_ms=2,
        replay=False,
    )
    history.message_received(
        chat_id="g_2",
        sequence=1,
        sender_id="u_2",
        sender_device="d2",
        client_message_id="d2-2",
        text="there",
        created_at_ms=1,
        received_at_ms=2,
        replay=True,
    )
    assert first is not None
    first.delivered_at_ms = 3
    history.ack_sent("g_1", 1)
    history.acked_received("g_1", 1)
    history.connection_event("ready", connection_id="c_1")
    history.connection_event("closed", connection_id="c_1", close_code=4009)
    history.duplicates["g_1"] += 2
    history.errors["rate_limited"] += 1

    assert history.received_sequences("g_1") == [1]
    assert [r.chat_id for r in history.delivered()] == ["g_1"]
    assert history.delivered("g_2") == []

    exported = history.to_dict()
    assert exported["user_id"] == "u_1"
    assert exported["sends"][0]["client_message_id"] == "d1-1"
    assert exported["received"][0]["delivered_at_ms"] == 3
    assert exported["received"][1]["replay"] is True
    assert exported["acks"][0] == {
        "chat_id": "g_1",
        "sequence": 1,
        "sent_at_ms": exported["acks"][0]["sent_at_ms"],
    }
    assert exported["connections"][1]["close_code"] == 4009
    assert exported["duplicates"] == {"g_1": 2}
    assert exported["errors"] == {"rate_limited": 1}
    assert orjson.loads(orjson.dumps(exported)) == exported


def test_messages_need_not_be_recorded() -> None:
    history = History(record_messages=False)
    record = history.message_received(
        chat_id="g_1",
        sequence=1,
        sender_id="u",
        sender_device="d",
        client_message_id="c",
        text="t",
        created_at_ms=0,
        received_at_ms=0,
        replay=False,
    )
    assert record is None
    assert history.received == []
