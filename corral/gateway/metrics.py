"""The gateway's Prometheus metrics, in a registry of its own (``corral_gateway_*``; the replicas' own metrics
stay at their ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds a local replica takes to start (process to passing /health) or to drain and stop.
_REPLICA_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                    40.0, 80.0)


class GatewayMetrics:
    """Requests by group, backend, status and route decision; time to the first byte relayed (TTFT at the
    gateway) and end-to-end latency; in flight and health per backend; retries, ejections, restarts; requests
    refused by auth and by the tenants' limits; the audit log's records; the guardrails' actions; local replicas'
    start and drain times; autoscaled groups' desired and actual replicas, scale events and resource caps."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("corral_gateway_requests", "Requests answered, by group, backend, status and route.",
                                ["group", "backend", "status", "route"], registry=r)
        self.ttft = Histogram("corral_gateway_time_to_first_byte_seconds",
                              "Arrival at the gateway to the first byte of the backend's answer relayed.",
                              ["group"], registry=r, buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram("corral_gateway_e2e_request_latency_seconds", "Arrival to the last byte relayed.",
                             ["group"], registry=r, buckets=_LATENCY_BUCKETS)
        self.in_flight = Gauge("corral_gateway_backend_in_flight", "Requests in flight to a backend.",
                               ["group", "backend"], registry=r)
        self.healthy = Gauge("corral_gateway_backend_healthy",
                             "1 when a backend takes requests (up, passing /health, not ejected).",
                             ["group", "backend"], registry=r)
        self.retries = Counter("corral_gateway_retries", "Requests retried on another backend before their first byte.",
                               ["group", "backend"], registry=r)
        self.ejections = Counter("corral_gateway_ejections", "Backends ejected after consecutive failures.",
                                 ["group", "backend"], registry=r)
        self.restarts = Counter("corral_gateway_replica_restarts", "Local replicas restarted after exiting.",
                                ["group", "backend"], registry=r)
        self.stream_errors = Counter("corral_gateway_stream_errors",
                                     "Streams ended with an error event after output had been relayed.",
                                     ["group", "backend"], registry=r)
        self.fallbacks = Counter("corral_gateway_fallbacks", "Requests sent on to a fallback group, by reason.",
                                 ["from", "to", "reason"], registry=r)
        self.auth_failures = Counter("corral_gateway_auth_failures",
                                     "Requests refused by auth, by reason (missing_key, malformed_key, unknown_key, "
                                     "revoked_key, unknown_tenant, model_not_allowed, admin_key).",
                                     ["reason"], registry=r)
        self.limit_rejections = Counter("corral_gateway_limit_rejections",
                                        "Requests refused by a tenant's limits, by limit (requests_per_minute, "
                                        "tokens_per_minute, max_concurrent, tokens_per_day, tokens_per_month).",
                                        ["limit"], registry=r)
        self.audit_records = Counter("corral_gateway_audit_records",
                                     "Request records written to the audit log, by whether the answer was complete.",
                                     ["complete"], registry=r)
        self.audit_failures = Counter("corral_gateway_audit_failures",
                                      "Requests failed (503) because their audit record could not be written.",
                                      registry=r)
        self.guardrail_actions = Counter("corral_gateway_guardrail_actions",
                                         "Guardrail checks that acted on a request or its answer, by check (its name "
                                         "in the policy) and action (allow, flag, mask, deny).",
                                         ["check", "action"], registry=r)
        self.config_reloads = Counter("corral_gateway_config_reloads",
                                      "Config reloads (POST /admin/reload, SIGHUP), by status (applied, refused).",
                                      ["status"], registry=r)
        self.replica_start = Histogram("corral_gateway_replica_start_seconds",
                                       "Local replicas' start: process started to its /health passing.",
                                       ["group"], registry=r, buckets=_REPLICA_BUCKETS)
        self.replica_drain = Histogram("corral_gateway_replica_drain_seconds",
                                       "Autoscaled replicas taken away: drain begun (no new requests) to stopped.",
                                       ["group"], registry=r, buckets=_REPLICA_BUCKETS)
        self.autoscale_desired = Gauge("corral_gateway_autoscale_desired_replicas",
                                       "The replicas the autoscaling policy wants for a group.", ["group"], registry=r)
        self.autoscale_replicas = Gauge("corral_gateway_autoscale_replicas",
                                        "An autoscaled group's replicas by state: ready (healthy, taking requests), "
                                        "starting, draining.", ["group", "state"], registry=r)
        self.autoscale_ceiling = Gauge("corral_gateway_autoscale_max_replicas",
                                       "The most replicas a group may have now: max_replicas, or fewer where the "
                                       "host's memory or cores fit fewer.", ["group"], registry=r)
        self.autoscale_events = Counter("corral_gateway_autoscale_events",
                                        "Changes of an autoscaled group's desired replicas, by direction (up, down) "
                                        "and reason (cold_start, ongoing_requests, kv_cache_usage, "
                                        "compute_utilization).", ["group", "direction", "reason"], registry=r)
        self.autoscale_capped = Counter("corral_gateway_autoscale_capped",
                                        "Times the policy asked for more replicas than the host fits, by resource "
                                        "(memory, cores).", ["group", "resource"], registry=r)
