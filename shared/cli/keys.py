"""``tone-platform keys`` and ``tone-platform db``: API keys and the schema."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _database_url() -> str:
    """DATABASE_URL from the settings; when it is unset, the one `tone-platform up` wrote to
    ``<data_dir>/env`` for the PostgreSQL it started (see shared.localstack.supervisor.load_data_dir_env)."""
    from shared.localstack.supervisor import load_data_dir_env
    from shared.platform.settings import get_settings

    load_data_dir_env()
    return get_settings().database_url


def _session() -> Any:
    from shared.db.session import session_scope

    return session_scope(_database_url())


def cmd_keys_create(args: argparse.Namespace) -> int:
    from shared.platform.keys import create_key

    with _session() as session:
        row, key = create_key(session, args.tenant, args.name)
        prefix = row.prefix
    print(key)
    print(f"created key {prefix} for tenant {args.tenant}: it is shown only now", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from shared.platform.keys import list_keys

    with _session() as session:
        rows = [
            {
                "prefix": k.prefix,
                "tenant": t.name,
                "name": k.name,
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "revoked": k.revoked_at is not None,
            }
            for k, t in list_keys(session, args.tenant)
        ]
    print(json.dumps(rows, indent=2, ensure_ascii=False))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from shared.platform.keys import announce_revocation, revoke_key
    from shared.platform.settings import get_settings

    with _session() as session:
        done = revoke_key(session, args.prefix)
    if not done:
        print(f"tone-platform: no live key with prefix {args.prefix}", file=sys.stderr)
        return 1
    print(f"revoked {args.prefix}", file=sys.stderr)
    if not announce_revocation(get_settings().redis_url):
        print("tone-platform: Redis could not be told: the API may accept the key for up to "
              "30 s more (its cache of verified keys)", file=sys.stderr)  # fmt: skip
    return 0


def cmd_keys_secret(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from shared.platform.keys import find_tenant, rotate_webhook_secret, signing_secrets
    from shared.platform.settings import get_settings

    with _session() as session:
        tenant = find_tenant(session, args.tenant)
        if tenant is None:
            print(f"tone-platform: no tenant {args.tenant!r}", file=sys.stderr)
            return 1
        if args.rotate:
            hours = (
                get_settings().webhook_secret_grace_hours if args.grace_hours is None else args.grace_hours
            )
            rotate_webhook_secret(session, tenant, timedelta(hours=hours))
        secret, both = tenant.webhook_secret, len(signing_secrets(tenant)) > 1
        until = tenant.previous_webhook_secret_expires_at
    print(secret)
    if args.rotate:
        print(f"rotated the webhook secret of tenant {args.tenant}", file=sys.stderr)
    if both and until is not None:
        print(f"the previous secret also signs deliveries until {until.isoformat()}", file=sys.stderr)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from shared.db.migrate import alembic_upgrade

    alembic_upgrade(_database_url(), args.revision)
    return 0


def register(sub: Any) -> None:
    """Adds ``keys`` and ``db``. ``keys`` and ``db`` use DATABASE_URL; when it is unset
    they read ``<data_dir>/env`` (TONE_DATA_DIR, default .data), written by ``tone-platform up`` when it
    started its own PostgreSQL, so that keys can be made for the local stack with no setup."""
    p = sub.add_parser("keys", help="API keys: create, list, revoke (DATABASE_URL, else TONE_DATA_DIR/env)")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    q = ks.add_parser("create", help="create a key for a tenant (created if missing); prints the key alone")
    q.add_argument("--tenant", required=True)
    q.add_argument("--name")
    q.set_defaults(func=cmd_keys_create)
    q = ks.add_parser("list", help="list keys (prefixes, never the keys)")
    q.add_argument("--tenant")
    q.set_defaults(func=cmd_keys_list)
    q = ks.add_parser("revoke", help="revoke a key by its prefix (tone_xxxxxxxx)")
    q.add_argument("prefix")
    q.set_defaults(func=cmd_keys_revoke)
    q = ks.add_parser(
        "secret", help="print the tenant's webhook signing secret (whsec_...); --rotate makes a new one"
    )
    q.add_argument("--tenant", required=True)
    q.add_argument(
        "--rotate", action="store_true", help="a new secret; the old one also signs for the grace period"
    )
    q.add_argument(
        "--grace-hours", type=float, help="grace period (default TONE_WEBHOOK_SECRET_GRACE_HOURS, 24)"
    )
    q.set_defaults(func=cmd_keys_secret)

    p = sub.add_parser("db", help="database schema")
    ds = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    q = ds.add_parser("upgrade", help="alembic upgrade to a revision (default head)")
    q.add_argument("revision", nargs="?", default="head")
    q.set_defaults(func=cmd_db_upgrade)
