"""Shared fixtures: the test session's settings (a private table prefix and topic)."""

from __future__ import annotations

import uuid

import attrs
import pytest

from messaging.settings import Settings, from_env

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """Settings for this test session: the local stack, private tables and topic."""
    settings = from_env()
    return attrs.evolve(
        settings,
        env="test",
        table_prefix=f"t{RUN_ID}-",
        kafka_messages_topic=f"messages-{RUN_ID}",
        kafka_consumer_group=f"fanout-{RUN_ID}",
        instance_id=f"pytest-{RUN_ID}",
    )
