"""What arrives at XNAT in the live demo: accounts, a scanner's sessions, radiologists' ratings.

The live demo (``cbctqa demo``) plays the hospital around the product:

* **Accounts** (:func:`ensure_demo_accounts`): an admin and three radiologists, each with a
  generated password kept in ``OUT/credentials.json`` (mode 600), created through XNAT's own
  ``POST /xapi/users`` and given *Members* access to the demo project. A second run reuses them.
* **Scanner** (:class:`ArrivalFeed`): each simulated session is sent through XNAT's DICOM import
  endpoint (``POST /data/services/import``) one at a time, a few seconds apart, and then the
  ``xnat.session.archived`` event is posted to Prefect exactly as XNAT's automation script
  (``cbctqa_notify_prefect.groovy``) posts it. Sessions already in XNAT are not sent again.
* **Radiologists**: for the rated share of the cohort, each radiologist's simulated scores
  arrive as a ``cbctqa:ratingData`` written under *that radiologist's own* XNAT account (the
  rater field is the logged-in user, never a service account acting on their behalf).

Nothing here scores anything: scoring is the product's job (``cbctqa serve``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qa_core.synth import Cohort, CohortSession
    from xnat_plugin.gateway import SessionRef, XnatGateway

__all__ = [
    "ArrivalFeed",
    "DemoAccounts",
    "ensure_demo_accounts",
    "import_session",
    "rated_labels",
]

logger = logging.getLogger(__name__)

#: Radiologist accounts the demo creates; the cohort's simulated raters R1..R3 rate as them.
RADIOLOGISTS = ("radiologist1", "radiologist2", "radiologist3")


@dataclass(frozen=True)
class DemoAccounts:
    """The demo's XNAT accounts (generated passwords; never printed by library code)."""

    admin_user: str
    admin_password: str
    radiologists: dict[str, str]  # username -> password
    service_user: str = "cbctqa_service"
    service_password: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "admin": {"user": self.admin_user, "password": self.admin_password},
            "radiologists": dict(self.radiologists),
            "service": {"user": self.service_user, "password": self.service_password},
        }


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def load_or_make_credentials(path: Path, admin_user: str = "admin") -> DemoAccounts:
    """Read ``credentials.json`` or generate a new set of passwords and write it (mode 600)."""
    if path.is_file():
        doc = json.loads(path.read_text(encoding="utf-8"))
        return DemoAccounts(
            admin_user=doc["admin"]["user"],
            admin_password=doc["admin"]["password"],
            radiologists=dict(doc["radiologists"]),
            service_user=doc["service"]["user"],
            service_password=doc["service"]["password"],
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    accounts = DemoAccounts(
        admin_user=admin_user,
        admin_password=secrets.token_urlsafe(15),
        radiologists={name: secrets.token_urlsafe(12) for name in RADIOLOGISTS},
        service_password=secrets.token_urlsafe(15),
    )
    _write_private(path, json.dumps(accounts.to_json(), indent=2, sort_keys=True) + "\n")
    return accounts


def ensure_demo_accounts(
    gw: XnatGateway, project: str, accounts: DemoAccounts, *, role: str = "Members"
) -> None:
    """Create the project and the radiologist accounts (``role`` of it) unless they exist.

    ``gw`` must be logged in as the admin. Idempotent: existing users and memberships are kept.
    """
    gw.xnat.put(f"/data/projects/{project}", accepted_status=[200, 201])
    existing = gw.xnat.get("/xapi/users", accepted_status=[200]).json()
    names = {u if isinstance(u, str) else u.get("username") for u in existing}
    for i, (user, password) in enumerate(accounts.radiologists.items(), start=1):
        if user not in names:
            gw.xnat.post(
                "/xapi/users",
                json={
                    "username": user,
                    "password": password,
                    "email": f"{user}@demo.invalid",
                    "firstName": "Radiologist",
                    "lastName": str(i),
                    "enabled": True,
                    "verified": True,
                },
                accepted_status=[200, 201],
            )
        gw.xnat.put(f"/data/projects/{project}/users/{role}/{user}", accepted_status=[200, 201])


def zip_folder(folder: Path) -> bytes:
    """The files under ``folder`` as an uncompressed zip (what a DICOM sender would upload)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder).as_posix())
    return buf.getvalue()


def import_session(gw: XnatGateway, project: str, session: CohortSession) -> SessionRef:
    """Send one session's DICOM through ``POST /data/services/import``; return it as listed."""
    gw.xnat.post(
        "/data/services/import",
        data=zip_folder(session.dicom_dir),
        query={
            "import-handler": "DICOM-zip",
            "PROJECT_ID": project,
            "SUBJECT_ID": session.subject,
            "EXPT_LABEL": session.label,
            "overwrite": "append",
        },
        headers={"Content-Type": "application/zip"},
    )
    return gw.get_session(session.label, project)


def rated_labels(cohort: Cohort, n_rated: int) -> set[str]:
    """The labels of the sessions the radiologists rate: the first ``n_rated`` of the cohort."""
    return {s.label for s in cohort.sessions[: max(0, n_rated)]}


class ArrivalFeed:
    """Sends a cohort into XNAT as a scanner and a team of radiologists would, in a thread.

    Parameters
    ----------
    connect:
        ``connect(user, password) -> XnatGateway``: opens a gateway to the demo's XNAT.
    cohort:
        The simulated cohort (sessions in arrival order).
    project:
        Target project.
    accounts:
        The demo's accounts; ratings are written under each radiologist's own login.
    n_rated:
        How many sessions (the first ones) the radiologists rate.
    interval_s:
        Pause between two arrivals.
    notify:
        ``notify(session_ref)`` called after each import (posts the Prefect event); ``None``
        to rely on polling alone. Its failure is logged and never stops the feed.
    on_arrival:
        Optional progress callback ``(session_ref, rated)``, called for each session sent
        (not for those already in XNAT).
    """

    def __init__(
        self,
        connect: Callable[[str, str], XnatGateway],
        cohort: Cohort,
        project: str,
        accounts: DemoAccounts,
        *,
        n_rated: int,
        interval_s: float,
        notify: Callable[[SessionRef], None] | None = None,
        on_arrival: Callable[[SessionRef, bool], None] | None = None,
    ) -> None:
        self._connect = connect
        self._cohort = cohort
        self._project = project
        self._accounts = accounts
        self._rated = rated_labels(cohort, n_rated)
        self._interval = max(0.0, interval_s)
        self._notify = notify
        self._on_arrival = on_arrival
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.imported: list[str] = []
        self.ratings_written = 0
        self.error: BaseException | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> ArrivalFeed:
        self._thread = threading.Thread(target=self._run_guarded, name="demo-arrivals", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the feed to finish; ``True`` when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    # ----------------------------------------------------------------- work

    def _run_guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # reported by the demo; the thread must not die silently
            self.error = exc
            logger.error("demo arrivals stopped: %s", exc)

    def run(self) -> None:
        """Import every session not yet in XNAT, post its event, enter its ratings."""
        accounts = self._accounts
        with self._connect(accounts.admin_user, accounts.admin_password) as admin:
            present = {ref.label for ref in admin.list_sessions(self._project)}
            raters = self._rater_map()
            first = True
            for session in self._cohort.sessions:
                if self._stop.is_set():
                    return
                if session.label in present:
                    ref = admin.get_session(session.label, self._project)
                else:
                    if not first and self._stop.wait(self._interval):
                        return
                    first = False
                    ref = import_session(admin, self._project, session)
                    self.imported.append(session.label)
                    if self._notify is not None:
                        try:
                            self._notify(ref)
                        except Exception as exc:  # push is the fast path; polling is the net
                            logger.warning("event for %s not posted: %s", ref.label, exc)
                    if self._on_arrival is not None:
                        self._on_arrival(ref, session.label in self._rated)
                if session.label in self._rated:
                    self._enter_ratings(ref, session, raters)

    def _rater_map(self) -> dict[str, str]:
        """Simulated panel rater (R1, R2, …) -> radiologist account, in order."""
        panel = sorted({r for s in self._cohort.sessions for r in s.ratings})
        return dict(zip(panel, self._accounts.radiologists, strict=False))

    def _enter_ratings(
        self, ref: SessionRef, session: CohortSession, raters: dict[str, str]
    ) -> None:
        for rater, user in raters.items():
            scores = session.ratings.get(rater)
            if not scores:
                continue
            password = self._accounts.radiologists[user]
            with self._connect(user, password) as gw:
                done = {r.rater for r in gw.read_ratings(self._project) if r.session_id == ref.session_id}
                if user in done:
                    continue
                gw.write_rating(ref, user, scores)
                self.ratings_written += 1


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 2.0,
    stop: threading.Event | None = None,
) -> bool:
    """Poll ``predicate`` until it is true, the timeout passes or ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if stop is not None and stop.wait(interval):
            return False
        if stop is None:
            time.sleep(interval)
    return predicate()


def labels_of(sessions: Sequence[SessionRef]) -> list[str]:
    return [s.label for s in sessions]
