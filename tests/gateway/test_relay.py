"""An attempt's bookkeeping when it ends: whose fault a timeout is decides ejection and the status counted."""

from __future__ import annotations

import time

from corral.gateway.backends import Group
from corral.gateway.config import GroupConfig
from corral.gateway.metrics import GatewayMetrics
from corral.gateway.relay import RequestContext, _Done, _Failure


def attempt_ending(deadline_in_s: float) -> tuple[Group, _Done]:
    config = GroupConfig.model_validate({"backends": [{"url": "http://a"}], "ejection": {"consecutive_failures": 1}})
    group = Group.from_config("g", config, GatewayMetrics())
    backend = group.backends[0]
    backend.healthy, backend.in_flight = True, 1
    now = time.monotonic()
    ctx = RequestContext(http=None, path="/v1/completions", body={}, group=group, request_id="r", arrival=now,
                         deadline=now + deadline_in_s)
    return group, _Done(group.metrics, ctx, backend, "least_loaded")


def requests_counted(group: Group, status: str) -> float:
    return group.metrics.requests.labels(group="g", backend="g-0", status=status, route="least_loaded")._value.get()


def test_a_timeout_at_the_requests_own_deadline_is_a_504_and_no_fault_of_the_backend():
    # A timer set to the deadline can fire a millisecond early (uvloop): that is still the request's deadline.
    group, done = attempt_ending(deadline_in_s=0.001)
    done.fail(_Failure("timed out"))
    assert requests_counted(group, "504") == 1 and requests_counted(group, "502") == 0
    assert group.backends[0].consecutive_failures == 0 and group.candidates(time.monotonic())


def test_a_timeout_well_before_the_deadline_is_the_backends_failure():
    group, done = attempt_ending(deadline_in_s=30)
    done.fail(_Failure("timed out"))
    assert requests_counted(group, "502") == 1 and requests_counted(group, "504") == 0
    assert not group.candidates(time.monotonic())  # ejected: one failure is the threshold here
