"""The fleet proxy's one rule, as a table: what may reach the SuperLink from the public address."""

import pytest

from zk0cli.services.fleet_front.rules import is_allowed


@pytest.mark.parametrize(
    ("method", "target", "allowed"),
    [
        (b"POST", b"/v1/fleet/pull-messages", True),
        (b"POST", b"/v1/fleet/activate-node?x=1", True),
        (b"GET", b"/health", True),
        (b"HEAD", b"/health", True),
        (b"POST", b"/health", False),
        (b"POST", b"/v1/control/list-runs", False),
        (b"POST", b"/v1/control/start-run", False),
        (b"POST", b"/v1/runtime/pull-task", False),
        (b"GET", b"/docs", False),
        (b"GET", b"/openapi.json", False),
        (b"POST", b"/v1/fleet/../control/list-runs", False),
        (b"POST", b"/v1/fleet/%2e%2e/control/list-runs", False),
        (b"POST", b"/v1/fleet//control", False),
        (b"POST", b"/v1/fleet\\..\\control", False),
        (b"POST", b"http://127.0.0.1/v1/fleet/pull-messages", False),  # absolute-form: not for an origin server
        (b"POST", b"/v1/fleetx/pull-messages", False),
        (b"POST", b"/health/../v1/control/list-runs", False),
    ],
)
def test_only_fleet_calls_and_health_pass(method, target, allowed):
    assert is_allowed(method, target) is allowed
