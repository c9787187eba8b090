"""EngineCore's proposals with a lookup in front of a draft model (method ngram_draft): which requests the
draft model drafts for."""

from collections.abc import Sequence

from corral.engine.core import EngineCore
from corral.engine.proposer import Draft
from corral.engine.request import Request
from corral.engine.spec_policy import SpeculationPolicy
from corral.sample.params import SamplingParams


class Scheduler:
    def __init__(self, requests: list[Request]):
        self.running = requests

    def decoding_requests(self) -> list[Request]:
        return self.running


class Runner:
    """Two proposers with fixed drafts: the lookup's per request id, and the draft model's."""

    def __init__(self, lookup: dict[str, Draft]):
        self.lookup = lookup
        self.fallback_proposer = object()  # present: the core drafts in two stages
        self.asked: dict[str, list[str]] = {"lookup": [], "draft_model": []}

    def clear_drafts(self) -> None:
        pass

    def propose(self, requests: Sequence[Request], limits: Sequence[int], fallback: bool = False) -> list[Draft]:
        self.asked["draft_model" if fallback else "lookup"] += [r.request_id for r in requests]
        if fallback:
            return [Draft([8, 9, 10][:k], bucket=0) for k in limits]
        return [self.lookup.get(r.request_id, Draft([])) for r in requests]


def request(request_id: str) -> Request:
    r = Request(request_id, [1, 2, 3], SamplingParams(max_tokens=100), max_model_len=256)
    r.append_token(5)
    return r


def test_the_draft_model_drafts_where_the_lookup_found_nothing_worth_checking():
    policy = SpeculationPolicy(3, fixed_cost_rows=2.0, proposer_cost=0.1)
    learner = request("learner")
    for _ in range(12):  # the engine learns: 1-token matches always fail, 3-token ones always hold
        for bucket, accepted in ((1, 0), (3, 3)):
            policy.trim(learner, 3, bucket)
            policy.record(learner, 3, accepted)
    policy.remove_requests(["learner"])
    good, weak, none = request("good"), request("weak"), request("none")
    runner = Runner({"good": Draft([4, 4, 4], bucket=3), "weak": Draft([6, 6, 6], bucket=1)})
    core = EngineCore(Scheduler([good, weak, none]), runner, policy)  # type: ignore[arg-type]
    core._propose()
    assert runner.asked["lookup"] == ["good", "weak", "none"]
    assert runner.asked["draft_model"] == ["weak", "none"]  # a 1-token match is trimmed away: not a draft
    assert good.spec_token_ids == [4, 4, 4]
    assert weak.spec_token_ids and weak.spec_token_ids[0] == 8 and none.spec_token_ids[0] == 8
