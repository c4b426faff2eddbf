"""Attempt bookkeeping of automatic scoring, kept in the assessment's ``failure_reason``.

The schema has no attempts field, so a ``failed`` assessment's reason starts with a short,
readable tag that discovery parses back:

``[attempt 1 of 3, will retry; scans 1a2b3c4d] XnatServerError: ...``
    transient trouble (XNAT 5xx, dropped connection, timeout); discovery schedules attempt 2.
``[attempt 3 of 3, gave up; scans 1a2b3c4d] XnatServerError: ...``
    transient trouble on the last allowed attempt; not retried until the session changes.
``[not retried until the session changes; scans 1a2b3c4d] NotCTError: ...``
    bad data (not CT, broken DICOM, no usable scan): the same input fails the same way.

``scans`` is :func:`scans_fingerprint` of the session's scans when the failure was recorded; a
new, removed or replaced scan (other ID, type, frame count or SeriesInstanceUID) changes it,
which is how discovery knows the session changed. A reason without a tag (written by older
code or by hand) counts as one transient attempt.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from xnat_plugin.gateway.records import ScanRef, SessionRef

__all__ = [
    "FailureTag",
    "ScoringCandidate",
    "parse_failure_reason",
    "scans_fingerprint",
    "tag_failure_reason",
]

_TAG = re.compile(
    r"^\[(?:attempt (?P<attempt>\d+) of (?P<max>\d+), (?P<verdict>will retry|gave up)"
    r"|(?P<permanent>not retried until the session changes))"
    r"(?:; scans (?P<scans>[0-9a-f]{8,64}))?\] ?"
)


def scans_fingerprint(scans: Sequence[ScanRef]) -> str:
    """Eight hex digits summarising a session's scans (ID, type, frames, SeriesInstanceUID).

    >>> scans_fingerprint([])
    'e3b0c442'
    """
    text = "\n".join(
        sorted(f"{s.scan_id}|{s.xsi_type.lower()}|{s.frames}|{s.series_uid}" for s in scans)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class FailureTag:
    """What a ``failed`` assessment's reason says about its attempts.

    Attributes
    ----------
    attempt:
        Attempts made so far (1 for an untagged reason).
    final:
        ``True`` when discovery must not retry until the session changes (bad data, or the
        last allowed attempt failed).
    permanent:
        ``True`` for bad data (same input, same failure).
    scans:
        :func:`scans_fingerprint` at the time of the failure, or ``""`` when not recorded.
    reason:
        The reason without its tag.
    """

    attempt: int
    final: bool
    permanent: bool
    scans: str
    reason: str


def tag_failure_reason(
    reason: str, *, attempt: int, max_attempts: int, permanent: bool, scans: str = ""
) -> str:
    """Prefix ``reason`` with the tag :func:`parse_failure_reason` reads.

    >>> tag_failure_reason("XnatServerError: 503", attempt=1, max_attempts=3, permanent=False,
    ...                    scans="1a2b3c4d")
    '[attempt 1 of 3, will retry; scans 1a2b3c4d] XnatServerError: 503'
    >>> tag_failure_reason("NotCTError: MR", attempt=1, max_attempts=3, permanent=True)
    '[not retried until the session changes] NotCTError: MR'
    """
    if attempt < 1 or max_attempts < 1:
        raise ValueError(f"attempt {attempt} of {max_attempts}: both must be >= 1")
    suffix = f"; scans {scans}" if scans else ""
    if permanent:
        head = "not retried until the session changes"
    else:
        verdict = "will retry" if attempt < max_attempts else "gave up"
        head = f"attempt {attempt} of {max_attempts}, {verdict}"
    return f"[{head}{suffix}] {parse_failure_reason(reason).reason}"


def parse_failure_reason(reason: str) -> FailureTag:
    """Read the tag of a ``failed`` assessment's reason (see the module docstring).

    >>> parse_failure_reason("[attempt 3 of 3, gave up; scans 1a2b3c4d] boom").final
    True
    >>> parse_failure_reason("RuntimeError: CUDA out of memory").attempt
    1
    """
    match = _TAG.match(reason)
    if match is None:
        return FailureTag(attempt=1, final=False, permanent=False, scans="", reason=reason)
    rest = reason[match.end():]
    if match["permanent"]:
        return FailureTag(attempt=1, final=True, permanent=True, scans=match["scans"] or "",
                          reason=rest)  # fmt: skip
    attempt = int(match["attempt"])
    final = match["verdict"] == "gave up"
    return FailureTag(attempt=attempt, final=final, permanent=False, scans=match["scans"] or "",
                      reason=rest)  # fmt: skip


@dataclass(frozen=True)
class ScoringCandidate:
    """One session discovery should (re)score, and which attempt that would be.

    Attributes
    ----------
    session:
        The session.
    attempt:
        The attempt this run would be: 1 for a session never tried by this model version (or
        one that changed since its final failure), ``k + 1`` after ``k`` transient failures.
    previous_status:
        Status of this model version's existing assessment (``""`` when none; ``queued`` or
        ``running`` for a run in progress or one that died; ``failed``).
    scans:
        :func:`scans_fingerprint` of the session's scans when discovery had to read them (a
        session that changed after a final failure), else ``""``.
    """

    session: SessionRef
    attempt: int
    previous_status: str
    scans: str = ""
