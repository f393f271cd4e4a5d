from __future__ import annotations

import attrs
import pytest

from messaging.bootstrap import gateway_config
from messaging.connection.config import GatewayConfig
from messaging.settings import (
    DEV_JWT_SECRET,
    Settings,
    SettingsError,
    from_env,
    lifted_limits_env,
)


def test_defaults_work_for_a_local_run() -> None:
    settings = from_env({})
    assert settings.env == "dev"
    assert settings.port == 8000
    assert settings.dynamodb_endpoint == "http://127.0.0.1:8001"
    assert settings.instance_id  # derived when not given


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MESSAGING_PORT", "abc", "MESSAGING_PORT: expected an integer, got 'abc'"),
        ("MESSAGING_PORT", "70000", "MESSAGING_PORT: expected an integer from 1 to 65535"),
        ("MESSAGING_ENV", "prod", "MESSAGING_ENV: expected one of dev, test, production"),
        ("MESSAGING_FAULT_HOOKS", "maybe", "MESSAGING_FAULT_HOOKS: expected true or false"),
        ("MESSAGING_DYNAMODB_ENDPOINT", "localhost:8001", "MESSAGING_DYNAMODB_ENDPOINT:"),
        ("MESSAGING_NOPE", "1", "MESSAGING_NOPE: unknown setting"),
        ("MESSAGING_ALLOWED_ORIGINS", "*", "MESSAGING_ALLOWED_ORIGINS: expected comma-separated"),
        (
            "MESSAGING_ALLOWED_ORIGINS",
            "https://a.example/path",
            "MESSAGING_ALLOWED_ORIGINS: expected comma-separated",
        ),
        ("MESSAGING_LIMIT_SENDS_BURST", "0", "MESSAGING_LIMIT_SENDS_BURST: expected an integer"),
    ],
)
def test_a_bad_value_names_the_variable(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match="^" + expected.replace("(", r"\(")):
        from_env({variable: value})


PRODUCTION_OK = {
    "MESSAGING_ENV": "production",
    "MESSAGING_JWT_SECRET": "x" * 40,
    "MESSAGING_OTP_SENDER": "log-only",
}


def test_production_accepts_a_proper_configuration() -> None:
    assert from_env(PRODUCTION_OK).is_production


@pytest.mark.parametrize(
    ("override", "variable"),
    [
        ({"MESSAGING_OTP_SENDER": "dev"}, "MESSAGING_OTP_SENDER"),
        ({"MESSAGING_JWT_SECRET": DEV_JWT_SECRET}, "MESSAGING_JWT_SECRET"),
        ({"MESSAGING_JWT_SECRET": "short"}, "MESSAGING_JWT_SECRET"),
        ({"MESSAGING_FAULT_HOOKS": "1"}, "MESSAGING_FAULT_HOOKS"),
    ],
)
def test_production_refuses_unsafe_settings(override: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=f"^{variable}"):
        from_env({**PRODUCTION_OK, **override})


def test_the_test_suites_own_variables_are_not_settings() -> None:
    assert from_env({"MESSAGING_TEST_MOTO_ENDPOINT": "http://127.0.0.1:1"}).port == 8000


def test_service_endpoints_follow_the_stack_ports_unless_given() -> None:
    moved = from_env(
        {
            "MESSAGING_STACK_KAFKA_PORT": "19092",
            "MESSAGING_STACK_DYNAMODB_PORT": "18001",
            "MESSAGING_STACK_REDIS_PORT": "16379",
        }
    )
    assert moved.kafka_bootstrap == "127.0.0.1:19092"
    assert moved.dynamodb_endpoint == "http://127.0.0.1:18001"
    assert moved.redis_url == "redis://127.0.0.1:16379/0"
    explicit = from_env(
        {"MESSAGING_STACK_REDIS_PORT": "16379", "MESSAGING_REDIS_URL": "redis://h:1/2"}
    )
    assert explicit.redis_url == "redis://h:1/2"


def test_allowed_origins_are_a_normalised_list() -> None:
    settings = from_env({"MESSAGING_ALLOWED_ORIGINS": " https://Chat.example.com/, http://a:8080"})
    assert settings.allowed_origins == ("https://chat.example.com", "http://a:8080")
    assert from_env({}).allowed_origins == ()


def test_lifted_limits_are_valid_settings() -> None:
    settings = from_env(lifted_limits_env())
    assert settings.limit_sends_burst == 1_000_000
    assert settings.limit_rest_burst_per_address == 1_000_000


def test_every_operator_tunable_of_the_gateway_comes_from_settings() -> None:
    """Declared once (ADR 0022): GatewayConfig's fields without a default are exactly what the
    composition root fills from ``Settings``, and each follows its setting."""
    from_settings = [f.name for f in attrs.fields(GatewayConfig) if f.default is attrs.NOTHING]
    defaults = gateway_config(Settings())
    changed = gateway_config(
        Settings(
            outbound_queue_messages=7,
            outbound_queue_bytes=2048,
            ws_max_frame_bytes=512,
            ws_auth_timeout_seconds=1.5,
            ws_idle_timeout_seconds=9.0,
            sync_page_size=3,
            limit_sends_per_second=1.0,
            limit_sends_burst=2,
            limit_syncs_per_minute=6,
            limit_connections_per_user=4,
            limit_connections_per_address=5,
            allowed_origins=("https://chat.example.com",),
            dynamodb_deadline_seconds=2.0,
        )
    )
    assert len(from_settings) == 12
    assert [n for n in from_settings if getattr(defaults, n) == getattr(changed, n)] == []


def test_every_abuse_limit_is_documented_in_the_readme() -> None:
    """The README's limits paragraph names every limit setting (``MESSAGING_LIMIT_*`` and the
    OTP windows, which issue 15 found undocumented), in full or as a ``_SUFFIX`` of the one
    before it; the OTP per-address limit is configurable like the others."""
    import re
    from pathlib import Path

    import attrs

    from messaging.settings import Settings, env_var

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    named = set(re.findall(r"`(_?[A-Z][A-Z0-9_]+)`", readme))
    limits = [
        field.name
        for field in attrs.fields(Settings)
        if field.name.startswith(("limit_", "otp_requests_", "otp_rate_window", "otp_max_"))
    ]
    assert "otp_requests_per_address_per_window" in limits
    for name in limits:
        variable = env_var(name)
        assert variable in named or any(
            part.startswith("_") and variable.endswith(part) for part in named
        ), f"{variable} is not in the README's limits paragraph"
    assert (
        from_env(
            {env_var("otp_requests_per_address_per_window"): "7"}
        ).otp_requests_per_address_per_window
        == 7
    )
