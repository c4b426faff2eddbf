"""Example Prefect automation: each ``cbctqa.alert`` becomes a notification.

``cbctqa_alert_webhook.json`` is the automation (trigger on ``cbctqa.alert`` for any
``xnat.session.*``, action ``send-notification``); :func:`install_alert_automation` saves a
``CustomWebhookNotificationBlock`` for your webhook URL (POSTing ``{"subject", "body"}`` as
JSON) and creates the automation pointing at it. Any other notification block (e-mail, Slack,
Teams) works the same way: pass its block document ID instead. Prefect's CLI can also load
the JSON: ``prefect automation create --from-file cbctqa_alert_webhook.json`` after
replacing ``BLOCK_DOCUMENT_ID``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast
from uuid import UUID

__all__ = ["ALERT_AUTOMATION_FILE", "alert_automation_spec", "install_alert_automation"]

#: The example automation (JSON, Prefect's automation schema).
ALERT_AUTOMATION_FILE = Path(__file__).with_name("cbctqa_alert_webhook.json")


def alert_automation_spec(block_document_id: UUID | str) -> dict[str, Any]:
    """The automation document with the notification block filled in."""
    spec: dict[str, Any] = json.loads(ALERT_AUTOMATION_FILE.read_text(encoding="utf-8"))
    for action in spec["actions"]:
        if action.get("block_document_id") == "BLOCK_DOCUMENT_ID":
            action["block_document_id"] = str(block_document_id)
    return spec


def install_alert_automation(
    webhook_url: str | None = None,
    *,
    block_document_id: UUID | str | None = None,
    block_name: str = "cbctqa-alert-webhook",
) -> UUID:
    """Create the example automation on the current Prefect API; returns its ID.

    Give either ``webhook_url`` (a ``CustomWebhookNotificationBlock`` named ``block_name`` is
    saved for it) or the ``block_document_id`` of an existing notification block.
    """
    from prefect.automations import Automation

    if block_document_id is None:
        if not webhook_url:
            raise ValueError("install_alert_automation: give webhook_url or block_document_id")
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        block = CustomWebhookNotificationBlock(
            name=block_name,
            url=webhook_url,
            method="POST",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        )
        block_document_id = cast("UUID", block.save(block_name, overwrite=True))
    automation = Automation.model_validate(alert_automation_spec(block_document_id))
    created = cast("Automation", automation.create())
    if created.id is None:
        raise RuntimeError("the Prefect server accepted the automation but returned no ID")
    return created.id
