"""Tenants and API keys. A key is shown once; the database keeps its SHA-256 and a short prefix.

Key format: ``tone_<8 hex prefix>_<43 url-safe secret>``; the prefix (``tone_ab12cd34``) finds the
row, the hash proves the rest, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from shared.db.models import ApiKey, Tenant

KEY_SCHEME = "tone"
# A counter in Redis that every revocation increments: the API's processes keep verified keys in
# memory for a while (api.deps) and drop them all when it moves.
REVOCATIONS_KEY = "tone:keys:revocations"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def key_prefix(key: str) -> str | None:
    parts = key.split("_", 2)  # the secret itself may hold "_"
    if len(parts) != 3 or parts[0] != KEY_SCHEME or len(parts[1]) != 8:
        return None
    return f"{parts[0]}_{parts[1]}"


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        now = datetime.now(timezone.utc)
        tenant = Tenant(name=name, webhook_secret=new_webhook_secret(), webhook_secret_created_at=now)
        session.add(tenant)
        session.flush()
    return tenant


def signing_secrets(tenant: Tenant, now: datetime | None = None) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one while its
    grace period after a rotation lasts (the ``webhook-signature`` header then carries both)."""
    now = now or datetime.now(timezone.utc)
    out = [tenant.webhook_secret]
    expires = tenant.previous_webhook_secret_expires_at
    if tenant.previous_webhook_secret and expires is not None and expires > now:
        out.append(tenant.previous_webhook_secret)
    return out


def rotate_webhook_secret(session: Session, tenant: Tenant, grace: timedelta) -> Tenant:
    """A new current secret; the old one keeps signing deliveries (beside the new) for ``grace``.
    Rotating again within a grace period drops the older previous secret: two at most."""
    now = datetime.now(timezone.utc)
    tenant.previous_webhook_secret = tenant.webhook_secret if grace > timedelta(0) else None
    tenant.previous_webhook_secret_expires_at = now + grace if grace > timedelta(0) else None
    tenant.webhook_secret = new_webhook_secret()
    tenant.webhook_secret_created_at = now
    session.flush()
    return tenant


def find_tenant(session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def create_key(session: Session, tenant_name: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key for the tenant (created when missing); returns the row and the key, shown once."""
    tenant = get_or_create_tenant(session, tenant_name)
    prefix = f"{KEY_SCHEME}_{secrets.token_hex(4)}"
    key = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key), name=name)
    session.add(row)
    session.flush()
    return row, key


def verify_key(session: Session, key: str) -> ApiKey | None:
    """The live key row for this key, or None (unknown, malformed, wrong secret or revoked); its
    tenant comes in the same query (every authenticated request reads it: one round trip, not two)."""
    prefix = key_prefix(key)
    if prefix is None:
        return None
    row = session.scalar(select(ApiKey).options(joinedload(ApiKey.tenant)).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_hash, hash_key(key)):
        return None
    return row


def revoke_key(session: Session, prefix: str) -> bool:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = datetime.now(timezone.utc)
    return True


def announce_revocation(redis_url: str) -> bool:
    """Tell the API's processes that a key was revoked (after the commit): each request reads this
    counter, and a change empties their caches of verified keys. False when Redis could not be
    reached: the caches then forget the key within api.deps.KEY_CACHE_SECONDS."""
    import redis

    try:
        redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5).incr(REVOCATIONS_KEY)
    except redis.RedisError:
        return False
    return True


def list_keys(session: Session, tenant_name: str | None = None) -> list[tuple[ApiKey, Tenant]]:
    query = select(ApiKey, Tenant).join(Tenant).order_by(Tenant.name, ApiKey.created_at)
    if tenant_name:
        query = query.where(Tenant.name == tenant_name)
    return [(k, t) for k, t in session.execute(query).all()]
