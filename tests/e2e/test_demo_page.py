"""The demo page in headless Chromium: two users on two app processes (so every message crosses
Kafka from one process to the other), real-time both ways, history after a reload, catch-up after
going offline, user text shown as text, and emoji with right-to-left text."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import expect

from messaging.web.pages import CONTENT_SECURITY_POLICY
from tests.e2e.conftest import PHONE, People, Person
from tests.harness import AppProcess
from tests.integration.raw import Account, authed, login


async def chatting_pair(people: People) -> tuple[Person, Person]:
    """Alice (app 1) and Bob (app 2) logged in; Alice started a 1:1 chat with Bob and said hi;
    both have the chat open."""
    bob = await people("bob", app=1)
    await bob.login()
    alice = await people("alice", app=0)
    await alice.login()
    # A new account has no chats: focus moves from the login form to starting one.
    await expect(alice.page.get_by_label("Their phone number")).to_be_focused()
    await alice.start_direct(bob)
    await alice.send("hello Bob 👋")
    assert await alice.wait_message("hello Bob 👋") == 1
    # Bob had no chat: the first message made his page learn it, with one unread message.
    await expect(bob.page.locator("#chat-list .badge")).to_have_text("1 unread")
    await bob.open_first_chat()
    assert await bob.wait_message("hello Bob 👋") == 1
    return alice, bob


async def test_two_users_chat_both_ways(people: People) -> None:
    alice, bob = await chatting_pair(people)
    await expect(bob.page.locator("#chat-list .badge")).to_have_count(0)  # read: it is open
    await bob.send("hi Alice")
    assert await alice.wait_message("hi Alice") == 2
    await alice.send("how are you?")
    assert await bob.wait_message("how are you?") == 3
    expected = [(1, "hello Bob 👋"), (2, "hi Alice"), (3, "how are you?")]
    assert await alice.messages() == expected
    assert await bob.messages() == expected

    # States: own messages are acked by the server with their sequence; the others' messages
    # are received, then covered by this page's stored ack.
    mine = alice.page.locator('#messages li[data-seq="3"]')
    await expect(mine).to_have_attribute("data-state", "acked")
    await expect(mine.locator(".msg-state")).to_have_text("✓ acked by server")
    theirs = alice.page.locator('#messages li[data-seq="2"]')
    await expect(theirs).to_have_attribute("data-state", "delivered")
    await expect(alice.page.locator("#chat-meta")).to_contain_text("ack stored #3")
    await expect(bob.page.locator("#chat-meta")).to_contain_text("delivered here #3")
    await alice.screenshot("chat")
    await bob.screenshot("chat")


async def test_page_names_the_process_that_serves_it(
    people: People, apps: list[AppProcess]
) -> None:
    """Behind HAProxy (ADR 0031) a reconnect may land on another process: the corner says
    which one answered, from /healthz, before and after login."""
    alice = await people("alice", app=1)
    await alice.page.goto(alice.app.base_url + "/")
    served_by = alice.page.locator("#served-by")
    await expect(served_by).to_have_text(f"served by {apps[1].instance_id}")
    await alice.login()
    await expect(served_by).to_have_text(f"served by {apps[1].instance_id}")


async def test_reload_keeps_history(people: People) -> None:
    alice, bob = await chatting_pair(people)
    await bob.send("first reply")
    await bob.send("second reply")
    assert await alice.wait_message("second reply") == 3

    await alice.page.reload()
    await alice.wait_live()  # the session survived the reload (localStorage)
    # The chat stays open (#chat=… in the address) and its messages come back from REST.
    await expect(alice.page.locator("#messages li[data-seq]")).to_have_count(3)
    assert await alice.messages() == [
        (1, "hello Bob 👋"),
        (2, "first reply"),
        (3, "second reply"),
    ]
    await expect(alice.page.locator("#history-status")).to_have_text("Beginning of the chat")
    # And the real-time path works on the reloaded page.
    await bob.send("after your reload")
    assert await alice.wait_message("after your reload") == 4


async def test_offline_and_catch_up_in_order(people: People) -> None:
    alice, bob = await chatting_pair(people)
    toggle = bob.page.get_by_role("button", name="Go offline")
    await toggle.click()
    await expect(bob.page.locator("#conn-state")).to_have_attribute("data-state", "disconnected")
    await expect(bob.page.get_by_role("button", name="Go online")).to_have_attribute(
        "aria-pressed", "true"
    )

    for n in (1, 2, 3):
        await alice.send(f"while you were away {n}")
    for n, seq in ((1, 2), (2, 3), (3, 4)):
        assert await alice.wait_message(f"while you were away {n}") == seq
    # Bob, offline, writes too: the send waits, then goes out with the same client_message_id.
    await bob.send("typed while offline")
    pending = bob.page.locator("#messages li.pending")
    await expect(pending).to_have_attribute("data-state", "sending")
    pending_id = await pending.get_attribute("data-cmid")
    assert await bob.messages() == [(1, "hello Bob 👋")]
    await bob.screenshot("offline")

    await bob.page.get_by_role("button", name="Go online").click()
    await bob.wait_live()
    await expect(bob.page.locator("#toast")).to_have_text("Synced 3 messages")
    await expect(bob.page.locator("#reconnects")).to_have_text("1")
    assert await bob.wait_message("typed while offline") == 5
    assert await bob.page.locator("#messages li[data-seq='5']").get_attribute("data-cmid") == (
        pending_id
    )
    expected = [
        (1, "hello Bob 👋"),
        (2, "while you were away 1"),
        (3, "while you were away 2"),
        (4, "while you were away 3"),
        (5, "typed while offline"),
    ]
    assert await bob.messages() == expected
    assert await alice.wait_message("typed while offline") == 5
    assert await alice.messages() == expected
    # Bob's page acked what it delivered: the server stored it as his last_acked_sequence.
    await expect(bob.page.locator("#chat-meta")).to_contain_text("ack stored #5")
    await bob.page.locator("summary", has_text="Protocol log").click()
    await expect(bob.page.locator("#proto-log")).to_contain_text("sync_complete")
    await bob.screenshot("caught-up")


async def test_markup_is_shown_as_text(people: People) -> None:
    alice, bob = await chatting_pair(people)
    payload = "<script>alert(1)</script><b>bold</b>"
    await alice.send(payload)
    for person in (alice, bob):
        seq = await person.wait_message("<b>bold</b>")
        text = person.page.locator(f'#messages li[data-seq="{seq}"] .msg-text')
        assert await text.text_content() == payload
        await expect(person.page.locator("#messages b")).to_have_count(0)
        await expect(person.page.locator("#messages script")).to_have_count(0)
        assert not person.dialogs
    # The page's strict Content-Security-Policy (no inline scripts or styles, no framing).
    async with httpx.AsyncClient(base_url=alice.app.base_url) as http:
        for path, kind in (("/", "text/html"), ("/static/app.js", "javascript")):
            answer = await http.get(path)
            assert answer.status_code == 200, path
            assert kind in answer.headers["content-type"]
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-content-type-options"] == "nosniff"


async def test_emoji_and_right_to_left_text(people: People) -> None:
    bob = await people("bob", app=1, viewport=PHONE)  # a phone-sized screen
    await bob.login()
    alice = await people("alice", app=0)
    await alice.login()
    await alice.start_direct(bob)
    rtl = "שלום עולם 👋🏽 مرحبا بالعالم 👨‍👩‍👧‍👦"
    ltr = "hello שלום 🎉"
    await alice.send(rtl)
    await alice.send(ltr)
    await bob.open_first_chat()
    assert await bob.wait_message("مرحبا") == 1
    assert await bob.wait_message("hello") == 2
    for person in (alice, bob):
        for seq, text, direction in ((1, rtl, "rtl"), (2, ltr, "ltr")):
            node = person.page.locator(f'#messages li[data-seq="{seq}"] .msg-text')
            assert await node.text_content() == text
            await expect(node).to_have_attribute("dir", "auto")
            assert await node.evaluate("el => getComputedStyle(el).direction") == direction
    # On a phone-sized screen the open chat takes the whole width; the chat list is one tap back.
    await expect(bob.page.locator(".sidebar")).to_be_hidden()
    await bob.page.get_by_role("button", name="Back to the chat list").click()
    await expect(bob.page.locator(".sidebar")).to_be_visible()
    await bob.page.locator("#chat-list .chat-item").first.click()
    await expect(bob.page.locator("#messages li[data-seq]")).to_have_count(2)


async def test_group_and_history_on_scroll(people: People, apps: list[AppProcess]) -> None:
    carol = await login(apps[1])
    dave = await login(apps[0])
    alice = await people("alice", app=0)
    await alice.login()
    page = alice.page
    await page.locator("summary", has_text="New group").click()
    await page.get_by_label("Title").fill("Lab group 🧪")
    await page.get_by_label("Members' phone numbers").fill(f"{carol.phone}, {dave.phone}")
    await page.get_by_role("button", name="Create group").click()
    await expect(page.locator("#chat-title")).to_have_text("Lab group 🧪")
    await expect(page.locator("#history-status")).to_have_text("No messages yet")
    match = re.search(r"#chat=(g_[0-9a-f]+)$", page.url)
    assert match, page.url
    total = 45
    await send_many(apps[1], carol, match.group(1), total)
    assert await alice.wait_message(f"message {total} of {total}") == total
    # Acks are stored coalesced, within a window (ADR 0025): reload only once the last one is,
    # so that the page comes back with nothing to sync and its history from REST.
    await expect(page.locator("#chat-meta")).to_contain_text(f"ack stored #{total}")

    # After a reload the newest page comes from REST; older pages load when scrolled to the top.
    await page.reload()
    await alice.wait_live()
    await expect(page.locator("#messages li[data-seq]")).to_have_count(30)
    await expect(page.get_by_role("button", name="Load older messages")).to_be_visible()
    await page.locator("#messages-scroll").evaluate("box => { box.scrollTop = 0; }")
    await expect(page.locator("#history-status")).to_have_text("Beginning of the chat")
    assert [seq for seq, _ in await alice.messages()] == list(range(1, total + 1))
    await expect(page.locator("#chat-meta")).to_contain_text(f"ack stored #{total}")
    # Carol's phone is known to Alice's page (she looked it up), so it names the sender.
    first = page.locator('#messages li[data-seq="1"] .msg-sender')
    await expect(first).to_have_text(carol.phone)


async def send_many(app: AppProcess, account: Account, chat_id: str, count: int) -> None:
    socket = await authed(app, account)
    for n in range(1, count + 1):
        await socket.send(
            {
                "type": "send_message",
                "chat_id": chat_id,
                "client_message_id": f"seed-{n}",
                "text": f"message {n} of {count}",
            }
        )
        assert (await socket.recv_until("send_ack"))["sequence"] == n
    await socket.close()
