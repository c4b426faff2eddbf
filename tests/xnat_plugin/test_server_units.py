"""Unit tests of the local XNAT server's pure parts: schemas, search, files, faults, auth, DICOM."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest

from qa_core.errors import ConfigurationError
from xnat_plugin.server.auth import Access, Principal, parse_basic
from xnat_plugin.server.dicom_import import DicomImportError, read_dicom_zip
from xnat_plugin.server.faults import FaultConfig, FaultDecision, FaultInjector
from xnat_plugin.server.resources import (
    UnsafePathError,
    ZipLimits,
    clean_relative_path,
    safe_zip_members,
    store_content,
)
from xnat_plugin.server.schemas import FieldSpec, SchemaCatalog, SchemaError
from xnat_plugin.server.search import (
    Criteria,
    SearchError,
    compare,
    evaluate,
    parse_bundle,
    parse_date_bound,
    render_csv,
)


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog()


def test_catalog_hierarchy_fields_and_restrictions(catalog: SchemaCatalog) -> None:
    assert catalog.names()[0] == "xnat" and "cbctqa" in catalog.names()
    assert catalog.canonical("CBCTQA:QAASSESSMENTDATA") == "cbctqa:qaAssessmentData"
    assert catalog.is_a("cbctqa:ratingData", "xnat:imageAssessorData")
    assert catalog.is_a("cbctqa:ratingData", "xnat:experimentData")
    assert not catalog.is_a("cbctqa:ratingData", "xnat:imageSessionData")
    parotid = catalog.field("cbctqa:ratingData", "PAROTID")
    assert parotid is not None and (parotid.min_inclusive, parotid.max_inclusive) == (1.0, 5.0)
    status = catalog.field("cbctqa:qaAssessmentData", "status")
    assert status is not None and status.enumeration == ("queued", "running", "complete", "failed")
    assert catalog.field("cbctqa:qaAssessmentData", "label") is not None  # inherited
    assert catalog.field("cbctqa:qaAssessmentData", "no_such") is None
    with pytest.raises(KeyError):
        catalog.text("nosuch")


def test_malformed_schema_is_reported(tmp_path: Path) -> None:
    (tmp_path / "broken.xsd").write_text("<xs:schema")
    with pytest.raises(SchemaError, match="broken"):
        SchemaCatalog([tmp_path])


@pytest.mark.parametrize(("spec", "value", "expected"), [
    (FieldSpec("n", "xs:integer"), " 7 ", "7"),
    (FieldSpec("f", "xs:float"), "2.50", "2.5"),
    (FieldSpec("f", "xs:float"), "3", "3"),
    (FieldSpec("b", "xs:boolean"), "1", "true"),
    (FieldSpec("b", "xs:boolean"), "FALSE", "false"),
    (FieldSpec("e", "xs:string", enumeration=("a", "b")), "b", "b"),
])
def test_field_normalise(spec: FieldSpec, value: str, expected: str) -> None:
    assert spec.normalise(value, "t:x") == expected


@pytest.mark.parametrize(("spec", "value", "message"), [
    (FieldSpec("n", "xs:integer"), "2.5", "expected an integer"),
    (FieldSpec("f", "xs:float"), "high", "expected a number"),
    (FieldSpec("b", "xs:boolean"), "maybe", "true or false"),
    (FieldSpec("e", "xs:string", enumeration=("a", "b")), "c", "not one of a, b"),
    (FieldSpec("l", "xs:integer", min_inclusive=1, max_inclusive=5), "0", "below the minimum 1"),
    (FieldSpec("l", "xs:integer", min_inclusive=1, max_inclusive=5), "6", "above the maximum 5"),
    (FieldSpec("s", "xs:string", max_length=3), "abcd", "longer than 3"),
])
def test_field_normalise_errors_name_the_field(spec: FieldSpec, value: str, message: str) -> None:
    with pytest.raises(SchemaError, match=message) as info:
        spec.normalise(value, "t:x")
    assert f"t:x/{spec.path}" in str(info.value)


def test_compare_operators() -> None:
    assert compare("3.5", ">", "3") and not compare("10", "<", "9")
    assert compare("2026-03-15", ">=", "03/01/2026")
    assert compare("2026-03-15 10:00:00.1", "=", "03/15/2026")
    assert compare("Hello_World", "LIKE", "hello%") and not compare("HelloXWorld", "LIKE", "hello\\_%")
    assert compare("", "IS NULL", "") and compare("x", "IS NOT NULL", "")
    assert not compare(None, "=", "x")
    with pytest.raises(SearchError, match="unsupported comparison_type"):
        compare("a", "~", "b")


def test_evaluate_and_or_tree() -> None:
    tree = Criteria(method="AND", children=[
        Criteria(schema_field="t/a", comparison="=", value="1"),
        Criteria(method="OR", children=[Criteria(schema_field="t/b", comparison="=", value="x"),
                                         Criteria(schema_field="t/b", comparison="=", value="y")]),
    ])
    row = {"t/a": "1", "t/b": "y"}
    assert evaluate(tree, row.get)
    assert not evaluate(tree, {"t/a": "1", "t/b": "z"}.get)


def test_parse_bundle_and_errors() -> None:
    bundle = parse_bundle(b"""<xdat:bundle xmlns:xdat="http://nrg.wustl.edu/security">
      <xdat:root_element_name>xnat:ctSessionData</xdat:root_element_name>
      <xdat:search_field><xdat:element_name>xnat:ctSessionData</xdat:element_name>
      <xdat:field_ID>LABEL</xdat:field_ID><xdat:sequence>1</xdat:sequence></xdat:search_field>
      <xdat:search_field><xdat:element_name>xnat:ctSessionData</xdat:element_name>
      <xdat:field_ID>ID</xdat:field_ID><xdat:sequence>0</xdat:sequence></xdat:search_field>
      <xdat:search_where method="OR"/></xdat:bundle>""")
    assert bundle.root == "xnat:ctSessionData"
    assert bundle.fields == [("xnat:ctSessionData", "ID"), ("xnat:ctSessionData", "LABEL")]
    assert bundle.where.method == "OR"
    with pytest.raises(SearchError, match="not an xdat:bundle"):
        parse_bundle(b"{json}")
    with pytest.raises(SearchError, match="root_element_name"):
        parse_bundle(b"<bundle/>")


def test_parse_date_bound_and_csv() -> None:
    assert parse_date_bound("3/5/2026") == "2026-03-05"
    assert parse_date_bound("20260305") == "2026-03-05"
    assert parse_date_bound("soon") is None
    assert render_csv([{"a": "1", "b": "x,y"}]) == b'a,b\n1,"x,y"\n'


def test_clean_relative_path() -> None:
    assert clean_relative_path("a/./b//c.txt", "f") == "a/b/c.txt"
    for bad in ("/etc/passwd", "../x", "a/../../x", "C:\\x", ""):
        with pytest.raises(UnsafePathError):
            clean_relative_path(bad, "f")


def test_zip_limits(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.bin", b"\0" * 3_000_000)
        archive.writestr("b.bin", b"b")
    with zipfile.ZipFile(buf) as archive:
        with pytest.raises(UnsafePathError, match="zip bomb"):
            safe_zip_members(archive, ZipLimits(), "z")
        with pytest.raises(UnsafePathError, match="exceed the limit of 1"):
            safe_zip_members(archive, ZipLimits(max_members=1, max_ratio=1e9), "z")
        with pytest.raises(UnsafePathError, match="uncompressed bytes"):
            safe_zip_members(archive, ZipLimits(max_total_bytes=10, max_ratio=1e9), "z")


def test_store_content_digest(tmp_path: Path) -> None:
    info = store_content(tmp_path / "r", b"hello")
    assert info.digest == "5d41402abc4b2a76b9719d911017c592" and info.size == 5
    assert (tmp_path / "r" / info.stored_name).read_bytes() == b"hello"
    assert not list((tmp_path / "r").glob(".*.part"))


def test_fault_config_validation_and_determinism() -> None:
    with pytest.raises(ConfigurationError, match="between 0 and 1"):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ConfigurationError, match=">= 0"):
        FaultConfig(latency_ms=-1)
    with pytest.raises(ConfigurationError, match="regular expression"):
        FaultConfig(path_regex="(")
    cfg = FaultConfig(error_rate=0.4, drop_rate=0.2, seed=11)
    a = FaultInjector(cfg)
    b = FaultInjector(cfg)
    seq_a = [a.decide("/data/x") for _ in range(50)]
    assert seq_a == [b.decide("/data/x") for _ in range(50)]
    assert {FaultDecision.ERROR, FaultDecision.DROP, FaultDecision.PASS} == set(seq_a)
    limited = FaultInjector(FaultConfig(error_rate=1.0, path_regex="^/xapi"))
    assert limited.decide("/data/x") is FaultDecision.PASS
    assert limited.decide("/xapi/users") is FaultDecision.ERROR


def test_basic_header_and_roles() -> None:
    header = "Basic " + base64.b64encode(b"alice:pa:ss").decode()
    assert parse_basic(header) == ("alice", "pa:ss")
    assert parse_basic("Bearer abc") is None
    assert parse_basic("Basic !!!") is None
    p = Principal("alice", False, {"P1": "Owners", "P2": "Members", "P3": "Collaborators"})
    assert Access.of(p, "P1") == Access(True, True, True, True)
    assert Access.of(p, "P2") == Access(True, True, False, False)
    assert Access.of(p, "P3") == Access(True, False, False, False)
    assert Access.of(p, "P4") == Access(False, False, False, False)
    assert Access.of(Principal("root", True, {}), "P4").delete


def test_dicom_import_errors() -> None:
    with pytest.raises(DicomImportError, match="not a zip"):
        read_dicom_zip(io.BytesIO(b"plain"), ZipLimits())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(DicomImportError, match="none is DICOM"):
        read_dicom_zip(buf, ZipLimits())
