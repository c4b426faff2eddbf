"""``monitor_cohort``: the cohort's statistics, outlier flags, report and alerts, in one flow.

One run reads the project's assessments and ratings in bulk (two requests), forms the
consensus, runs the study's statistics and the better ones
(:func:`flows.scoring.analyze_project`), writes each category's outlier flag and reason onto
the assessments (only those that change), stores a report as the project resource
``CBCTQA_REPORT`` (``report.json``, and ``report.html``: a readable page with the per-category
table, AE-vs-consensus plots and the flagged sessions) and emits one ``cbctqa.alert`` per
*new* outlier: a session and category already flagged on its assessment is not alerted again.

Runs after new scores (the deployment's trigger on ``cbctqa.session.scored``, debounced: a run
that finds a later run of its deployment already waiting leaves the work to it) and on a
schedule.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NONE as NO_CACHE

from flows.events import emit_alert
from flows.scoring import analyze_project, model_version, write_outlier_flags
from flows.session_flows import NO_RESULTS, _gateway, _transient_only, worker_model
from qa_core import __version__
from qa_core.errors import CbctQaError

if TYPE_CHECKING:
    from qa_core.statistics import CohortAnalysis
    from xnat_plugin.gateway import StoredAssessment

__all__ = ["REPORT_RESOURCE", "monitor_cohort", "render_report_html", "report_payload"]

logger = logging.getLogger(__name__)

#: Project resource label holding the cohort report.
REPORT_RESOURCE = "CBCTQA_REPORT"


def report_payload(
    project: str,
    version: str,
    analysis: CohortAnalysis | None,
    assessments: list[StoredAssessment],
    *,
    new_alerts: list[dict[str, Any]],
    note: str = "",
) -> dict[str, Any]:
    """The JSON report: provenance, per-category statistics, sessions and outliers."""
    sessions = []
    for a in assessments:
        rec = a.record
        if rec.model_version != version:
            continue
        sessions.append({
            "session": a.session_label, "assessor_id": a.assessor_id, "status": rec.status,
            "failure_reason": rec.failure_reason or None,
            "scores": {c: r.score for c, r in rec.categories.items()},
            "ae": {c: r.ae for c, r in rec.categories.items()},
            "outliers": {c: r.outlier_reason for c, r in rec.categories.items() if r.outlier},
        })  # fmt: skip
    counts: dict[str, int] = {}
    for s in sessions:
        status = str(s["status"])
        counts[status] = counts.get(status, 0) + 1
    return {
        "project": project,
        "model_version": version,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "status_counts": dict(sorted(counts.items())),
        "statistics": analysis.to_dict() if analysis is not None else None,
        "note": note,
        "new_alerts": new_alerts,
        "sessions": sorted(sessions, key=lambda s: s["session"]),
    }


def _plot_png(analysis: CohortAnalysis, rows: dict[str, dict[str, tuple[float, float]]]) -> str:
    """Base64 PNG of AE against consensus, one panel per category, outliers in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(analysis.categories)
    fig, axes = plt.subplots(1, len(cats), figsize=(3.2 * len(cats), 3.0), squeeze=False)
    for ax, res in zip(axes[0], analysis.results, strict=True):
        flagged = {f.session for f in res.outliers}
        pts = rows.get(res.category, {})
        for sess, (cons, ae) in pts.items():
            ax.scatter(cons, ae, s=18, color="#c0392b" if sess in flagged else "#2c3e50")
            if sess in flagged:
                ax.annotate(sess, (cons, ae), fontsize=6)
        ax.set_title(f"{res.category}  ρ={res.rho:.2f}", fontsize=9)
        ax.set_xlabel("consensus (Likert)", fontsize=8)
        ax.set_ylabel("AE", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_report_html(payload: dict[str, Any], plot_png_b64: str | None) -> str:
    """A self-contained HTML page: the statistics table, the plots and the flagged sessions."""
    esc = html.escape
    stats = payload.get("statistics") or {}
    head = ["category", "n", "ρ (AE, consensus)", "LOO median ρ", "permutation p", "Holm p",
            "95% CI", "partial ρ | prediction", "verdict"]  # fmt: skip
    rows = []
    for cat, r in stats.items():
        if not isinstance(r, dict) or "rho" not in r:
            continue

        def f(key: str, fmt: str = "{:.3g}", r: dict[str, Any] = r) -> str:
            v = r.get(key)
            return "–" if v is None else fmt.format(v)

        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in [
            cat, f("n", "{}"), f("rho", "{:.2f}"), f("loo_median_rho", "{:.2f}"), f("perm_p"),
            f("p_holm"), f"[{f('ci_low', '{:.2f}')}, {f('ci_high', '{:.2f}')}]",
            f("partial_rho", "{:.2f}"), str(r.get("verdict", "")),
        ]) + "</tr>")  # fmt: skip
    flagged = [(s["session"], c, why) for s in payload["sessions"] for c, why in s["outliers"].items()]
    failed = [(s["session"], s["failure_reason"] or "") for s in payload["sessions"]
              if s["status"] == "failed"]  # fmt: skip
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>CBCT QA report: {esc(payload['project'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.3em .6em;font-size:.9em}th{background:#eee}"
        ".flag{color:#c0392b}</style></head><body>",
        f"<h1>CBCT QA cohort report: project {esc(payload['project'])}</h1>",
        f"<p>Model {esc(payload['model_version'])}, generated {esc(payload['generated'])} "
        f"by cbctqa {esc(payload['package_version'])}. Assessments: "
        + ", ".join(f"{esc(k)} {v}" for k, v in payload["status_counts"].items()) + ".</p>",
    ]
    if payload.get("note"):
        parts.append(f"<p><em>{esc(payload['note'])}</em></p>")
    if rows:
        parts.append("<h2>Attribution Energy against the radiologists' consensus</h2><table><tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>" + "".join(rows)
                     + "</table>")  # fmt: skip
    if plot_png_b64:
        parts.append(f"<h2>AE vs consensus</h2><img alt='AE against consensus per category' "
                     f"src='data:image/png;base64,{plot_png_b64}'>")  # fmt: skip
    parts.append(f"<h2>Outliers ({len(flagged)})</h2>")
    parts.append("<ul>" + "".join(f"<li class='flag'>{esc(s)} / {esc(c)}: {esc(w)}</li>"
                                  for s, c, w in flagged) + "</ul>" if flagged else "<p>None.</p>")  # fmt: skip
    if failed:
        parts.append(f"<h2>Failed sessions ({len(failed)})</h2><ul>"
                     + "".join(f"<li>{esc(s)}: {esc(w)}</li>" for s, w in failed) + "</ul>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def _statistically_flagged(outlier: bool | None, reason: str) -> bool:
    """``True`` when a stored flag includes a cohort reason (statistics or localisation, not
    only the image checks written at scoring time): that outlier was already alerted."""
    from flows import scoring

    if not outlier:
        return False
    # localisation flags are cohort alerts (write_outlier_flags), not scoring-time ones
    scoring_time = tuple(p for p in (getattr(scoring, "IMAGE_CHECK_PREFIX", None),) if p)
    return any(part.strip() and not part.strip().startswith(scoring_time)
               for part in reason.split("; "))  # fmt: skip


def _statistical_reason(reason: str) -> str:
    from flows import scoring

    # localisation flags are cohort alerts (write_outlier_flags), not scoring-time ones
    scoring_time = tuple(p for p in (getattr(scoring, "IMAGE_CHECK_PREFIX", None),) if p)
    return "; ".join(p for p in reason.split("; ") if p.strip() and not p.startswith(scoring_time))


@task(name="analyse-and-flag", retries=2, retry_delay_seconds=[2, 8],
      retry_condition_fn=_transient_only, cache_policy=NO_CACHE)  # fmt: skip
def analyse_and_flag(project: str, version: str, n_resamples: int) -> dict[str, Any]:
    """Statistics, flags written, report stored; returns the report and the new alerts."""
    from flows.scoring import cohort_rows

    with _gateway() as gw:
        before = {(a.session_label, c): _statistically_flagged(r.outlier, r.outlier_reason)
                  for a in gw.read_assessments(project) if a.record.model_version == version
                  for c, r in a.record.categories.items()}  # fmt: skip
        analysis: CohortAnalysis | None
        try:
            analysis, assessments = analyze_project(
                gw, project, model_version=version, n_resamples=n_resamples
            )
            note = ""
        except CbctQaError as exc:  # too few rated sessions yet: report what there is
            if "no complete assessment" not in str(exc) and "at least" not in str(exc):
                raise
            analysis, assessments, note = None, gw.read_assessments(project), str(exc)
        new_alerts: list[dict[str, Any]] = []
        updated = 0
        if analysis is not None:
            sessions = {s.label: s for s in gw.list_sessions(project)}
            updated = write_outlier_flags(gw, analysis, assessments, sessions)
            assessments = gw.read_assessments(project)
            values = {(r["session"], r["category"]): r for r in cohort_rows(
                assessments, gw.read_ratings(project), model_version=version)}  # fmt: skip
            for a in assessments:  # alerts follow the flags as stored: new ones only
                if a.record.model_version != version or a.record.status != "complete":
                    continue
                for cat, res in a.record.categories.items():
                    key = (a.session_label, cat)
                    if before.get(key) or not _statistically_flagged(res.outlier, res.outlier_reason):
                        continue
                    row = values.get(key, {})
                    new_alerts.append({"session": a.session_label, "category": cat,
                                       "reason": _statistical_reason(res.outlier_reason),
                                       "ae": res.ae, "consensus": row.get("consensus"),
                                       "session_id": a.session_id})  # fmt: skip
        payload = report_payload(project, version, analysis, assessments, new_alerts=new_alerts,
                                 note=note)  # fmt: skip
        plot = None
        if analysis is not None:
            pts: dict[str, dict[str, tuple[float, float]]] = {}
            for r in cohort_rows(assessments, gw.read_ratings(project), model_version=version):
                pts.setdefault(r["category"], {})[r["session"]] = (r["consensus"], r["ae"])
            plot = _plot_png(analysis, pts)
        with tempfile.TemporaryDirectory(prefix="cbctqa-report-") as tmp:
            json_path = Path(tmp) / "report.json"
            html_path = Path(tmp) / "report.html"
            json_path.write_text(json.dumps(payload, sort_keys=True, indent=1, default=str))
            html_path.write_text(render_report_html(payload, plot), encoding="utf-8")
            uris = gw.write_project_files(project, REPORT_RESOURCE, [json_path, html_path])
    return {"updated": updated, "new_alerts": new_alerts, "report": uris,
            "analysed": analysis is not None, "note": note}  # fmt: skip


def _superseded() -> bool:
    """``True`` when a later run of this run's deployment is already waiting (debounce)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return False
    me = ctx.flow_run
    with get_client(sync_client=True) as client:
        waiting = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[me.deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.SCHEDULED, StateType.PENDING])),
            ),
            limit=50,
        )  # fmt: skip
    now = _dt.datetime.now(_dt.UTC)
    return any(r.id != me.id and r.created is not None and me.created is not None
               and r.created > me.created
               and (r.next_scheduled_start_time is None or r.next_scheduled_start_time <= now)
               for r in waiting)  # fmt: skip


@flow(name="monitor_cohort", log_prints=False, **NO_RESULTS)
def monitor_cohort(project: str, n_resamples: int = 2000) -> dict[str, Any]:
    """Statistics, outlier flags, the project report and one ``cbctqa.alert`` per new outlier.

    Parameters
    ----------
    project:
        XNAT project ID.
    n_resamples:
        Permutations and bootstrap resamples per category.
    """
    if _superseded():
        return {"project": project, "status": "superseded by a later run"}
    version = model_version(worker_model())
    out = analyse_and_flag(project, version, n_resamples)
    for alert in out["new_alerts"]:
        emit_alert(project=project, session_id=alert["session_id"], label=alert["session"],
                   category=alert["category"], reason=alert["reason"], model_version=version,
                   ae=alert["ae"], consensus=alert["consensus"],
                   report_url=out["report"][1] if len(out["report"]) > 1 else None)  # fmt: skip
    logger.info("project %s: %d assessment(s) re-flagged, %d new alert(s)", project,
                out["updated"], len(out["new_alerts"]))  # fmt: skip
    return {"project": project, "status": "done", **out}
