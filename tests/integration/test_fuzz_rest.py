"""Live REST fuzzing: every operation in the app's ``/openapi.json`` with Hypothesis requests.

For each operation (``auth/otp``, ``auth/verify``, ``chats/direct``, ``chats/groups``, members
add/remove/list, message history, ``users/by-phone``, ``auth/logout``, ...): first a catalog of
single faults derived from the operation's schema (one valid call, then each body field missing
or of each wrong type, unknown or malformed ids, each path and query parameter wrong, the token
missing or garbled, malformed JSON bytes), then Hypothesis calls: near-valid bodies, random JSON
values, cut-off JSON, bodies over the size limit, the right or a wrong content type, real or
junk path ids, any query text, a valid, missing or garbled bearer token. Then:

- never a 5xx;
- every 4xx body is exactly ``{"error": {"code", "message", "retriable"}}``;
- a refused request (4xx) changes nothing: the caller's chat list (with heads and acks), a
  non-member's chat list, the member lists of the caller's group and of a chat the caller is not
  in are as before. A request that succeeded may change them (a valid body is a valid request);
- every operation was reached past its input checks at least once, and refused at least once.

A last test sends a body over the size limit that never ends: it must be refused once the
limit is passed, not buffered whole first.

Each operation gets a brief run by default (a fixed set of examples);
``MESSAGING_TEST_FUZZ_EXAMPLES=N`` runs N random examples per operation instead.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messaging.web.requests import MAX_BODY_BYTES
from tests.harness import AppProcess
from tests.integration.raw import Account
from tests.integration.sync_client import (
    check_error_body,
    fuzz_derandomize,
    fuzz_examples,
    healthy,
    login,
    send_and_ack,
    session,
    weighted,
)

FRESH = itertools.count(int(time.time() * 1000))  # fresh phone numbers
CONTENT_TYPES = [
    "application/json",
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=zzz",
    "application/json; charset=latin-1",
    None,
]
SHALLOW = {  # refusals before an operation does anything
    "invalid_input",
    "limit_exceeded",
    "unauthenticated",
    "token_invalid",
    "token_expired",
    "not_found",
    "method_not_allowed",
    "http_error",
}
EXPECTED_OPERATIONS = {
    ("POST", "/v1/auth/otp"),
    ("POST", "/v1/auth/verify"),
    ("POST", "/v1/auth/logout"),
    ("GET", "/v1/users/by-phone"),
    ("POST", "/v1/chats/direct"),
    ("POST", "/v1/chats/groups"),
    ("GET", "/v1/chats/{chat_id}/members"),
    ("POST", "/v1/chats/{chat_id}/members"),
    ("DELETE", "/v1/chats/{chat_id}/members/{user_id}"),
    ("GET", "/v1/chats/{chat_id}/messages"),
}


@attrs.define
class World:
    app: AppProcess
    caller: Account  # the fuzzing user: owner of the group
    watcher: Account  # a group member never named by the fuzzer: reads the member list
    bob: Account
    carol: Account
    dave: Account  # in no chat of the caller
    group: str
    direct: str  # caller and bob
    outside: str  # bob and carol: the caller is not in it

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.app.base_url, timeout=10)

    def snapshot(self, http: httpx.Client) -> dict[str, Any]:
        """What a refused request must not change."""

        def get(account: Account, path: str) -> Any:
            answer = http.get(path, headers=account.headers)
            return answer.status_code, answer.json()

        return {
            "caller_chats": get(self.caller, "/v1/chats"),
            "dave_chats": get(self.dave, "/v1/chats"),
            "members": get(self.watcher, f"/v1/chats/{self.group}/members"),
            "outside_members": get(self.bob, f"/v1/chats/{self.outside}/members"),
        }


@pytest.fixture(scope="module")
def world(apps: list[AppProcess]) -> World:
    app = apps[1]
    caller, watcher, bob, carol, dave = (login(app) for _ in range(5))
    with httpx.Client(base_url=app.base_url, timeout=10) as http:

        def post(account: Account, path: str, body: dict[str, Any]) -> str:
            answer = http.post(path, json=body, headers=account.headers)
            assert answer.status_code in (200, 201), answer.text
            return str(answer.json()["chat"]["chat_id"])

        group = post(
            caller,
            "/v1/chats/groups",
            {"title": "fuzzed", "member_ids": [watcher.user_id, bob.user_id, carol.user_id]},
        )
        direct = post(caller, "/v1/chats/direct", {"user_id": bob.user_id})
        outside = post(bob, "/v1/chats/direct", {"user_id": carol.user_id})
    with session(app, bob) as socket:
        for chat_id in (group, direct, outside):
            send_and_ack(socket, chat_id, f"seed-{chat_id}", "seed")
    return World(app, caller, watcher, bob, carol, dave, group, direct, outside)


def operations(app: AppProcess) -> list[tuple[str, str, dict[str, Any]]]:
    document = httpx.get(app.base_url + "/openapi.json", timeout=10).json()
    return [
        (method.upper(), path, operation)
        for path, methods in sorted(document["paths"].items())
        for method, operation in sorted(methods.items())
    ]


# ------------------------------------------------------------------ strategies

any_text = st.text(st.characters(codec="utf-8"), max_size=40)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**53, -(2**63), 10**30])
    | st.floats(allow_nan=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=10,
)


def _encode(value: object) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


@attrs.frozen
class Call:
    method: str
    path: str
    params: dict[str, str]
    content: bytes | None
    content_type: str | None
    auth: str


def call_strategy(world: World, method: str, path: str, operation: dict[str, Any]) -> Any:
    users = [world.bob, world.carol, world.dave, world.caller]
    user_ids = weighted(
        (5, st.sampled_from([u.user_id for u in users])),
        (1, st.from_regex(r"u_[0-9a-f]{32}", fullmatch=True)),  # no such user
        (1, st.sampled_from(["u_" + "A" * 32, "", "u_"])),
        (1, any_text),
    )
    chat_ids = weighted(
        (4, st.sampled_from([world.group, world.group, world.direct, world.outside])),
        (1, st.sampled_from(["g_" + "0" * 32, "d_" + "f" * 32])),
        (1, any_text),
    )
    phones = weighted(
        (2, st.builds(lambda: f"+1556{next(FRESH) % 10**7:07d}")),
        (2, st.sampled_from([world.bob.phone, world.caller.phone, world.carol.phone])),
        (1, any_text),
    )

    def value_for(name: str, schema: dict[str, Any]) -> Any:
        if "u_" in schema.get("pattern", ""):
            return user_ids
        if name in ("phone",) or "examples" in schema:
            return phones
        if name == "code":
            return st.from_regex(r"[0-9]{6}", fullmatch=True) | any_text
        if name == "device_id":
            return st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True) | any_text
        if name == "chat_id":
            return chat_ids
        kind = schema.get("type")
        if kind == "array":
            return st.lists(value_for(name, schema.get("items", {})), max_size=4)
        if kind == "integer":
            return st.integers(-5, 300) | st.sampled_from([2**53, 2**64])
        if name == "title":
            return weighted(
                (3, st.text(min_size=1, max_size=30)),
                (1, st.sampled_from(["", "   ", "t" * 101, "👍" * 100])),
            )
        return any_text

    @st.composite
    def near_valid_body(draw: st.DrawFn, schema: dict[str, Any]) -> bytes:
        """Valid fields, then one fault (or several): a field missing, of the wrong type,
        and maybe extra fields."""
        names = list(schema.get("properties", {}))
        body = {name: draw(value_for(name, schema["properties"][name])) for name in names}
        faults = draw(st.sampled_from([0, 1, 1, 1, 2])) if names else 0
        for name in draw(st.permutations(names))[:faults]:
            if draw(st.booleans()):
                body[name] = draw(json_values)
            else:
                del body[name]
        if draw(st.integers(0, 3)) == 0:
            body.update(draw(st.dictionaries(any_text, json_values, max_size=3)))
        return _encode(body)

    @st.composite
    def cut(draw: st.DrawFn, whole: st.SearchStrategy[bytes]) -> bytes:
        """Malformed JSON: a valid text cut short, maybe with junk bytes in."""
        text = draw(whole)
        at = draw(st.integers(0, max(0, len(text) - 1)))
        return text[:at] + draw(st.binary(max_size=3))

    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    objects = near_valid_body(schema.get("schema", {}))
    junk_bodies = st.one_of(
        json_values.map(_encode),
        st.binary(max_size=80),
        cut(objects),
        cut(json_values.map(_encode)),
        st.builds(lambda n: _encode({"title": "t" * n}), st.just(MAX_BODY_BYTES + 1)),
        st.just(b'{"a":' * 1500 + b"1" + b"}" * 1500),  # deeper than the parser allows
    )
    if "schema" in schema:
        bodies = weighted((5, objects), (2, junk_bodies))
    else:
        bodies = weighted((3, st.none()), (1, junk_bodies))

    path_values = {
        p["name"]: (chat_ids if p["name"] == "chat_id" else value_for(p["name"], p["schema"]))
        for p in operation.get("parameters", [])
        if p["in"] == "path"
    }
    query_values = {
        p["name"]: weighted(
            (3, value_for(p["name"], p["schema"]).map(str)),
            (1, any_text),
            (1, st.none()),
        )
        for p in operation.get("parameters", [])
        if p["in"] == "query"
    }
    token = world.caller.token
    auths = weighted(
        (10, st.just(f"Bearer {token}")),
        (1, st.sampled_from(["", "Bearer", f"Basic {token}", f"Bearer {token[:-3]}xyz"])),
        (1, st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=30)),
    ).map(str.strip)  # what HTTP allows in a header value

    @st.composite
    def calls(draw: st.DrawFn) -> Call:
        concrete = path
        for name, values in path_values.items():
            concrete = concrete.replace("{" + name + "}", quote(str(draw(values)), safe=""))
        params = {name: draw(values) for name, values in query_values.items()}
        params = {name: value for name, value in params.items() if value is not None}
        if draw(st.integers(0, 4)) == 0:
            params.update(draw(st.dictionaries(any_text, any_text, max_size=2)))
        return Call(
            method=method,
            path=concrete,
            params=params,
            content=draw(bodies),
            content_type=draw(st.sampled_from(CONTENT_TYPES)),
            auth=draw(auths),
        )

    return calls()


# ------------------------------------------------------------------ single faults

WRONG_TYPES: list[Any] = [None, 1, -1, 2**64, 1.5, True, [], {}, "", "\ud800", "x" * 300]


def valid_value(world: World, name: str, schema: dict[str, Any]) -> Any:
    """A value the operation accepts (the body's or path's first choice)."""
    if name in ("chat_id",):
        return world.group
    if "u_" in schema.get("pattern", "") or name == "user_id":
        return world.dave.user_id
    if schema.get("type") == "array":
        return [world.dave.user_id]
    if name == "phone":
        return f"+1557{next(FRESH) % 10**7:07d}"
    if name == "code":
        return "000000"
    if name == "device_id":
        return "fuzz-device-1"
    if name == "title":
        return "single fault"
    if schema.get("type") == "integer":
        return 1
    return "x"


def faults_for(world: World, name: str, schema: dict[str, Any]) -> list[Any]:
    """Values of a field that must be refused (or, for ids, name nothing the caller has)."""
    unknown_user = "u_" + "0" * 32
    values: list[Any] = list(WRONG_TYPES)
    if "u_" in schema.get("pattern", "") or name == "user_id":
        values += [unknown_user, "u_" + "A" * 32, world.caller.user_id]
    if schema.get("type") == "array":
        values += [
            [unknown_user],
            [world.dave.user_id, unknown_user],
            [world.dave.user_id, "u_x"],
            [world.dave.user_id, 7],
            [[world.dave.user_id]],
            ["u_" + f"{n:032x}" for n in range(300)],  # over the group size limit
        ]
    if name == "title":
        values += ["   ", "t" * 101]
    if name == "phone":
        values += ["+0123456789", "+1 555", "12345678901", "+١٢٣٤٥٦٧٨٩"]
    if name == "code":
        values += ["12345", "1234567", "abcdef", "١٢٣٤٥٦"]
    if name == "device_id":
        values += ["short", "x" * 65, "bad device!"]
    return values


def catalog(world: World, method: str, path: str, operation: dict[str, Any]) -> list[Call]:
    """A valid call, then each field, path and query parameter and the token alone made wrong
    (single faults: the cases a random search rarely builds), and malformed bodies."""
    token = f"Bearer {world.caller.token}"
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
    properties: dict[str, Any] = schema.get("schema", {}).get("properties", {})
    body = {n: valid_value(world, n, s) for n, s in properties.items()} if schema else None
    parameters = operation.get("parameters", [])
    path_args = {
        p["name"]: valid_value(world, p["name"], p["schema"])
        for p in parameters
        if p["in"] == "path"
    }
    query = {  # a phone in a query is looked up: a registered one
        p["name"]: world.bob.phone if p["name"] == "phone" else "1"
        for p in parameters
        if p["in"] == "query" and p.get("required")
    }

    def make(
        args: dict[str, Any] = path_args,
        params: dict[str, str] = query,
        content: Any = body,
        raw: bytes | None = None,
        auth: str = token,
    ) -> Call:
        concrete = path
        for name, value in args.items():
            concrete = concrete.replace("{" + name + "}", quote(str(value), safe=""))
        encoded = raw if raw is not None else None if content is None else _encode(content)
        return Call(method, concrete, params, encoded, "application/json", auth)

    calls = [make(), make(auth=""), make(auth=token[:-2] + "xx"), make(auth="Bearer a.b.c")]
    for name, field_schema in properties.items():
        assert body is not None
        calls.append(make(content={k: v for k, v in body.items() if k != name}))
        for bad in faults_for(world, name, field_schema):
            calls.append(make(content={**body, name: bad}))
    if body is not None:
        calls += [
            make(content={**body, "extra": {"nested": [1, 2]}}),
            make(raw=_encode(body)[:-1]),
            make(raw=b"\xff\xfe" + _encode(body)),
            make(raw=_encode([body])),
            make(raw=b""),
        ]
    for p in parameters:
        if p["in"] == "path":
            for bad in [world.outside, "g_" + "0" * 32, "d_" + "f" * 32, "x", "%00", "\u00e9"]:
                calls.append(make(args={**path_args, p["name"]: bad}))
        if p["in"] == "query":
            for bad in ["", "-1", "0", "abc", "1e3", "9" * 30, " 5", "\u0661", "+1 555 0100"]:
                calls.append(make(params={**query, p["name"]: bad}))
    return calls


# ------------------------------------------------------------------ the test


def test_fuzzed_requests_get_4xx_with_an_error_body_and_change_nothing(
    apps: list[AppProcess], world: World
) -> None:
    found = operations(world.app)
    assert {(method, path) for method, path, _ in found} >= EXPECTED_OPERATIONS
    seen: dict[str, set[tuple[int, str]]] = {}
    with world.http() as http:
        for method, path, operation in found:
            caller = world
            if (method, path) == ("POST", "/v1/auth/logout"):
                caller = attrs.evolve(world, caller=login(world.app))  # its own session
            answers = seen.setdefault(f"{method} {path}", set())
            checker = Checker(caller, http, answers)
            for call in catalog(caller, method, path, operation):
                checker.check(call)
            fuzz_operation(checker, call_strategy(caller, method, path, operation))
    assert healthy(world.app)
    # Every operation was reached past its input checks at least once, and refused too.
    for label, answers in seen.items():
        assert any(status < 300 or code not in SHALLOW for status, code in answers), (label, seen)
        assert any(400 <= status < 500 for status, _ in answers), (label, seen)


class Checker:
    def __init__(self, world: World, http: httpx.Client, answers: set[tuple[int, str]]) -> None:
        self.world = world
        self.http = http
        self.answers = answers
        self.before = world.snapshot(http)

    def check(self, call: Call) -> None:
        headers: list[tuple[bytes, bytes]] = []
        if call.auth:
            headers.append((b"authorization", call.auth.encode("latin-1")))
        if call.content_type is not None:
            headers.append((b"content-type", call.content_type.encode()))
        answer = self.http.request(
            call.method, call.path, params=call.params, content=call.content, headers=headers
        )
        assert answer.status_code < 500, (call, answer.status_code, answer.text[:500])
        after = self.world.snapshot(self.http)
        code = ""
        if 400 <= answer.status_code < 500:
            code = check_error_body(answer)["code"]
            assert after == self.before, (call, answer.status_code, answer.text[:300])
        self.answers.add((answer.status_code, code))
        self.before = after


def fuzz_operation(checker: Checker, calls: Any) -> None:
    @settings(
        max_examples=fuzz_examples(20),
        deadline=None,
        database=None,
        derandomize=fuzz_derandomize(),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(call=calls)
    def run(call: Call) -> None:
        checker.check(call)

    run()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_before_it_is_all_sent(world: World, framing: str) -> None:
    """A client that announces (or streams) a huge body gets its 4xx once the limit is passed,
    not after the server has buffered the whole body (a memory exhaustion by one request)."""
    declared = 512 * 1024 * 1024
    if framing == "content-length":
        head = f"Content-Length: {declared}\r\n"
        sent = b"{" + b" " * (MAX_BODY_BYTES + 4096)
    else:
        head = "Transfer-Encoding: chunked\r\n"
        chunk = b" " * 16384
        sent = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
    with socket.create_connection(("127.0.0.1", world.app.port), timeout=10) as raw:
        raw.sendall(
            (
                "POST /v1/auth/otp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\n{head}\r\n"
            ).encode()
            + sent
        )
        raw.settimeout(5)  # the rest of the body never comes
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = raw.recv(4096)
            if not data:
                break
            answer += data
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1:2] in ([b"413"], [b"422"]), answer[:300]
    assert healthy(world.app)
