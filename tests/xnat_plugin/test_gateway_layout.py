"""The gateway's layout (issue 11, section 3): small modules behind the unchanged public API.

The gateway was one 1,700-line class in ``session.py``; it is now layered (transport, login,
reading, downloads, writing, resources, records split likewise). These tests pin what callers
rely on: every public name still imports from ``xnat_plugin.gateway`` and from the module it
came from, ``XnatGateway`` offers the same public methods with the same parameters, and no
module of the gateway grows past what one can read in a sitting.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

import xnat_plugin.gateway as gateway
from xnat_plugin.gateway import XnatGateway

MAX_LINES = 600
GATEWAY_DIR = Path(gateway.__file__).parent

#: ``xnat_plugin.gateway.__all__`` before the split.
PUBLIC_API = [
    "ASSESSMENT_XSI_TYPE", "CT_SESSION_XSI_TYPE", "RATING_XSI_TYPE", "AlertAcknowledgement",
    "AssessmentRecord", "AssessmentStatus", "CategoryAssessment", "Credentials", "FailureTag",
    "ProjectRef", "RatingRecord", "RequestCounts", "RetryPolicy", "ScanRef", "ScoringCandidate",
    "Secret", "SessionDetails", "SessionRef", "StoredAssessment", "XnatAuthenticationError",
    "XnatConfigurationError", "XnatConflictError", "XnatConnectionError", "XnatGateway",
    "XnatGatewayClosedError", "XnatGatewayError", "XnatNotFoundError", "XnatPermissionError",
    "XnatRequestError", "XnatResponseFormatError", "XnatScanSelectionError", "XnatServerError",
    "XnatValidationError", "acknowledge_alert", "assessment_label", "list_assessment_files",
    "list_projects", "parse_failure_reason", "rating_label", "read_acknowledgements",
    "read_assessment_file", "read_session_details", "resolve_credentials", "scans_fingerprint",
    "tag_failure_reason", "validate_scores",
]  # fmt: skip

#: Names imported from the gateway's submodules by flows, dashboard, tests and the
#: gateway itself before the split (module -> names).
MODULE_NAMES = {
    "xnat_plugin.gateway.session": ["RequestCounts", "XnatGateway"],
    "xnat_plugin.gateway.records": [
        "ASSESSMENT_XSI_TYPE", "CT_SESSION_XSI_TYPE", "NULL", "RATING_XSI_TYPE",
        "AssessmentRecord", "AssessmentStatus", "CategoryAssessment", "RatingRecord", "ScanRef",
        "SessionRef", "StoredAssessment", "assessment_label", "parse_xnat_datetime",
        "rating_label", "safe_label_part", "validate_scores",
    ],
}  # fmt: skip

#: ``XnatGateway``'s public methods and properties before the split, with their parameters.
GATEWAY_MEMBERS = {
    "connect": ["host", "user", "password", "project", "retries", "backoff", "max_backoff",
                "jitter", "timeout", "parse_model", "netrc_file", "seed"],
    "close": ["self"],
    "list_sessions": ["self", "project", "modality"],
    "get_session": ["self", "label", "project", "modality"],
    "find_sessions_to_score": ["self", "project", "model_version", "modality", "max_attempts"],
    "plan_scoring": ["self", "project", "model_version", "modality", "max_attempts"],
    "list_scans": ["self", "session"],
    "select_scan": ["self", "session", "scan_id", "scans"],
    "download_scan": ["self", "session", "scan_id", "dest_dir", "resource"],
    "load_session_volume": ["self", "session", "scan_id", "dest_dir"],
    "write_assessment": ["self", "session", "record", "resources"],
    "mark_failed": ["self", "session", "scan_id", "model_version", "reason"],
    "write_rating": ["self", "session", "rater", "scores", "comments", "scan_id",
                     "on_behalf_of", "date"],
    "write_project_files": ["self", "project", "label", "paths"],
    "read_assessments": ["self", "project", "session_id"],  # session_id: keyword, added later
    "read_ratings": ["self", "project"],
}  # fmt: skip
GATEWAY_PROPERTIES = ["closed", "xnat", "host", "user", "project", "policy", "request_counts"]


def _gateway_modules() -> list[Path]:
    return sorted(GATEWAY_DIR.glob("*.py"))


def test_the_gateway_has_its_layers() -> None:
    names = {p.stem for p in _gateway_modules()}
    expected = {"transport", "login", "reading", "downloads", "writing", "resources", "session"}
    assert expected <= names, f"missing gateway layers: {sorted(expected - names)}"


@pytest.mark.parametrize("path", _gateway_modules(), ids=lambda p: p.name)
def test_no_gateway_module_is_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(GATEWAY_DIR.parent.parent)} has {lines} lines (limit {MAX_LINES}); "
        "split it by concept as transport/reading/writing are split"
    )


def test_public_api_is_unchanged() -> None:
    assert sorted(gateway.__all__) == sorted(PUBLIC_API)
    for name in PUBLIC_API:
        assert getattr(gateway, name, None) is not None, f"xnat_plugin.gateway.{name} is gone"


@pytest.mark.parametrize("module_name", sorted(MODULE_NAMES))
def test_names_still_import_from_their_old_modules(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in MODULE_NAMES[module_name]:
        value = getattr(module, name, None)
        assert value is not None, f"{module_name}.{name} no longer imports"
        if name in PUBLIC_API:  # one object, whichever path it is imported by
            assert value is getattr(gateway, name)
    assert set(module.__all__) >= set(MODULE_NAMES[module_name])


def test_the_session_module_exports_what_it_did() -> None:
    session = importlib.import_module("xnat_plugin.gateway.session")
    assert sorted(session.__all__) == ["RequestCounts", "XnatGateway"]
    assert session.XnatGateway is XnatGateway
    assert XnatGateway.__module__ == "xnat_plugin.gateway.session"


def test_gateway_members_and_parameters_are_unchanged() -> None:
    public = {n for n in dir(XnatGateway) if not n.startswith("_")}
    assert public == set(GATEWAY_MEMBERS) | set(GATEWAY_PROPERTIES)
    for name, params in GATEWAY_MEMBERS.items():
        signature = inspect.signature(getattr(XnatGateway, name))
        assert list(signature.parameters) == params, f"XnatGateway.{name}{signature}"
    for name in GATEWAY_PROPERTIES:
        assert isinstance(inspect.getattr_static(XnatGateway, name), property), name
    assert isinstance(inspect.getattr_static(XnatGateway, "connect"), classmethod)
    # still a context manager
    assert callable(XnatGateway.__enter__) and callable(XnatGateway.__exit__)
