"""``corral audit verify|query``: check the gateway's audit chain, and read its records (docs/audit.md)."""

from __future__ import annotations

import argparse

from corral.cli import HelpFormatter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="AUDIT", required=True)
    verify = sub.add_parser("verify", help="walk the hash chain; print the first broken record and exit 1",
                            formatter_class=HelpFormatter)
    verify.add_argument("paths", nargs="+", metavar="PATH", help="audit files in order, or their directory")
    verify.add_argument("--key-env", default="CORRAL_AUDIT_KEY", metavar="NAME",
                        help="environment variable holding the HMAC key")
    verify.add_argument("--partial", action="store_true",
                        help="accept a chain that starts after seq 1 without a purge record vouching for it")
    query = sub.add_parser("query", help="print matching records as JSON lines (does not verify)",
                           formatter_class=HelpFormatter)
    query.add_argument("paths", nargs="+", metavar="PATH", help="audit files, or their directory")
    query.add_argument("--tenant", default=None)
    query.add_argument("--since", default=None, metavar="ISO", help="records at or after this UTC time")
    query.add_argument("--until", default=None, metavar="ISO", help="records before this UTC time")
    query.add_argument("--status", type=int, default=None, help="HTTP status of request records")
    query.add_argument("--type", default=None, help="record type: request, admin, purge, file_start, recovery")


def run(args: argparse.Namespace) -> int:
    if args.audit_command == "verify":
        return _verify(args)
    return _query(args)


def _verify(args: argparse.Namespace) -> int:
    import os

    from corral.gateway.audit import key_from_env
    from corral.gateway.audit_chain import verify

    result = verify(args.paths, key_from_env(args.key_env, os.environ), allow_partial=args.partial)
    print(result.format())
    return 0 if result.ok else 1


def _query(args: argparse.Namespace) -> int:
    import json
    import sys

    from corral.errors import ConfigError
    from corral.gateway.audit_chain import expand, parse_iso, read_records

    try:
        since = parse_iso(args.since) if args.since else None
        until = parse_iso(args.until) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None
    for path in expand(args.paths):
        for _, record, _ in read_records(path):
            if record is None:
                continue
            if args.tenant is not None and record.get("tenant") != args.tenant:
                continue
            if args.status is not None and record.get("status") != args.status:
                continue
            if args.type is not None and record.get("type") != args.type:
                continue
            if since is not None or until is not None:
                try:
                    when = parse_iso(record["time"])
                except (KeyError, TypeError, ValueError):
                    continue
                if (since is not None and when < since) or (until is not None and when >= until):
                    continue
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0
