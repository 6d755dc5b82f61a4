"""``/v1/webhooks``: the caller's tenant's webhook signing secret, and its rotation with a grace period."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CallerDep, DbDep, SettingsDep
from api.errors import ERRORS
from api.schemas import WebhookSecretOut
from shared.db.models import Tenant
from shared.platform.keys import rotate_webhook_secret, signing_secrets

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

_AUTH_ERRORS = {k: v for k, v in ERRORS.items() if k != 404}


def secret_view(tenant: Tenant) -> WebhookSecretOut:
    during_grace = len(signing_secrets(tenant)) > 1
    return WebhookSecretOut(
        secret=tenant.webhook_secret,
        created_at=tenant.webhook_secret_created_at,
        previous_secret_expires_at=tenant.previous_webhook_secret_expires_at if during_grace else None,
    )


@router.get(
    "/secret",
    response_model=WebhookSecretOut,
    summary="The tenant's webhook signing secret",
    description="The `whsec_` secret every delivery to this tenant is signed with, the "
    "[Standard Webhooks](https://www.standardwebhooks.com/) way: verify with "
    "`standardwebhooks.Webhook(secret).verify(body, headers)`.",
    responses=_AUTH_ERRORS,
)
def get_secret(caller: CallerDep, db: DbDep) -> WebhookSecretOut:
    tenant = db.get(Tenant, caller.tenant_id)
    assert tenant is not None  # the caller's key points at it
    return secret_view(tenant)


@router.post(
    "/secret/rotate",
    response_model=WebhookSecretOut,
    summary="Rotate the webhook signing secret",
    description="Makes a new secret and answers it. During the grace period (`grace_hours`, default "
    "`TONE_WEBHOOK_SECRET_GRACE_HOURS`, 24) each delivery's `webhook-signature` carries two "
    "signatures, the new secret's and the previous one's, so receivers can switch at their pace; "
    "0 ends the previous secret at once. Rotating again drops the older previous secret.",
    responses=_AUTH_ERRORS,
)
def rotate_secret(
    caller: CallerDep,
    db: DbDep,
    settings: SettingsDep,
    grace_hours: Annotated[float | None, Query(ge=0, le=24 * 30)] = None,
) -> WebhookSecretOut:
    tenant = db.get(Tenant, caller.tenant_id)
    assert tenant is not None
    hours = settings.webhook_secret_grace_hours if grace_hours is None else grace_hours
    rotate_webhook_secret(db, tenant, timedelta(hours=hours))
    db.commit()
    return secret_view(tenant)
