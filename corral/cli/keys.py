"""``corral keys create|list|revoke|rotate``: the gateway's API keys, straight on its SQLite key store (offline: a
running gateway sees a revocation at its next request, and copies the change's admin event into its audit log
within a second, or at its next start). A new key is printed once, alone on stdout."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from corral.cli import HelpFormatter

DEFAULT_STORE = "corral-keys.sqlite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _action(actions, "create", "create a key for a tenant and print it (shown this once only)")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--name", default=None, help="a label for the key (who or what uses it)")
    listing = _action(actions, "list", "list the keys (never their secrets)")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = _action(actions, "revoke", "revoke a key at once")
    revoke.add_argument("key_id", help="the key's id (the 12 hex characters after `ck-`)")
    rotate = _action(actions, "rotate", "revoke a key and print its successor (same tenant and name)")
    rotate.add_argument("key_id", help="the key's id (the 12 hex characters after `ck-`)")


def _action(actions, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
    parser.add_argument("--store", default=None, metavar="PATH",
                        help=f"the SQLite key store (default: the config's auth.store, else {DEFAULT_STORE})")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="the gateway's YAML: its auth.store, and the tenants a new key may belong to")
    return parser


def run(args: argparse.Namespace) -> int:
    from corral.gateway.config import GatewayConfigError, load_config
    from corral.gateway.key_store import SQLiteKeyStore

    config = load_config(args.config) if args.config is not None else None
    path = args.store or (config.auth.store if config is not None else DEFAULT_STORE)
    if args.action == "create" and config is not None and args.tenant not in config.auth.tenants:
        raise GatewayConfigError(f"{args.config}: auth.tenants has no tenant named {args.tenant!r}")
    store = SQLiteKeyStore(path, create=args.action == "create")
    actor = _actor()
    try:
        if args.action == "create":
            record, key = store.create(args.tenant, args.name, actor)
            _print_key(key, f"created key {record.key_id} for tenant {record.tenant!r}")
        elif args.action == "list":
            for record in store.list(args.tenant):
                print(json.dumps(record.as_json()) if args.json else _row(record))
        elif args.action == "revoke":
            record = store.revoke(args.key_id, actor)
            print(f"revoked key {record.key_id} of tenant {record.tenant!r} at {_time(record.revoked_at)}")
        else:
            record, key = store.rotate(args.key_id, actor)
            _print_key(key, f"rotated key {args.key_id} (now revoked) to {record.key_id} for tenant {record.tenant!r}")
    finally:
        store.close()
    return 0


def _actor() -> str:
    """Who makes a change, for its admin event in the audit log: the OS user and host running the command."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def _print_key(key: str, what: str) -> None:
    print(f"{what}; the key is shown this once only:", file=sys.stderr)
    print(key)


def _row(record) -> str:
    state = f"revoked {_time(record.revoked_at)}" if record.revoked else "active"
    rotated = f" rotated_from={record.rotated_from}" if record.rotated_from else ""
    name = f" name={record.name!r}" if record.name else ""
    return f"{record.key_id}  tenant={record.tenant!r}{name}  created {_time(record.created_at)}  {state}{rotated}"


def _time(timestamp: float | None) -> str:
    return datetime.fromtimestamp(timestamp or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
