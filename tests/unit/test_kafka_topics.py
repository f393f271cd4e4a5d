"""How the app's topics are replicated for the cluster's size (ADR 0029): three copies and two in
sync where there are three nodes or more, one copy per node below."""

from __future__ import annotations

import pytest

from messaging.infra.kafka import Replication


@pytest.mark.parametrize(
    ("brokers", "replicas", "configs"),
    [
        (1, 1, {}),
        (2, 2, {}),
        (3, 3, {"min.insync.replicas": "2"}),
        (5, 3, {"min.insync.replicas": "2"}),
    ],
)
def test_topics_get_three_replicas_and_two_in_sync_where_the_cluster_has_three_nodes(
    brokers: int, replicas: int, configs: dict[str, str]
) -> None:
    replication = Replication(brokers)
    assert (replication.replicas, replication.configs) == (replicas, configs)
