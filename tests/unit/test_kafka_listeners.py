"""The stack's Kafka node with extra listeners for per-process fault proxies (ADR 0028): each
``LISTEN:ADVERTISED`` pair is a listener on LISTEN that advertises 127.0.0.1:ADVERTISED."""

from __future__ import annotations

from pathlib import Path

import pytest

from messaging.devstack import stack
from messaging.devstack.services import Kafka
from messaging.settings import Settings, SettingsError, from_env


def _node(settings: Settings) -> Kafka:
    (node,) = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    return node


def _properties(settings: Settings) -> dict[str, str]:
    text = _node(settings)._properties().read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_without_proxy_listeners_the_node_has_one_client_listener(tmp_path: Path) -> None:
    props = _properties(Settings(stack_dir=tmp_path))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"


def test_each_proxy_listener_advertises_its_proxy(tmp_path: Path) -> None:
    settings = Settings(
        stack_dir=tmp_path, stack_kafka_proxy_listeners=((29100, 29101), (29102, 29103))
    )
    props = _properties(settings)
    assert props["listeners"] == (
        "PLAINTEXT://127.0.0.1:9092,PROXY1://127.0.0.1:29100,PROXY2://127.0.0.1:29102,"
        "CONTROLLER://127.0.0.1:9093"
    )
    assert props["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:9092,PROXY1://127.0.0.1:29101,PROXY2://127.0.0.1:29103"
    )
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXY1:PLAINTEXT,PROXY2:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "PLAINTEXT"
    assert (29100, "MESSAGING_STACK_KAFKA_PROXY_LISTENERS") in _node(settings).ports()


def test_the_replicated_profile_adds_no_proxy_listener(tmp_path: Path) -> None:
    settings = Settings(
        stack_dir=tmp_path, stack_kafka_brokers=3, stack_kafka_proxy_listeners=((29100, 29101),)
    )
    nodes = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    for node in nodes:
        assert "PROXY" not in node._properties().read_text()


def test_the_setting_takes_port_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGING_STACK_KAFKA_PROXY_LISTENERS", "29100:29101, 29102:29103")
    assert from_env().stack_kafka_proxy_listeners == ((29100, 29101), (29102, 29103))
    monkeypatch.setenv("MESSAGING_STACK_KAFKA_PROXY_LISTENERS", "29100")
    with pytest.raises(SettingsError, match="LISTEN:ADVERTISED"):
        from_env()


def test_cluster_ids_never_start_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-storage read an id starting with "-" as an option and refused to format: the stack
    did not start in one CI run. Such ids are drawn again, as Kafka's own Uuid.randomUuid does."""
    import uuid

    from messaging.devstack import services

    draws = iter([uuid.UUID(bytes=b"\xfb" + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(draws))
    assert services._kafka_uuid() == "AAAAAAAAAAAAAAAAAAAAAA"


def test_the_format_command_passes_the_cluster_id_as_one_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from messaging.devstack import services

    node = _node(Settings(stack_dir=tmp_path))
    calls: list[list[str]] = []

    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(services.subprocess, "run", run)
    monkeypatch.setattr(type(node.process), "start", lambda self, argv: None)
    node.start()
    (argv,) = calls
    cluster_id = (node.data_dir.parent / "cluster-id").read_text().strip()
    assert f"--cluster-id={cluster_id}" in argv
    assert "-t" not in argv


def test_nodes_starting_at_once_format_with_one_cluster_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replicated profile's nodes start in threads at once. When each checked for the id
    file and wrote its own, two nodes could format with different ids, and the odd one never
    joined the quorum (one CI run waited 120 s for it)."""
    import itertools
    import subprocess
    import threading

    from messaging.devstack import services

    settings = Settings(stack_dir=tmp_path, stack_kafka_brokers=3)
    nodes = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    # Every node draws its offer before any writes one: the widest window of the race.
    barrier = threading.Barrier(len(nodes), timeout=10)
    counter = itertools.count()
    lock = threading.Lock()

    def draw() -> str:
        with lock:
            n = next(counter)
        barrier.wait()
        return f"id{n}"

    formatted: list[str] = []

    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        formatted.extend(a.split("=", 1)[1] for a in argv if a.startswith("--cluster-id="))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(services, "_kafka_uuid", draw)
    monkeypatch.setattr(services.subprocess, "run", run)
    monkeypatch.setattr(type(nodes[0].process), "start", lambda self, argv: None)
    threads = [threading.Thread(target=node.start) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(formatted) == len(nodes)
    assert len(set(formatted)) == 1, formatted
    assert sorted(p.name for p in (tmp_path / "kafka3-data").iterdir()) == [
        "cluster-id",
        "node-1",
        "node-2",
        "node-3",
    ]


def _replicated(tmp_path: Path, peer_base: int = 0) -> dict[int, dict[str, str]]:
    settings = Settings(
        stack_dir=tmp_path,
        stack_kafka_brokers=3,
        stack_kafka_port=21000,
        stack_kafka_controller_port=21001,
        stack_kafka_peer_proxy_port=peer_base,
    )
    nodes = [s for s in stack.services(settings) if isinstance(s, Kafka)]
    return {
        n.node: dict(
            line.split("=", 1) for line in n._properties().read_text().splitlines() if "=" in line
        )
        for n in nodes
    }


def test_without_peer_proxies_the_replicated_nodes_talk_directly(tmp_path: Path) -> None:
    for props in _replicated(tmp_path).values():
        assert props["inter.broker.listener.name"] == "PLAINTEXT"
        assert props["controller.quorum.voters"] == (
            "1@127.0.0.1:21001,2@127.0.0.1:21003,3@127.0.0.1:21005"
        )
        assert "R1" not in props["listeners"]


def test_with_peer_proxies_each_node_reaches_each_other_through_a_path_of_the_pair(
    tmp_path: Path,
) -> None:
    """ADR 0037: node s fetches from node t at the address t advertises on listener Rs, which is
    the proxy path s -> t, forwarding to t's Rs listener; node s lists the other voters at its
    own controller paths. So blackholing every path to and from one node cuts it off."""
    from messaging.devstack.services import kafka_peer_paths

    settings = Settings(
        stack_dir=tmp_path,
        stack_kafka_brokers=3,
        stack_kafka_port=21000,
        stack_kafka_controller_port=21001,
        stack_kafka_peer_proxy_port=21010,
    )
    props = _replicated(tmp_path, 21010)
    paths = {(p.source, p.target, p.kind): p for p in kafka_peer_paths(settings)}
    assert len(paths) == 12
    ports = [p.listen_port for p in paths.values()]
    ports += [int(a.rsplit(":", 1)[1]) for n in props.values() for a in n["listeners"].split(",")]
    assert len(set(ports)) == len(ports)  # no two listeners or paths share a port
    assert all(21000 <= port < 21010 + 27 for port in ports)
    for target, node in props.items():
        assert node["inter.broker.listener.name"] == f"R{target}"
        listeners = dict(a.split("://") for a in node["listeners"].split(","))
        advertised = dict(a.split("://") for a in node["advertised.listeners"].split(","))
        assert advertised["PLAINTEXT"] == listeners["PLAINTEXT"]  # clients connect directly
        assert advertised[f"R{target}"] == listeners[f"R{target}"]
        voters = dict(v.split("@") for v in node["controller.quorum.voters"].split(","))
        assert voters[str(target)] == listeners["CONTROLLER"]
        for source in {1, 2, 3} - {target}:
            via = paths[source, target, "broker"]
            assert advertised[f"R{source}"] == f"127.0.0.1:{via.listen_port}"
            assert listeners[f"R{source}"] == f"127.0.0.1:{via.upstream_port}"
            quorum = paths[target, source, "controller"]
            assert voters[str(source)] == f"127.0.0.1:{quorum.listen_port}"
            assert quorum.upstream_port == 21001 + 2 * (source - 1)
