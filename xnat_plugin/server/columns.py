"""How XNAT 1.8 names the columns of a listing (its ``QueryOrganizerResource``).

A requested column is either one of the listing's *shortcuts* (``subject_ID``, ``label``,
``insert_date`` ...) or an xpath (``cbctqa:qaAssessmentData/status``). XNAT resolves a
shortcut to its xpath, runs the query, and names each answered column back:

* a column whose xpath matches a shortcut's xpath, ignoring case, comes back under the
  shortcut's name (``xnat:subjectAssessorData/subject_id`` -> ``subject_ID``);
* any other xpath comes back as the whole xpath in lower case, with ``.`` and ``@`` as ``/``
  (``cbctqa:qaAssessmentData/status`` -> ``cbctqa:qaassessmentdata/status``);
* the root type's own ID is added as ``<root>/id`` in lower case (``xnat:ctsessiondata/id``)
  beside ``ID``, unless it is the shortcut ``ID`` itself; ``URI`` is always last.

pyxnat depends on this (its ``Experiment`` reads ``subject_ID``; ``array.scans`` reads
``xnat:ctscandata/id``). The tables here are XNAT 1.8's ``XMLPathShortcuts`` (one per
listing root: experiments, assessors, subjects, scans, projects); subjects and projects have
no ``xsiType`` shortcut, so their rows carry no ``xsiType`` key in strict mode.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ASSESSOR_SHORTCUTS",
    "EXPERIMENT_SHORTCUTS",
    "PROJECT_SHORTCUTS",
    "SCAN_SHORTCUTS",
    "SUBJECT_SHORTCUTS",
    "ListingKind",
    "column_key",
    "listing_kind",
]

#: shortcut name -> xpath on experiment and assessor listings
EXPERIMENT_SHORTCUTS: dict[str, str] = {
    "ID": "xnat:experimentData/ID",
    "visit_id": "xnat:experimentData/visit_id",
    "visit": "xnat:experimentData/visit",
    "date": "xnat:experimentData/date",
    "time": "xnat:experimentData/time",
    "note": "xnat:experimentData/note",
    "pi_firstname": "xnat:experimentData/investigator/firstname",
    "pi_lastname": "xnat:experimentData/investigator/lastname",
    "validation_method": "xnat:experimentData/validation/method",
    "validation_status": "xnat:experimentData/validation/status",
    "validation_date": "xnat:experimentData/validation/date",
    "validation_notes": "xnat:experimentData/validation/notes",
    "project": "xnat:experimentData/project",
    "label": "xnat:experimentData/label",
    "scanner": "xnat:imageSessionData/scanner",
    "operator": "xnat:imageSessionData/operator",
    "dcmAccessionNumber": "xnat:imageSessionData/dcmAccessionNumber",
    "dcmPatientId": "xnat:imageSessionData/dcmPatientId",
    "dcmPatientName": "xnat:imageSessionData/dcmPatientName",
    "session_type": "xnat:imageSessionData/session_type",
    "modality": "xnat:imageSessionData/modality",
    "UID": "xnat:imageSessionData/UID",
    "studyInstanceUID": "xnat:imageSessionData/UID",
    "subject_ID": "xnat:subjectAssessorData/subject_id",
    "subject_label": "xnat:subjectData/label",
    "subject_project": "xnat:subjectData/project",
    "session_ID": "xnat:imageSessionData/ID",
    "session_label": "xnat:imageSessionData/label",
    "session_project": "xnat:imageSessionData/project",
    "insert_date": "xnat:experimentData/meta/insert_date",
    "insert_user": "xnat:experimentData/meta/insert_user/login",
    "last_modified": "xnat:experimentData/meta/last_modified",
    "xsiType": "xnat:experimentData/extension_item/element_name",
}

#: shortcut name -> xpath on assessor listings (``{session}/assessors``): no subject keys
ASSESSOR_SHORTCUTS: dict[str, str] = {
    name: path for name, path in EXPERIMENT_SHORTCUTS.items()
    if (path.startswith("xnat:experimentData/") and name != "visit")
    or name in {"session_ID", "session_label", "session_project"}
}

_DEMOGRAPHICS = "xnat:subjectData/demographics"  # [@xsi:type=xnat:demographicData] in XNAT

#: shortcut name -> xpath on subject listings (XNAT has no ``xsiType`` shortcut here)
SUBJECT_SHORTCUTS: dict[str, str] = {
    "project": "xnat:subjectData/project",
    "label": "xnat:subjectData/label",
    "ID": "xnat:subjectData/ID",
    "group": "xnat:subjectData/group",
    "src": "xnat:subjectData/src",
    "pi_firstname": "xnat:subjectData/investigator/firstname",
    "pi_lastname": "xnat:subjectData/investigator/lastname",
    **{name: f"{_DEMOGRAPHICS}/{name}" for name in (
        "dob", "yob", "age", "gender", "handedness", "ses", "education", "educationDesc",
        "race", "ethnicity", "weight", "height", "gestational_age", "post_menstrual_age",
        "birth_weight")},
    "insert_date": "xnat:subjectData/meta/insert_date",
    "insert_user": "xnat:subjectData/meta/insert_user/login",
    "last_modified": "xnat:subjectData/meta/last_modified",
}

#: shortcut name -> xpath on scan listings
SCAN_SHORTCUTS: dict[str, str] = {
    "ID": "xnat:imageScanData/ID",
    "type": "xnat:imageScanData/type",
    "UID": "xnat:imageScanData/UID",
    "note": "xnat:imageScanData/note",
    "quality": "xnat:imageScanData/quality",
    "condition": "xnat:imageScanData/condition",
    "series_description": "xnat:imageScanData/series_description",
    "documentation": "xnat:imageScanData/documentation",
    "scanner": "xnat:imageScanData/scanner",
    "modality": "xnat:imageScanData/modality",
    "frames": "xnat:imageScanData/frames",
    "validation_method": "xnat:imageScanData/validation/method",
    "validation_status": "xnat:imageScanData/validation/status",
    "validation_date": "xnat:imageScanData/validation/date",
    "validation_notes": "xnat:imageScanData/validation/notes",
    "xnat_imagescandata_id": "xnat:imageScanData/xnat_imagescandata_id",
    "scanTime": "xnat:imageScanData/startTime",
    "insert_date": "xnat:imageScanData/meta/insert_date",
    "insert_user": "xnat:imageScanData/meta/insert_user/login",
    "last_modified": "xnat:imageScanData/meta/last_modified",
    "xsiType": "xnat:imageScanData/extension_item/element_name",
}

#: shortcut name -> xpath on the project listing
PROJECT_SHORTCUTS: dict[str, str] = {
    "ID": "xnat:projectData/ID",
    "secondary_ID": "xnat:projectData/secondary_ID",
    "name": "xnat:projectData/name",
    "description": "xnat:projectData/description",
    "keywords": "xnat:projectData/keywords",
    "alias": "xnat:projectData/aliases/alias/alias",
    "pi_firstname": "xnat:projectData/PI/firstname",
    "pi_lastname": "xnat:projectData/PI/lastname",
}

_ALWAYS = {"URI": "URI"}


@dataclass(frozen=True)
class ListingKind:
    """The XNAT listing a request is answered by: its shortcuts, root type and default keys.

    Attributes
    ----------
    shortcuts : dict
        Shortcut name -> xpath.
    root : str
        The root datatype of the query (the ``xsiType`` filter when given).
    defaults : tuple of str
        Keys of a row when no ``columns`` are requested (before ``URI``).
    """

    shortcuts: dict[str, str]
    root: str
    defaults: tuple[str, ...]

    def root_id_key(self) -> str | None:
        """``<root>/id`` in lower case, or None when it is the shortcut ``ID`` itself."""
        key = f"{self.root.lower()}/id"
        return None if column_key(key, self.shortcuts) == "ID" else key


def column_key(column: str, shortcuts: dict[str, str]) -> str:
    """The key XNAT answers a requested ``column`` under (see the module notes).

    A bare name that is neither a shortcut nor an xpath keeps its spelling.
    """
    if column in _ALWAYS or column in shortcuts:
        return column
    low = column.lower()
    for name in shortcuts:
        if name.lower() == low:
            return name
    xpath = low.replace(".", "/").replace("@", "/")
    for name, path in shortcuts.items():
        if path.lower() == xpath:
            return name
    if ":" in xpath.split("/", 1)[0] and "/" in xpath:
        return xpath
    return column


def listing_kind(collection: str, scope: str, xsi_type: str | None,
                 is_assessor_type: bool, is_session_type: bool) -> ListingKind | None:
    """The XNAT listing behind ``{scope}/{collection}``.

    Parameters
    ----------
    collection : str
        ``projects``, ``experiments``, ``subjects``, ``scans`` or ``assessors``.
    scope : str
        What holds the collection: ``site``, ``project``, ``subject`` or ``experiment``.
    xsi_type : str or None
        The canonical ``xsiType`` filter (the first of several), if any.
    is_assessor_type, is_session_type : bool
        Whether ``xsi_type`` is an image assessor / image session type.
    """
    if collection == "projects":
        return ListingKind(PROJECT_SHORTCUTS, "xnat:projectData",
                           ("ID", "secondary_ID", "name", "description", "pi_firstname",
                            "pi_lastname"))
    base = ("ID", "project", "date", "xsiType", "label", "insert_date")
    if collection == "experiments" and scope == "site":
        if is_session_type:
            defaults: tuple[str, ...] = (*base, "subject_ID", "subject_label")
        elif is_assessor_type:
            defaults = (*base, "session_ID", "session_label")
        else:
            defaults = base
        return ListingKind(EXPERIMENT_SHORTCUTS, xsi_type or "xnat:experimentData", defaults)
    if collection == "experiments":
        root = xsi_type or "xnat:subjectAssessorData"
        kind = ListingKind(EXPERIMENT_SHORTCUTS, root, base)
        root_id = kind.root_id_key()
        return ListingKind(EXPERIMENT_SHORTCUTS, root,
                           (*base, root_id) if root_id else base)
    if collection == "assessors":
        root = xsi_type or "xnat:imageAssessorData"
        kind = ListingKind(ASSESSOR_SHORTCUTS, root, ())
        root_id = kind.root_id_key()
        defaults = ("ID", "project", "label", "date", "xsiType", "insert_date", "session_ID",
                    "session_label")
        return ListingKind(ASSESSOR_SHORTCUTS, root,
                           (*defaults, root_id) if root_id else defaults)
    if collection == "subjects":
        return ListingKind(SUBJECT_SHORTCUTS, xsi_type or "xnat:subjectData",
                           ("ID", "project", "label", "insert_date", "insert_user"))
    if collection == "scans":
        return ListingKind(SCAN_SHORTCUTS, xsi_type or "xnat:imageScanData",
                           ("xnat_imagescandata_id", "ID", "type", "quality", "xsiType", "note",
                            "series_description"))
    return None
