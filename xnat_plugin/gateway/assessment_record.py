"""The automatic assessment as a record: ``cbctqa:qaAssessmentData`` fields both ways.

:class:`AssessmentRecord` holds the fields of one assessment of one CBCT scan by one model
version (with a :class:`CategoryAssessment` per category), converts them to the query-string
values XNAT stores and back from the strings XNAT lists; :class:`StoredAssessment` adds
where the assessor lives. Re-exported by :mod:`xnat_plugin.gateway.records`.

Missing values: XNAT stores an absent field as empty. Floats read back from an empty
field are ``NaN`` (and ``NaN`` is written as ``NULL``, which deletes the field), integers
and booleans become ``None``, strings ``""``.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from qa_core.categories import CATEGORIES
from xnat_plugin.gateway.conventions import NULL
from xnat_plugin.gateway.errors import XnatResponseFormatError, XnatValidationError

__all__ = ["AssessmentRecord", "AssessmentStatus", "CategoryAssessment", "StoredAssessment"]

AssessmentStatus = Literal["queued", "running", "complete", "failed"]
_STATUSES: Final[tuple[str, ...]] = get_args(AssessmentStatus)

_FAILURE_REASON_MAX: Final[int] = 2000  # xs:maxLength in cbctqa.xsd
_OUTLIER_REASON_MAX: Final[int] = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CategoryAssessment:
    """The model's result for one category of one scan.

    Attributes
    ----------
    score:
        Predicted Likert quality (continuous, about 1..5, 5 = best); ``NaN`` if unavailable.
    ae:
        Attribution Energy: sum over all slices and map cells of the raw (ReLU, not
        normalised) Grad-CAM map, in model-output units; ``NaN`` if unavailable.
    ae_per_voxel:
        ``ae`` divided by the number of map cells summed; ``NaN`` if unavailable.
    outlier:
        ``True`` when the scan's attribution is atypical for the cohort, ``None`` when not
        (yet) evaluated.
    outlier_reason:
        Why it was flagged (at most 1000 characters), else ``""``.
    ae_in_region:
        Share (0-1) of the raw map's energy inside the category's contoured organ
        (``qa_core.localisation``); ``NaN`` when the session has no RTSTRUCT.
    region_share:
        Chance level of ``ae_in_region``: the organ's share of the body (0-1); ``NaN`` if unknown.
    pointing_hit_rate:
        Share (0-1) of the organ's slices whose map maximum lies in the organ; ``NaN`` if unknown.
    """

    score: float
    ae: float
    ae_per_voxel: float
    outlier: bool | None = None
    outlier_reason: str = ""
    ae_in_region: float = math.nan
    region_share: float = math.nan
    pointing_hit_rate: float = math.nan

    def __post_init__(self) -> None:
        for name in (
            "score",
            "ae",
            "ae_per_voxel",
            "ae_in_region",
            "region_share",
            "pointing_hit_rate",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise XnatValidationError(
                    f"CategoryAssessment.{name} must be a float; got {type(value).__name__}"
                )
            if math.isinf(value):
                raise XnatValidationError(
                    f"CategoryAssessment.{name} is infinite; expected a finite float or NaN"
                )
            object.__setattr__(self, name, float(value))
        if len(self.outlier_reason) > _OUTLIER_REASON_MAX:
            raise XnatValidationError(
                f"CategoryAssessment.outlier_reason has {len(self.outlier_reason)} characters; "
                f"the schema allows at most {_OUTLIER_REASON_MAX}"
            )


#: Per-category fields of ``cbctqa:qaAssessmentData``, in schema order.
_PER_CATEGORY_FIELDS: Final[tuple[str, ...]] = (
    "score",
    "ae",
    "ae_per_voxel",
    "ae_in_region",
    "region_share",
    "pointing_hit_rate",
    "outlier",
    "outlier_reason",
)


def _float_field(value: float | None) -> str:
    if value is None or math.isnan(value):
        return NULL
    return repr(float(value))


def _str_field(value: str) -> str:
    return value if value else NULL


@dataclass(frozen=True)
class AssessmentRecord:
    """Fields of one ``cbctqa:qaAssessmentData`` (mirrors the schema).

    Attributes
    ----------
    status:
        ``queued``, ``running``, ``complete`` or ``failed``. A ``complete`` record must hold
        all five categories.
    scan_id:
        ID of the scored scan within its session.
    model_version:
        Version of the scoring model; with session and scan it makes the label.
    failure_reason:
        Why scoring failed (``failed`` only; at most 2000 characters).
    series_uid:
        SeriesInstanceUID of the scored series.
    slices:
        Number of axial slices scored.
    spacing:
        Voxel spacing ``(z, y, x)`` in mm.
    model_name, model_sha256:
        Model name and SHA-256 of its weights (64 lower-case hex digits).
    cam_method, target_layer:
        Attribution method and the layer it used.
    package_version:
        Version of the cbctqa package that scored.
    duration_s:
        Wall-clock scoring time in seconds.
    categories:
        Per-category results keyed by category name (subset of
        :data:`qa_core.categories.CATEGORIES`).
    """

    status: AssessmentStatus
    scan_id: str
    model_version: str
    failure_reason: str = ""
    series_uid: str = ""
    slices: int | None = None
    spacing: tuple[float, float, float] | None = None
    model_name: str = ""
    model_sha256: str = ""
    cam_method: str = ""
    target_layer: str = ""
    package_version: str = ""
    duration_s: float | None = None
    categories: Mapping[str, CategoryAssessment] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise XnatValidationError(
                f"AssessmentRecord.status is {self.status!r}; expected one of {', '.join(_STATUSES)}"
            )
        if not self.scan_id:
            raise XnatValidationError(
                "AssessmentRecord.scan_id is empty; expected the scored scan's ID"
            )
        if not self.model_version:
            raise XnatValidationError(
                "AssessmentRecord.model_version is empty; expected the model version"
            )
        if len(self.failure_reason) > _FAILURE_REASON_MAX:
            raise XnatValidationError(
                f"AssessmentRecord.failure_reason has {len(self.failure_reason)} characters; "
                f"the schema allows at most {_FAILURE_REASON_MAX}"
            )
        if self.status == "failed" and not self.failure_reason:
            raise XnatValidationError(
                "AssessmentRecord.status is 'failed' but failure_reason is empty; say why it failed"
            )
        unknown = sorted(set(self.categories) - set(CATEGORIES))
        if unknown:
            raise XnatValidationError(
                f"AssessmentRecord.categories has unknown categories {unknown}; expected a subset of {list(CATEGORIES)}"
            )
        if self.status == "complete":
            missing = [c for c in CATEGORIES if c not in self.categories]
            if missing:
                raise XnatValidationError(
                    f"AssessmentRecord.status is 'complete' but categories {missing} are missing; "
                    "a complete assessment holds all five"
                )
        for name, cat in self.categories.items():
            if not isinstance(cat, CategoryAssessment):
                raise XnatValidationError(
                    f"AssessmentRecord.categories[{name!r}] is a {type(cat).__name__}; expected CategoryAssessment"
                )
        if self.slices is not None and (isinstance(self.slices, bool) or self.slices < 1):
            raise XnatValidationError(
                f"AssessmentRecord.slices is {self.slices!r}; expected a positive integer"
            )
        if self.spacing is not None:
            if len(self.spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing):
                raise XnatValidationError(
                    f"AssessmentRecord.spacing is {self.spacing!r}; expected three positive mm values (z, y, x)"
                )
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.model_sha256 and not _SHA256.fullmatch(self.model_sha256):
            raise XnatValidationError(
                f"AssessmentRecord.model_sha256 is {self.model_sha256!r}; expected 64 lower-case hex digits"
            )
        if self.duration_s is not None and not (
            math.isfinite(self.duration_s) and self.duration_s >= 0
        ):
            raise XnatValidationError(
                f"AssessmentRecord.duration_s is {self.duration_s!r}; expected a non-negative number of seconds"
            )
        object.__setattr__(
            self, "categories", {c: self.categories[c] for c in CATEGORIES if c in self.categories}
        )

    def to_xnat_fields(self) -> dict[str, str]:
        """Every schema field as the string XNAT stores (``NULL`` deletes an absent one).

        Keys are bare field names (``parotid_score``); the gateway prefixes the xsi:type.
        """
        spacing: tuple[float | None, float | None, float | None] = self.spacing or (
            None,
            None,
            None,
        )
        out = {
            "status": self.status,
            "failure_reason": _str_field(self.failure_reason),
            "scan_id": self.scan_id,
            "series_uid": _str_field(self.series_uid),
            "slices": NULL if self.slices is None else str(int(self.slices)),
            "spacing_z": _float_field(spacing[0]),
            "spacing_y": _float_field(spacing[1]),
            "spacing_x": _float_field(spacing[2]),
            "model_name": _str_field(self.model_name),
            "model_version": self.model_version,
            "model_sha256": _str_field(self.model_sha256),
            "cam_method": _str_field(self.cam_method),
            "target_layer": _str_field(self.target_layer),
            "package_version": _str_field(self.package_version),
            "duration_s": _float_field(self.duration_s),
        }
        for cat in CATEGORIES:
            res = self.categories.get(cat)
            out[f"{cat}_score"] = _float_field(None if res is None else res.score)
            out[f"{cat}_ae"] = _float_field(None if res is None else res.ae)
            out[f"{cat}_ae_per_voxel"] = _float_field(None if res is None else res.ae_per_voxel)
            for loc in ("ae_in_region", "region_share", "pointing_hit_rate"):
                out[f"{cat}_{loc}"] = _float_field(None if res is None else getattr(res, loc))
            out[f"{cat}_outlier"] = (
                NULL if res is None or res.outlier is None else ("true" if res.outlier else "false")
            )
            out[f"{cat}_outlier_reason"] = NULL if res is None else _str_field(res.outlier_reason)
        return out

    @staticmethod
    def field_names() -> tuple[str, ...]:
        """Bare names of every ``cbctqa:qaAssessmentData`` field this record carries."""
        fixed = (
            "status", "failure_reason", "scan_id", "series_uid", "slices", "spacing_z", "spacing_y",
            "spacing_x", "model_name", "model_version", "model_sha256", "cam_method", "target_layer",
            "package_version", "duration_s",
        )  # fmt: skip
        per_cat = tuple(f"{c}_{s}" for c in CATEGORIES for s in _PER_CATEGORY_FIELDS)
        return fixed + per_cat

    @classmethod
    def from_xnat_fields(cls, fields: Mapping[str, str], *, what: str) -> AssessmentRecord:
        """Rebuild a record from bare field names to XNAT strings (as listed).

        A category whose score, AE, AE per voxel and outlier flag are all empty is absent.

        Raises
        ------
        XnatResponseFormatError
            A value does not parse, or the stored fields violate the record's rules;
            ``what`` (for example the assessor label) names the assessor.
        """

        def text(name: str) -> str:
            return str(fields.get(name, "") or "").strip()

        def num(name: str) -> float:
            raw = text(name)
            if not raw or raw == NULL:  # absent, or a write-side "delete this field"
                return math.nan
            try:
                return float(raw)
            except ValueError as exc:
                raise XnatResponseFormatError(
                    f"{what}: field {name}={raw!r} is not a number"
                ) from exc

        def opt_num(name: str) -> float | None:
            value = num(name)
            return None if math.isnan(value) else value

        def boolean(name: str) -> bool | None:
            raw = text(name).lower()
            if not raw:
                return None
            if raw in {"true", "1"}:
                return True
            if raw in {"false", "0"}:
                return False
            raise XnatResponseFormatError(f"{what}: field {name}={raw!r} is not a boolean")

        categories: dict[str, CategoryAssessment] = {}
        for cat in CATEGORIES:
            parts = [text(f"{cat}_{s}") for s in ("score", "ae", "ae_per_voxel", "outlier")]
            if not any(parts):
                continue
            categories[cat] = CategoryAssessment(
                score=num(f"{cat}_score"),
                ae=num(f"{cat}_ae"),
                ae_per_voxel=num(f"{cat}_ae_per_voxel"),
                outlier=boolean(f"{cat}_outlier"),
                outlier_reason=text(f"{cat}_outlier_reason"),
                ae_in_region=num(f"{cat}_ae_in_region"),
                region_share=num(f"{cat}_region_share"),
                pointing_hit_rate=num(f"{cat}_pointing_hit_rate"),
            )
        spacing_parts = [opt_num(f"spacing_{a}") for a in "zyx"]
        spacing = None
        if all(s is not None for s in spacing_parts):
            spacing = (
                float(spacing_parts[0] or 0),
                float(spacing_parts[1] or 0),
                float(spacing_parts[2] or 0),
            )
        slices_f = opt_num("slices")
        try:
            return cls(
                status=text("status"),  # type: ignore[arg-type]  # validated in __post_init__
                scan_id=text("scan_id"),
                model_version=text("model_version"),
                failure_reason=text("failure_reason"),
                series_uid=text("series_uid"),
                slices=None if slices_f is None else int(slices_f),
                spacing=spacing,
                model_name=text("model_name"),
                model_sha256=text("model_sha256"),
                cam_method=text("cam_method"),
                target_layer=text("target_layer"),
                package_version=text("package_version"),
                duration_s=opt_num("duration_s"),
                categories=categories,
            )
        except XnatValidationError as exc:
            raise XnatResponseFormatError(
                f"{what}: stored assessment is inconsistent: {exc}"
            ) from exc


@dataclass(frozen=True)
class StoredAssessment:
    """An assessment as stored in XNAT: where it lives plus its :class:`AssessmentRecord`.

    Attributes
    ----------
    assessor_id, label, uri:
        Accession ID, label and REST path of the assessor.
    project, session_id, session_label, subject_id, subject:
        The image session it assesses (subject fields ``""`` when the server did not list them).
    insert_date, last_modified:
        When the assessor was created / last changed, if listed.
    record:
        The assessment's fields.
    """

    assessor_id: str
    label: str
    uri: str
    project: str
    session_id: str
    session_label: str
    record: AssessmentRecord
    subject_id: str = ""
    subject: str = ""
    insert_date: _dt.datetime | None = None
    last_modified: _dt.datetime | None = None
