"""Prefect event names and emitters of the CBCT QA services (one grammar, one place).

Events are ``noun.verb`` names with one resource per entity:

============================  ==========================  =============================================
event                         resource id                 sent by
============================  ==========================  =============================================
``xnat.session.archived``     ``xnat.session.<ID>``       XNAT's automation script
                                                          (``cbctqa_notify_prefect.groovy``), or
                                                          :func:`post_session_archived` (same body)
``cbctqa.session.scored``     ``xnat.session.<ID>``       ``score_session`` after a complete assessment
``cbctqa.alert``              ``xnat.session.<ID>``       ``monitor_cohort``, once per new outlier
============================  ==========================  =============================================

The project is a related resource ``xnat.project.<ID>`` (role ``project``) on every event, so
automations can match on it. Triggers match on these constants; an emitter and a trigger that
spelled a name differently would fail silently.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Mapping
from typing import Any, Final

import httpx

__all__ = [
    "ALERT",
    "SESSION_ARCHIVED",
    "SESSION_SCORED",
    "archived_event_body",
    "emit_alert",
    "emit_session_scored",
    "post_session_archived",
    "project_resource",
    "session_resource_id",
]

#: Posted by XNAT's automation script when a CT session is archived.
SESSION_ARCHIVED: Final[str] = "xnat.session.archived"
#: Emitted after a session's assessment is written ``complete``.
SESSION_SCORED: Final[str] = "cbctqa.session.scored"
#: Emitted once per new outlier flag found by cohort monitoring.
ALERT: Final[str] = "cbctqa.alert"


def session_resource_id(session_id: str) -> str:
    """``xnat.session.<session ID>``: the resource id of a session in every event."""
    return f"xnat.session.{session_id}"


def project_resource(project: str) -> dict[str, str]:
    """The related resource naming the project."""
    return {"prefect.resource.id": f"xnat.project.{project}", "prefect.resource.role": "project"}


def archived_event_body(
    *,
    session_id: str,
    project: str,
    subject: str,
    subject_id: str,
    label: str,
    xnat_url: str | None = None,
    xsi_type: str = "xnat:ctSessionData",
) -> list[dict[str, Any]]:
    """The JSON body XNAT's automation script posts to ``POST {PREFECT_API_URL}/events``.

    Built field by field as ``buildEvents`` in ``cbctqa_notify_prefect.groovy`` builds it
    (that script's body is the contract).
    """
    return [
        {
            "id": str(uuid.uuid4()),
            "occurred": _dt.datetime.now(_dt.UTC).isoformat().replace("+00:00", "Z"),
            "event": SESSION_ARCHIVED,
            "resource": {
                "prefect.resource.id": session_resource_id(session_id),
                "prefect.resource.name": label,
                "xnat.project": project,
            },
            "related": [
                {"prefect.resource.id": f"xnat.project.{project}", "prefect.resource.role": "project"},
                {"prefect.resource.id": f"xnat.subject.{subject_id}", "prefect.resource.role": "subject"},
            ],
            "payload": {
                "session_id": session_id,
                "project": project,
                "subject": subject,
                "subject_id": subject_id,
                "label": label,
                "xsi_type": xsi_type,
                "uri": f"/data/projects/{project}/subjects/{subject}/experiments/{label}",
                "xnat_url": xnat_url,
            },
        }
    ]


def post_session_archived(
    api_url: str, body: list[dict[str, Any]], *, api_key: str | None = None, timeout: float = 10.0
) -> int:
    """POST ``body`` to ``{api_url}/events`` as the Groovy script does; returns the HTTP status.

    Raises
    ------
    httpx.HTTPStatusError
        Prefect refused the events.
    """
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    answer = httpx.post(f"{api_url.rstrip('/')}/events", json=body, headers=headers, timeout=timeout)
    answer.raise_for_status()
    return answer.status_code


def _emit_about_session(
    event: str, *, project: str, session_id: str, label: str, payload: dict[str, Any]
) -> None:
    """Emit ``event`` on resource ``xnat.session.<ID>`` with the project as related resource;
    the payload always carries project, session ID and label."""
    from prefect.events import emit_event

    emit_event(
        event=event,
        resource={
            "prefect.resource.id": session_resource_id(session_id),
            "prefect.resource.name": label,
        },
        related=[project_resource(project)],
        payload={"project": project, "session_id": session_id, "label": label, **payload},
    )


def emit_session_scored(
    *,
    project: str,
    session_id: str,
    label: str,
    model_version: str,
    scores: Mapping[str, float],
    ae: Mapping[str, float],
    assessor_id: str | None,
) -> None:
    """Emit ``cbctqa.session.scored`` (payload: project, label, model version, scores, AE)."""
    _emit_about_session(
        SESSION_SCORED,
        project=project,
        session_id=session_id,
        label=label,
        payload={
            "model_version": model_version,
            "assessor_id": assessor_id,
            "scores": {k: float(v) for k, v in scores.items()},
            "ae": {k: float(v) for k, v in ae.items()},
        },
    )


def emit_alert(
    *,
    project: str,
    session_id: str,
    label: str,
    category: str,
    reason: str,
    model_version: str,
    ae: float,
    consensus: float | None,
    report_url: str | None = None,
) -> None:
    """Emit one ``cbctqa.alert`` for a new outlier (atypical attribution in one category)."""
    _emit_about_session(
        ALERT,
        project=project,
        session_id=session_id,
        label=label,
        payload={
            "category": category,
            "reason": reason,
            "model_version": model_version,
            "ae": float(ae),
            "consensus": None if consensus is None else float(consensus),
            "report": report_url,
        },
    )
