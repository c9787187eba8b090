"""``corral gateway``: one OpenAI-compatible endpoint over model groups of replicas (docs/gateway.md)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

POLICIES = ("least_loaded", "prefix_aware", "session", "round_robin")
# The flags that build a config from --model; refused beside --config rather than ignored.
MODEL_FLAGS = ("--replicas", "--autoscale", "--target-ongoing-requests", "--routing", "--served-model-name",
               "--replica-args")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to serve: a config file, or one model's replicas from flags")
    source.add_argument("--config", default=None, metavar="FILE", help="gateway YAML (groups, backends, routing)")
    source.add_argument("--model", default=None, help="with --replicas: a model for `corral serve --model`")
    source.add_argument("--replicas", type=int, default=None, metavar="N",
                        help="local replicas of --model (default 1; with --autoscale, the replicas started with)")
    source.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                        help="scale --model's replicas between MIN and MAX on load (docs/autoscaling.md)")
    source.add_argument("--target-ongoing-requests", type=float, default=None, metavar="X",
                        help="with --autoscale: running + waiting requests per replica to aim at (default 2)")
    source.add_argument("--routing", default=None, choices=POLICIES,
                        help="routing policy of --model's group (default least_loaded)")
    source.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the name clients send for --model (default: its file or folder name)")
    source.add_argument("--replica-args", default=None, metavar="ARGS",
                        help="more `corral serve` arguments for each replica, as one shell-quoted string")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default=None, help="address to bind (default: the config's, else 127.0.0.1)")
    server.add_argument("--port", type=int, default=None, help="port to bind (default: the config's, else 8080)")
    server.add_argument("--log-level", default="info", type=str.lower,
                        choices=("critical", "error", "warning", "info", "debug"), help="the gateway's log level")
    server.add_argument("--replica-log-level", default="warning", type=str.lower,
                        choices=("critical", "error", "warning", "info", "debug"), help="local replicas' log level")


def load(args: argparse.Namespace):
    """The GatewayConfig the flags ask for (GatewayConfigError, one line, when they or the file are bad)."""
    from corral.gateway.config import GatewayConfigError, load_config, parse_autoscale, simple_config

    if (args.config is None) == (args.model is None):
        raise GatewayConfigError("give exactly one of --config FILE or --model M [--replicas N]")
    if args.config is not None:
        for flag in MODEL_FLAGS:
            if getattr(args, flag.removeprefix("--").replace("-", "_")) is not None:
                raise GatewayConfigError(f"{flag} applies to --model only; with --config, set it in the file")
        config = load_config(args.config)
    else:
        autoscale = parse_autoscale(args.autoscale) if args.autoscale is not None else None
        config = simple_config(args.model, args.replicas, args.routing or "least_loaded",
                               shlex.split(args.replica_args or ""), args.served_model_name,
                               autoscale=autoscale, target_ongoing_requests=args.target_ongoing_requests)
    return config.model_copy(update=overrides(args))


def overrides(args: argparse.Namespace) -> dict:
    """The config values the flags replace (a reload of the file keeps them replaced)."""
    return {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    import uvicorn

    from corral.gateway.app import UVICORN_OPTIONS, build_app
    from corral.gateway.audit import audit_key
    from corral.gateway.config import ConfigFile

    config = load(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health check otherwise
    admin_key = os.environ.get(config.auth.admin_key_env) or None  # unset or empty: the admin API is refused
    # Unset or short while audit is enabled: a one-line error naming the variable, before anything starts.
    key = audit_key(config.audit, os.environ) if config.audit.enabled else None
    # What SIGHUP and POST /admin/reload read again (docs/gateway.md#reloading-the-config).
    source = ConfigFile(Path(args.config), overrides(args)) if args.config is not None else None
    app = build_app(config, args.replica_log_level, admin_key, key, config_file=source)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, **UVICORN_OPTIONS)
    return 0
