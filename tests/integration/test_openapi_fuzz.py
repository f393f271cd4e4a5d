"""schemathesis against the OpenAPI document the app serves: no input may cause a server error.

Every REST operation (identity's and durability's) is generated from ``/openapi.json`` and
called on a real app process, with a valid access token so that generation reaches past the
authentication check. (schemathesis's pytest plugin does not run under pytest 9 here, so the
operations' Hypothesis strategies are driven directly.)
"""

from __future__ import annotations

import asyncio

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.harness import AppProcess
from tests.integration.raw import login

EXAMPLES_PER_OPERATION = 30


def test_no_input_causes_a_server_error(apps: list[AppProcess]) -> None:
    base_url = apps[0].base_url
    account = asyncio.run(login(apps[0]))
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [o.label for o in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=base_url, headers=account.headers, timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        call()
