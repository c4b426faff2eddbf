"""The gateway between the CBCT QA services and XNAT (on xnatpy).

``XnatGateway.connect(...)`` opens a context manager used by flows and dashboard to find
sessions to score, download scans, write assessments and ratings idempotently and read
them back in bulk. See :mod:`xnat_plugin.gateway.session` for the request budget of each
method, :mod:`xnat_plugin.gateway.retry` for what is retried, and
:mod:`xnat_plugin.gateway.records` for the records and their XNAT fields.
"""

from __future__ import annotations

from xnat_plugin.gateway.attempts import (
    FailureTag,
    ScoringCandidate,
    parse_failure_reason,
    scans_fingerprint,
    tag_failure_reason,
)
from xnat_plugin.gateway.credentials import Credentials, Secret, resolve_credentials
from xnat_plugin.gateway.errors import (
    XnatAuthenticationError,
    XnatConfigurationError,
    XnatConflictError,
    XnatConnectionError,
    XnatGatewayClosedError,
    XnatGatewayError,
    XnatNotFoundError,
    XnatPermissionError,
    XnatRequestError,
    XnatResponseFormatError,
    XnatScanSelectionError,
    XnatServerError,
    XnatValidationError,
)
from xnat_plugin.gateway.records import (
    ASSESSMENT_XSI_TYPE,
    CT_SESSION_XSI_TYPE,
    RATING_XSI_TYPE,
    AssessmentRecord,
    AssessmentStatus,
    CategoryAssessment,
    RatingRecord,
    ScanRef,
    SessionRef,
    StoredAssessment,
    assessment_label,
    rating_label,
    validate_scores,
)
from xnat_plugin.gateway.retry import RetryPolicy
from xnat_plugin.gateway.review import (
    AlertAcknowledgement,
    ProjectRef,
    SessionDetails,
    acknowledge_alert,
    list_assessment_files,
    list_projects,
    read_acknowledgements,
    read_assessment_file,
    read_session_details,
)
from xnat_plugin.gateway.session import RequestCounts, XnatGateway

__all__ = [
    "ASSESSMENT_XSI_TYPE",
    "CT_SESSION_XSI_TYPE",
    "RATING_XSI_TYPE",
    "AlertAcknowledgement",
    "AssessmentRecord",
    "AssessmentStatus",
    "CategoryAssessment",
    "Credentials",
    "FailureTag",
    "ProjectRef",
    "RatingRecord",
    "RequestCounts",
    "RetryPolicy",
    "ScanRef",
    "ScoringCandidate",
    "Secret",
    "SessionDetails",
    "SessionRef",
    "StoredAssessment",
    "XnatAuthenticationError",
    "XnatConfigurationError",
    "XnatConflictError",
    "XnatConnectionError",
    "XnatGateway",
    "XnatGatewayClosedError",
    "XnatGatewayError",
    "XnatNotFoundError",
    "XnatPermissionError",
    "XnatRequestError",
    "XnatResponseFormatError",
    "XnatScanSelectionError",
    "XnatServerError",
    "XnatValidationError",
    "acknowledge_alert",
    "assessment_label",
    "list_assessment_files",
    "list_projects",
    "parse_failure_reason",
    "rating_label",
    "read_acknowledgements",
    "read_assessment_file",
    "read_session_details",
    "resolve_credentials",
    "scans_fingerprint",
    "tag_failure_reason",
    "validate_scores",
]
