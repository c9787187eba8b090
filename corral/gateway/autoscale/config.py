"""The ``autoscaling:`` settings of a model group (docs/autoscaling.md). Named, and meant, as Ray Serve's
``autoscaling_config`` names them, so one set of numbers means the same thing for local replicas, Ray Serve and
Kubernetes; the two resource targets beyond ongoing requests are corral's own (Kubernetes' HPA has the like).

Unknown keys are refused, as everywhere in the gateway's config; Ray's older spellings of the factors are
refused with the current name, since silently ignoring a factor would change how fast a group scales."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Aggregation = Literal["mean", "max", "min"]

# Ray's deprecated spellings -> the names used here (and by current Ray).
_RENAMED = {
    "smoothing_factor": "upscaling_factor and downscaling_factor",
    "upscale_smoothing_factor": "upscaling_factor",
    "downscale_smoothing_factor": "downscaling_factor",
    "target_num_ongoing_requests_per_replica": "target_ongoing_requests",
}


class AutoscalingConfig(BaseModel):
    """How many replicas a group wants, given its load. Every target is per replica; the desired count is the
    largest one any target asks for. Delays are how long a change must keep being asked for before it is made.
    ``min_replicas: 0`` allows scaling to zero; a request arriving then starts one replica at once (cold start)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(ge=1, description="required: an autoscaler without a ceiling is a bill")
    initial_replicas: int | None = Field(default=None, ge=0, description="started with; default min_replicas")
    # Running plus waiting requests per replica (Ray's ongoing requests: executing and queued at the replica).
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    # Fraction of each replica's KV-cache blocks in use (corral:kv_cache_usage_perc), 0-1.
    target_kv_cache_usage: float | None = Field(default=None, gt=0, le=1)
    # Busy fraction of each replica's compute: GPU utilization (NVML) where it has a GPU, else the CPU time of
    # its processes over the cores given to it; 0-1.
    target_compute_utilization: float | None = Field(default=None, gt=0, le=1)
    look_back_period_s: float = Field(default=30.0, gt=0)
    aggregation_function: Aggregation = "mean"
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    downscale_to_zero_delay_s: float | None = Field(default=None, ge=0, description="1 -> 0; default downscale_delay_s")
    # Fraction of the gap between the current and the desired count closed by one decision (Ray's factors).
    upscaling_factor: float = Field(default=1.0, gt=0)
    downscaling_factor: float = Field(default=1.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _refuse_old_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _RENAMED.items():
                if old in data:
                    raise ValueError(f"{old}: not a setting here; use {new} (Ray Serve's current name)")
        return data

    @model_validator(mode="after")
    def _bounds_in_order(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas: {self.min_replicas} is over max_replicas {self.max_replicas}")
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(f"initial_replicas: {initial} is outside [min_replicas {self.min_replicas}, "
                             f"max_replicas {self.max_replicas}]")
        if self.downscale_to_zero_delay_s is not None and self.min_replicas > 0:
            raise ValueError(f"downscale_to_zero_delay_s: min_replicas is {self.min_replicas}, so the group never "
                             "scales to zero (set min_replicas: 0 to allow it)")
        return self

    @property
    def scale_to_zero(self) -> bool:
        return self.min_replicas == 0

    @property
    def start_replicas(self) -> int:
        return self.min_replicas if self.initial_replicas is None else self.initial_replicas

    @property
    def to_zero_delay_s(self) -> float:
        return self.downscale_delay_s if self.downscale_to_zero_delay_s is None else self.downscale_to_zero_delay_s
