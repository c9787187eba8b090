"""Autoscaling (docs/autoscaling.md): the policy, a pure function from a group's load to its desired replica
count with Ray Serve's semantics (``policy.decide``), and its settings. The backends that act on it sit beside
this policy: local replicas (``local.py``, with ``replicas.py`` and ``resources.py``; not imported here, since they
need the gateway's backends, whose config imports these settings); Ray Serve and Kubernetes are to come."""

from corral.gateway.autoscale.config import AutoscalingConfig
from corral.gateway.autoscale.load import Demand, MetricsSample, ReplicaLoad
from corral.gateway.autoscale.policy import (
    Autoscaler,
    AutoscalerState,
    PendingChange,
    ReplicaCap,
    ScalingDecision,
    decide,
)

__all__ = ["AutoscalingConfig", "Autoscaler", "AutoscalerState", "Demand", "MetricsSample", "PendingChange",
           "ReplicaCap", "ReplicaLoad", "ScalingDecision", "decide"]
