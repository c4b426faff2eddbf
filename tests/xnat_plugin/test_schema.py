"""Tests for the shipped XNAT schemas (``xnat_plugin/schema``).

Checked here:

* ``cbctqa.xsd`` declares exactly the contract's fields with the contract's types;
* it builds as XML Schema together with XNAT's REAL ``xnat.xsd`` (``tests/data/xnat-schemas``)
  and with our own ``xnat.xsd``, and instance documents validate (or fail) as they should;
* our ``xnat.xsd`` agrees with XNAT's real schema on every type, base type, field, field type,
  occurrence and element order it declares, and is of our own writing (far smaller, no copied
  header);
* XNAT's ``security.xsd`` declares the ``xdat:user`` properties the local server serves;
* xnatpy's own schema converter (the code ``xnat.connect`` runs on ``/xapi/schemas/{name}``)
  builds ``CbctqaQaAssessmentData`` and ``CbctqaRatingData`` with settable, typed properties.

XNAT's real schema files are vendored in ``tests/data/xnat-schemas`` with XNAT's licence, so no
test here skips.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import xmlschema
from lxml import etree
from xnat import StringLoader
from xnat.convert_xsd import SchemaParser

from qa_core.categories import CATEGORIES
from qa_core.errors import CbctQaError, UnknownSchemaError
from xnat_plugin.schema import (
    CBCTQA_NAMESPACE,
    SCHEMA_NAMES,
    XNAT_NAMESPACE,
    schema_path,
    schema_text,
)

XS = "http://www.w3.org/2001/XMLSchema"
XS_NS = f"{{{XS}}}"
REPO = Path(__file__).resolve().parents[2]


#: XNAT's real schema files, vendored with XNAT's licence (see its README.md): these tests
#: never skip for want of them.
SHARED = REPO / "tests" / "data" / "xnat-schemas"

#: Which xnat.xsd to build cbctqa.xsd with: ours and XNAT's real one.
WHICH = ["our", "real"]

# --------------------------------------------------------------------------- the contract

#: cbctqa:qaAssessmentData fields and XSD built-in types (XNAT_CONTRACT.md), in schema order.
QA_FIELDS: dict[str, str] = {
    "status": "string",
    "failure_reason": "string",
    "scan_id": "string",
    "series_uid": "string",
    "slices": "integer",
    "spacing_z": "float",
    "spacing_y": "float",
    "spacing_x": "float",
    "model_name": "string",
    "model_version": "string",
    "model_sha256": "string",
    "cam_method": "string",
    "target_layer": "string",
    "package_version": "string",
    "duration_s": "float",
}
for _c in CATEGORIES:
    QA_FIELDS |= {
        f"{_c}_score": "float",
        f"{_c}_ae": "float",
        f"{_c}_ae_per_voxel": "float",
        f"{_c}_ae_in_region": "float",  # localisation in the contoured organ (RTSTRUCT)
        f"{_c}_region_share": "float",
        f"{_c}_pointing_hit_rate": "float",
        f"{_c}_outlier": "boolean",
        f"{_c}_outlier_reason": "string",
    }
for _c in CATEGORIES:  # alert acknowledgements (dashboard), after every result field
    QA_FIELDS |= {f"{_c}_ack_by": "string", f"{_c}_ack_date": "dateTime", f"{_c}_ack_comment": "string"}

#: cbctqa:ratingData fields and built-in types, in schema order.
RATING_FIELDS: dict[str, str] = {"rater": "string", "scan_id": "string"}
RATING_FIELDS |= dict.fromkeys(CATEGORIES, "integer")
RATING_FIELDS["comments"] = "string"

STATUSES = ["queued", "running", "complete", "failed"]


# --------------------------------------------------------------------------- helpers


def _builtin_name(simple_type: Any) -> str:
    """Local name of the XSD built-in type a (possibly anonymous, derived) simple type restricts."""
    t = simple_type
    while t is not None and not (t.is_global() and t.target_namespace == XS):
        t = t.base_type
    assert t is not None, f"{simple_type} does not derive from an XSD built-in type"
    return str(t.local_name)


def _lay_out(tmp: Path, xnat_xsd: Path, with_standins: bool) -> Path:
    """Copy schemas into XNAT's JAR layout (schemas/<name>/<name>.xsd); return cbctqa.xsd's path."""
    (tmp / "schemas" / "xnat").mkdir(parents=True)
    (tmp / "schemas" / "cbctqa").mkdir(parents=True)
    shutil.copy(xnat_xsd, tmp / "schemas" / "xnat" / "xnat.xsd")
    if with_standins:
        (tmp / "schemas" / "xdat").mkdir(parents=True)
        (tmp / "schemas" / "birn").mkdir(parents=True)
        shutil.copy(SHARED / "standins" / "xdat.xsd", tmp / "schemas" / "xdat" / "xdat.xsd")
        shutil.copy(SHARED / "standins" / "birnprov.xsd", tmp / "schemas" / "birn" / "birnprov.xsd")
    target = tmp / "schemas" / "cbctqa" / "cbctqa.xsd"
    shutil.copy(schema_path("cbctqa"), target)
    return target


@pytest.fixture(scope="module")
def real_schema(tmp_path_factory: pytest.TempPathFactory) -> xmlschema.XMLSchema:
    """cbctqa.xsd built together with XNAT's real xnat.xsd."""
    tmp = tmp_path_factory.mktemp("real")
    return xmlschema.XMLSchema(_lay_out(tmp, SHARED / "xnat.xsd", with_standins=True))


@pytest.fixture(scope="module")
def our_schema(tmp_path_factory: pytest.TempPathFactory) -> xmlschema.XMLSchema:
    """cbctqa.xsd built together with our own xnat.xsd (no other file needed)."""
    tmp = tmp_path_factory.mktemp("ours")
    return xmlschema.XMLSchema(_lay_out(tmp, schema_path("xnat"), with_standins=False))


def _assessment_doc(**fields: str) -> str:
    body = "".join(f"<cbctqa:{k}>{v}</cbctqa:{k}>" for k, v in fields.items())
    return (
        f'<cbctqa:QAAssessment xmlns:cbctqa="{CBCTQA_NAMESPACE}" xmlns:xnat="{XNAT_NAMESPACE}" '
        'ID="XNAT_E00007" project="HN_CBCT" label="S001_cbctqa_2_1.0.0">'
        "<xnat:date>2026-03-14</xnat:date>"
        "<xnat:out><xnat:file xsi:type='xnat:resourceCatalog' "
        "xmlns:xsi='http://www.w3.org/2001/XMLSchema-instance' label='CBCTQA_GRADCAM' "
        "URI='/data/cbctqa/overlay/catalog.xml' format='PNG' file_count='5'/></xnat:out>"
        f"<xnat:imageSession_ID>XNAT_E00001</xnat:imageSession_ID>{body}</cbctqa:QAAssessment>"
    )


def _full_assessment_fields() -> dict[str, str]:
    fields = {
        "status": "complete",
        "scan_id": "2",
        "series_uid": "1.2.826.0.1.3680043.8.498.1",
        "slices": "88",
        "spacing_z": "2.5",
        "spacing_y": "0.9",
        "spacing_x": "0.9",
        "model_name": "LikertCNN",
        "model_version": "1.0.0",
        "model_sha256": "0" * 64,
        "cam_method": "GradCAM",
        "target_layer": "features.3",
        "package_version": "0.1.0",
        "duration_s": "12.5",
    }
    for c in CATEGORIES:
        fields |= {
            f"{c}_score": "3.4",
            f"{c}_ae": "1520.25",
            f"{c}_ae_per_voxel": "0.0131",
            f"{c}_outlier": "false",
        }
    return fields


def _rating_doc(scores: dict[str, str], rater: str | None = "alice", session: bool = True) -> str:
    body = f"<cbctqa:rater>{rater}</cbctqa:rater>" if rater is not None else ""
    body += "<cbctqa:scan_id>2</cbctqa:scan_id>"
    body += "".join(f"<cbctqa:{k}>{v}</cbctqa:{k}>" for k, v in scores.items())
    body += "<cbctqa:comments>Streaks below the mandible.</cbctqa:comments>"
    session_id = "<xnat:imageSession_ID>XNAT_E00001</xnat:imageSession_ID>" if session else ""
    return (
        f'<cbctqa:Rating xmlns:cbctqa="{CBCTQA_NAMESPACE}" xmlns:xnat="{XNAT_NAMESPACE}" '
        'ID="XNAT_E00008" project="HN_CBCT" label="S001_rating_alice">'
        f"<xnat:date>2026-03-15</xnat:date>{session_id}{body}</cbctqa:Rating>"
    )


# --------------------------------------------------------------------------- schema_path / schema_text


def test_schema_names_and_files() -> None:
    assert SCHEMA_NAMES == ("xnat", "cbctqa")
    for name in SCHEMA_NAMES:
        path = schema_path(name)
        assert path.name == f"{name}.xsd" and path.is_file()
        assert schema_path(f"{name}.xsd") == path
        text = schema_text(name)
        # xnatpy finds namespace declarations with the regex "<xs:schema([^>]*)>"
        assert re.search(r"<xs:schema[^>]*xmlns:xs=\"http://www.w3.org/2001/XMLSchema\"", text)


def test_cbctqa_schema_has_one_source_the_plugin_jar_layout() -> None:
    """The plugin's ``src/main/resources/schemas/cbctqa/cbctqa.xsd`` is the only copy.

    That is the folder XNAT's ``xdat-data-builder`` reads and the JAR path XNAT loads; the
    Python package's ``xnat_plugin/schema/cbctqa.xsd`` (served by the local server, read by the
    gateway's tests) is a link to it, so the two can never drift apart.
    """
    source = (
        REPO / "xnat_plugin" / "plugin" / "src" / "main" / "resources" / "schemas" / "cbctqa"
    ) / "cbctqa.xsd"
    assert source.is_file() and not source.is_symlink()
    python_copy = schema_path("cbctqa")
    assert python_copy.read_bytes() == source.read_bytes(), (
        f"{python_copy} differs from {source}: edit the plugin's file (the one source) and keep "
        "xnat_plugin/schema/cbctqa.xsd a link to it"
    )
    assert python_copy.resolve() == source.resolve()


@pytest.mark.parametrize("name", ["xdat", "cbctqa/cbctqa", "", "CBCTQA"])
def test_unknown_schema_name_raises(name: str) -> None:
    with pytest.raises(UnknownSchemaError, match="Unknown XNAT schema") as info:
        schema_path(name)
    assert isinstance(info.value, CbctQaError) and isinstance(info.value, LookupError)
    with pytest.raises(UnknownSchemaError):
        schema_text(name)


# --------------------------------------------------------------------------- cbctqa.xsd vs the contract


def _cbctqa_tree() -> etree._Element:
    return etree.parse(str(schema_path("cbctqa"))).getroot()


def test_cbctqa_namespace_import_and_roots() -> None:
    root = _cbctqa_tree()
    assert root.get("targetNamespace") == CBCTQA_NAMESPACE
    assert root.nsmap["cbctqa"] == CBCTQA_NAMESPACE and root.nsmap["xs"] == XS
    (imp,) = root.findall(XS_NS + "import")
    assert imp.get("namespace") == XNAT_NAMESPACE
    assert imp.get("schemaLocation") == "../xnat/xnat.xsd"
    roots = {e.get("name"): e.get("type") for e in root.findall(XS_NS + "element")}
    assert roots == {"QAAssessment": "cbctqa:qaAssessmentData", "Rating": "cbctqa:ratingData"}
    for name in ("qaAssessmentData", "ratingData"):
        (ext,) = root.findall(
            f"{XS_NS}complexType[@name='{name}']/{XS_NS}complexContent/{XS_NS}extension"
        )
        assert ext.get("base") == "xnat:imageAssessorData"


@pytest.mark.parametrize(
    ("type_name", "expected"),
    [("qaAssessmentData", QA_FIELDS), ("ratingData", RATING_FIELDS)],
)
def test_cbctqa_fields_match_contract(
    our_schema: xmlschema.XMLSchema, type_name: str, expected: dict[str, str]
) -> None:
    xsd_type = our_schema.maps.types[f"{{{CBCTQA_NAMESPACE}}}{type_name}"]
    own = [e for e in xsd_type.content.iter_elements() if e.target_namespace == CBCTQA_NAMESPACE]
    assert [e.local_name for e in own] == list(expected)
    assert {e.local_name: _builtin_name(e.type) for e in own} == expected
    # every field is optional except the rater of a rating
    required = {e.local_name for e in own if e.min_occurs > 0}
    assert required == ({"rater"} if type_name == "ratingData" else set())
    assert all(e.max_occurs == 1 for e in own)


def test_likert_type_and_inline_restrictions_agree(our_schema: xmlschema.XMLSchema) -> None:
    likert = our_schema.maps.types[f"{{{CBCTQA_NAMESPACE}}}likertScore"]
    assert _builtin_name(likert) == "integer"
    assert (likert.min_value, likert.max_value) == (1, 5)
    rating = our_schema.maps.types[f"{{{CBCTQA_NAMESPACE}}}ratingData"]
    for element in rating.content.iter_elements():
        if element.local_name in CATEGORIES:
            assert (element.type.min_value, element.type.max_value) == (1, 5)
            assert _builtin_name(element.type) == "integer"


def test_status_enumeration(our_schema: xmlschema.XMLSchema) -> None:
    qa = our_schema.maps.types[f"{{{CBCTQA_NAMESPACE}}}qaAssessmentData"]
    (status,) = [e for e in qa.content.iter_elements() if e.local_name == "status"]
    assert status.type.enumeration == STATUSES


# --------------------------------------------------------------------------- instance documents


def test_cbctqa_builds_with_real_xnat_schema(real_schema: xmlschema.XMLSchema) -> None:
    qa = real_schema.maps.types[f"{{{CBCTQA_NAMESPACE}}}qaAssessmentData"]
    assert qa.base_type.name == f"{{{XNAT_NAMESPACE}}}imageAssessorData"
    assert qa.is_derived(real_schema.maps.types[f"{{{XNAT_NAMESPACE}}}experimentData"])
    assert set(real_schema.elements) == {"QAAssessment", "Rating"}


@pytest.mark.parametrize("which", WHICH)
def test_valid_documents_pass(request: pytest.FixtureRequest, which: str) -> None:
    schema = request.getfixturevalue(f"{which}_schema")
    schema.validate(_assessment_doc(**_full_assessment_fields()))
    schema.validate(_assessment_doc(status="failed", failure_reason="DICOM: no pixel data"))
    schema.validate(_assessment_doc(status="queued"))
    schema.validate(_rating_doc(dict.fromkeys(CATEGORIES, "1")))
    schema.validate(_rating_doc({"parotid": "5", "overall": "3"}))
    decoded = schema.to_dict(_rating_doc({"larynx": "4"}))
    assert decoded["cbctqa:larynx"] == 4 and decoded["cbctqa:rater"] == "alice"


INVALID_DOCUMENTS = {
    "likert_6_above_range": lambda: _rating_doc({"parotid": "6"}),
    "likert_0_below_range": lambda: _rating_doc({"overall": "0"}),
    "likert_not_integer": lambda: _rating_doc({"mandible": "3.5"}),
    "rating_without_rater": lambda: _rating_doc({"larynx": "4"}, rater=None),
    "no_imageSession_ID": lambda: _rating_doc({"larynx": "4"}, session=False),
    "status_not_in_enumeration": lambda: _assessment_doc(status="done"),
    "status_case_sensitive": lambda: _assessment_doc(status="Complete"),
    "slices_not_integer": lambda: _assessment_doc(slices="88.5"),
    "outlier_flag_not_boolean": lambda: _assessment_doc(parotid_outlier="maybe"),
    "fields_out_of_order": lambda: _assessment_doc(duration_s="12.5", status="complete"),
    "failure_reason_too_long": lambda: _assessment_doc(failure_reason="x" * 2001),
}


@pytest.mark.parametrize("which", WHICH)
@pytest.mark.parametrize("case", sorted(INVALID_DOCUMENTS))
def test_invalid_documents_fail(request: pytest.FixtureRequest, which: str, case: str) -> None:
    schema = request.getfixturevalue(f"{which}_schema")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schema.validate(INVALID_DOCUMENTS[case]())


# --------------------------------------------------------------------------- our xnat.xsd vs XNAT's


def _occurs(component: Any) -> tuple[int, int | None]:
    return (component.min_occurs, component.max_occurs)


def _shape(xsd_type: Any, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """Flatten a complex type into {path: (kind, type, occurs)} over its whole content.

    Named complex types of XNAT's namespace are recorded by name and not entered; anonymous
    ones are entered. Simple types are reduced to the XSD built-in they restrict.
    """
    shape: dict[str, tuple[Any, ...]] = {}
    for name, attribute in xsd_type.attributes.items():
        if name is None:
            continue
        local = name.split("}")[-1]
        shape[f"{prefix}@{local}"] = ("attribute", _builtin_name(attribute.type), attribute.use)
    if xsd_type.has_simple_content():
        shape[f"{prefix}#text"] = ("text", _builtin_name(xsd_type.content), None)
        return shape
    if not xsd_type.is_complex() or xsd_type.content is None:
        return shape
    for element in xsd_type.content.iter_elements():
        path = f"{prefix}/{element.local_name}"
        child = element.type
        if child.is_simple():
            shape[path] = ("element", _builtin_name(child), _occurs(element))
        elif child.is_global():
            shape[path] = ("element", child.prefixed_name, _occurs(element))
        else:
            shape[path] = ("element", "(anonymous)", _occurs(element))
            shape |= _shape(child, path)
    return shape


def _element_order(xsd_type: Any) -> list[str]:
    if not xsd_type.is_complex() or xsd_type.has_simple_content() or xsd_type.content is None:
        return []
    return [e.local_name for e in xsd_type.content.iter_elements()]


def test_our_xnat_schema_agrees_with_xnats(
    our_schema: xmlschema.XMLSchema, real_schema: xmlschema.XMLSchema
) -> None:
    ours = {k: v for k, v in our_schema.maps.types.items() if k.startswith(f"{{{XNAT_NAMESPACE}}}")}
    real = real_schema.maps.types
    required = {
        "projectData", "subjectData", "experimentData", "subjectAssessorData",
        "imageSessionData", "ctSessionData", "imageScanData", "ctScanData",
        "imageAssessorData", "abstractResource", "resourceCatalog",
    }  # fmt: skip
    assert required <= {k.split("}")[1] for k in ours}
    for qname, our_type in ours.items():
        assert qname in real, f"{qname} is not an XNAT type"
        real_type = real[qname]
        our_base = our_type.base_type.name if our_type.base_type is not None else None
        real_base = real_type.base_type.name if real_type.base_type is not None else None
        assert our_base == real_base, f"{qname}: base {our_base} != XNAT's {real_base}"
        our_shape, real_shape = _shape(our_type), _shape(real_type)
        for path, spec in our_shape.items():
            assert path in real_shape, f"{qname}{path} does not exist in XNAT's schema"
            assert spec == real_shape[path], f"{qname}{path}: {spec} != XNAT's {real_shape[path]}"
        # every field XNAT requires is declared here too, so our documents validate there
        for path, spec in real_shape.items():
            if spec[0] == "element":
                required, parent = spec[2][0] > 0, path.rsplit("/", 1)[0]
            else:
                required, parent = spec[2] == "required", path.rsplit("@", 1)[0]
            if required and (parent == "" or parent in our_shape):
                assert path in our_shape, f"{qname}{path} is required by XNAT but missing here"
        # elements keep XNAT's order (ours is a subsequence of XNAT's)
        real_order = iter(_element_order(real_type))
        assert all(name in real_order for name in _element_order(our_type)), qname
    our_roots = {k: v.type.name for k, v in our_schema.maps.elements.items() if XNAT_NAMESPACE in k}
    real_roots = {
        k: v.type.name for k, v in real_schema.maps.elements.items() if XNAT_NAMESPACE in k
    }
    assert our_roots and all(real_roots.get(k) == v for k, v in our_roots.items())


def test_our_xnat_schema_is_our_own_writing() -> None:
    ours = schema_text("xnat")
    theirs = (SHARED / "xnat.xsd").read_text(encoding="utf-8")
    assert len(ours) < len(theirs) / 4
    assert "Washington University" not in ours and "xnat-data-models" not in ours
    real_docs = set(re.findall(r"<xs:documentation>([^<]{25,})</xs:documentation>", theirs))
    our_docs = set(re.findall(r"<xs:documentation>([^<]{25,})</xs:documentation>", ours))
    assert our_docs and not (our_docs & real_docs)


def test_our_xnat_schema_builds_alone() -> None:
    schema = xmlschema.XMLSchema(str(schema_path("xnat")))
    assert schema.target_namespace == XNAT_NAMESPACE
    assert {"Project", "Subject", "CTSession", "CTScan", "ResourceCatalog"} <= set(schema.elements)
    assert not schema.imports  # no other schema file needed


# --------------------------------------------------------------------------- XNAT's security.xsd

#: XNAT's user API names (``/xapi/users/{login}``) for the ``xdat:user`` properties of
#: security.xsd that the local server keeps.
USER_JSON_NAMES = {"login": "username", "firstname": "firstName", "lastname": "lastName",
                   "email": "email", "enabled": "enabled", "verified": "verified"}  # fmt: skip


def test_xnat_security_schema_declares_the_user_properties_we_serve(xnat_server: Any) -> None:
    security = xmlschema.XMLSchema(SHARED / "security.xsd")
    user = security.types["user"]
    elements = {e.local_name for e in user.content.iter_elements()}
    attributes = {name: a.type.local_name for name, a in user.attributes.items()}
    assert {"login", "firstname", "lastname", "email"} <= elements
    assert attributes["enabled"] == attributes["verified"] == "boolean"
    assert set(USER_JSON_NAMES) <= elements | set(attributes)
    # the local server answers each of them under XNAT's JSON name, booleans as booleans
    import requests

    answer = requests.get(f"{xnat_server.url}/xapi/users/{xnat_server.user}",
                          auth=(xnat_server.user, xnat_server.password), timeout=10).json()
    assert set(answer) >= set(USER_JSON_NAMES.values())
    assert answer["username"] == xnat_server.user
    assert isinstance(answer["enabled"], bool) and isinstance(answer["verified"], bool)


# --------------------------------------------------------------------------- xnatpy's converter


def _xnatpy_module(files: list[Path], tag: str) -> tuple[ModuleType, str]:
    """Run xnatpy's SchemaParser and code generator on ``files``, as ``xnat.connect`` does."""
    logger = logging.getLogger(f"test_schema.xnatpy.{tag}")
    logger.verbose = logger.debug  # type: ignore[attr-defined]  # xnatpy's logger has a VERBOSE level
    parser = SchemaParser(logger=logger)
    for path in files:
        # connect() feeds the text served at /xapi/schemas/{name} into this method
        assert parser.parse_schema_xmlstring(path.read_text(encoding="utf-8"), schema_uri=str(path))
    code = io.StringIO()
    parser.write(code_file=code)
    source = code.getvalue()
    loader = StringLoader(source)
    spec = importlib.util.spec_from_loader(f"xnat.generated.test_schema_{tag}", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    for prototype in parser.class_list.values():
        cls = getattr(module, prototype.writer.python_name, None)
        if cls is not None and not (prototype.base_class or "").startswith("xs:"):
            cls.__register__(module.XNAT_CLASS_LOOKUP)
    return module, source


@pytest.fixture(scope="module")
def xnatpy_ours() -> tuple[ModuleType, str]:
    return _xnatpy_module([schema_path(n) for n in SCHEMA_NAMES], "ours")


@pytest.mark.parametrize(
    ("class_name", "xsi_type", "expected"),
    [
        ("CbctqaQaAssessmentData", "cbctqa:qaAssessmentData", QA_FIELDS),
        ("CbctqaRatingData", "cbctqa:ratingData", RATING_FIELDS),
    ],
)
def test_xnatpy_builds_cbctqa_classes(
    xnatpy_ours: tuple[ModuleType, str], class_name: str, xsi_type: str, expected: dict[str, str]
) -> None:
    module, source = xnatpy_ours
    cls = getattr(module, class_name)
    assert module.XNAT_CLASS_LOOKUP[xsi_type] is cls
    assert cls.__xsi_type__ == xsi_type
    assert cls.__bases__ == (module.ImageAssessorData,)
    assert issubclass(cls, module.ExperimentData)
    for name, builtin in expected.items():
        descriptor = cls.__dict__[name]
        assert descriptor.fset is not None, f"{class_name}.{name} is not settable in xnatpy"
        field = getattr(cls, name)  # class access gives xnatpy's search field
        assert field.identifier == f"{xsi_type}/{name}"
        assert field.type == f"xs:{builtin}"
    # the generated setters check the schema's restrictions before sending anything
    body = source[source.index(f"class {class_name}(") :]
    body = body[: body.find("\nclass ", 10)]
    if class_name == "CbctqaRatingData":
        for category in CATEGORIES:
            assert re.search(rf"{category} has to be greater than or equal to 1", body)
            assert re.search(rf"{category} has to be smaller than or equal to 5", body)
    else:
        assert 'status has to be one of: "queued", "running", "complete", "failed"' in body


def test_xnatpy_builds_core_classes(xnatpy_ours: tuple[ModuleType, str]) -> None:
    module, _ = xnatpy_ours
    for xsi_type, name in {
        "xnat:projectData": "ProjectData",
        "xnat:subjectData": "SubjectData",
        "xnat:ctSessionData": "CtSessionData",
        "xnat:ctScanData": "CtScanData",
        "xnat:imageAssessorData": "ImageAssessorData",
        "xnat:resourceCatalog": "ResourceCatalog",
    }.items():
        assert module.XNAT_CLASS_LOOKUP[xsi_type] is getattr(module, name)
    assert issubclass(module.CtSessionData, module.ImageSessionData)
    assert module.ExperimentData._DISPLAY_IDENTIFIER == "label"
    assert module.ImageScanData._DISPLAY_IDENTIFIER == "ID"
    assert module.CtScanData.series_description.type == "xs:string"


def test_xnatpy_core_classes_match_xnats_schema(xnatpy_ours: tuple[ModuleType, str]) -> None:
    real, _ = _xnatpy_module(
        [SHARED / "standins" / "xdat.xsd", SHARED / "xnat.xsd", schema_path("cbctqa")], "real"
    )
    ours, _ = xnatpy_ours
    for xsi_type, cls in ours.XNAT_CLASS_LOOKUP.items():
        if not xsi_type.startswith("xnat:") or xsi_type == "xnat:fileData":
            continue
        real_cls = real.XNAT_CLASS_LOOKUP[xsi_type]
        assert [b.__name__ for b in cls.__bases__] == [b.__name__ for b in real_cls.__bases__]
        own = {k for k, v in vars(cls).items() if hasattr(v, "fcget")}
        assert own <= {k for k, v in vars(real_cls).items() if hasattr(v, "fcget")}, xsi_type
    for class_name in ("CbctqaQaAssessmentData", "CbctqaRatingData"):
        assert sorted(vars(getattr(ours, class_name))) == sorted(vars(getattr(real, class_name)))
