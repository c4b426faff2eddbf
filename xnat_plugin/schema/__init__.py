"""The XNAT schemas this project ships, by the names XNAT serves them under.

``cbctqa`` is the plugin's datatype schema (``cbctqa:qaAssessmentData`` and
``cbctqa:ratingData``); XNAT deploys it from the plugin JAR as
``schemas/cbctqa/cbctqa.xsd``. Its one source is the plugin's
``xnat_plugin/plugin/src/main/resources/schemas/cbctqa/cbctqa.xsd`` (where XNAT's
xnat-data-builder reads it); ``cbctqa.xsd`` in this package is a link to that file, so edit
the plugin's file. ``xnat`` is a concise XNAT core schema of this project's
own writing that declares the XNAT types the local server and the clients use, with the
names, fields and extension chain of XNAT's real ``xnat.xsd``. The local
XNAT-compatible server answers ``GET /xapi/schemas/{name}`` with :func:`schema_text`.

Examples
--------
>>> from xnat_plugin.schema import SCHEMA_NAMES, schema_text
>>> SCHEMA_NAMES
('xnat', 'cbctqa')
>>> 'name="qaAssessmentData"' in schema_text("cbctqa")
True
"""

from __future__ import annotations

from pathlib import Path

from qa_core.errors import UnknownSchemaError

__all__ = [
    "CBCTQA_NAMESPACE",
    "SCHEMA_NAMES",
    "XNAT_NAMESPACE",
    "schema_path",
    "schema_text",
]

#: Names of the shipped schemas in the order a client must parse them (core first), as
#: listed by ``GET /xapi/schemas``.
SCHEMA_NAMES: tuple[str, ...] = ("xnat", "cbctqa")

#: Target namespace of the ``cbctqa`` schema (prefix ``cbctqa``).
CBCTQA_NAMESPACE = "http://cbctqa.org/xnat/cbctqa"

#: Target namespace of XNAT's core schema (prefix ``xnat``).
XNAT_NAMESPACE = "http://nrg.wustl.edu/xnat"

_SCHEMA_DIR = Path(__file__).resolve().parent


def schema_path(name: str) -> Path:
    """Return the path of a shipped schema file.

    Parameters
    ----------
    name : str
        Schema name as XNAT serves it: one of :data:`SCHEMA_NAMES` (``"xnat"`` or
        ``"cbctqa"``). A trailing ``.xsd`` is accepted.

    Returns
    -------
    pathlib.Path
        Absolute path of ``<name>.xsd`` inside this package.

    Raises
    ------
    UnknownSchemaError
        If ``name`` is not a shipped schema.
    FileNotFoundError
        If the package is installed without its ``.xsd`` data files.
    """
    key = name.removesuffix(".xsd")
    if key not in SCHEMA_NAMES:
        raise UnknownSchemaError(
            f"Unknown XNAT schema {name!r}: this project ships {', '.join(SCHEMA_NAMES)}; "
            "ask for one of those names (as in GET /xapi/schemas/{name})."
        )
    path = _SCHEMA_DIR / f"{key}.xsd"
    if not path.is_file():
        raise FileNotFoundError(
            f"Schema file {path} is missing: the package was installed without its data "
            "files; reinstall cbctqa so that xnat_plugin/schema/*.xsd is included."
        )
    return path


def schema_text(name: str) -> str:
    """Return the text of a shipped schema, as XNAT serves it at ``/xapi/schemas/{name}``.

    Parameters
    ----------
    name : str
        One of :data:`SCHEMA_NAMES`.

    Returns
    -------
    str
        The XSD document, UTF-8 decoded.

    Raises
    ------
    UnknownSchemaError
        If ``name`` is not a shipped schema.
    """
    return schema_path(name).read_text(encoding="utf-8")
