"""Tests for the XNAT plugin sources (``xnat_plugin/plugin``), which cannot be built here.

XNAT's artifact repository is unreachable, so the JAR is never built in CI. What these tests
check instead is that the pieces agree with each other and with the schema, exactly as XNAT
needs them to: the plugin id and datatypes in the Java annotation, ``gradle.properties``, the
display documents' elements and fields, the template file names and the fields they show or
post, the Actions-box entry that opens the rating form, the Java classes' places and their
rating-label rule (the gateway's), the Gradle build that reads the one schema where
xnat-data-builder looks for it, and the automation script's Prefect event, timeouts and error
handling. The JAR's layout is checked in ``test_plugin_jar_layout.py``.

The Velocity templates are parsed and rendered with ``airspeed`` (a Python implementation of
Velocity) in a small stand-in for XNAT's template context that records which schema paths a
template reads.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import airspeed
import pytest
from lxml import etree

from qa_core.categories import CATEGORIES
from xnat_plugin.gateway import rating_label
from xnat_plugin.gateway.records import safe_label_part
from xnat_plugin.schema import CBCTQA_NAMESPACE, schema_path

XS = "{http://www.w3.org/2001/XMLSchema}"
PLUGIN = Path(__file__).resolve().parents[2] / "xnat_plugin" / "plugin"
RESOURCES = PLUGIN / "src" / "main" / "resources"
SCREENS = RESOURCES / "META-INF" / "resources" / "templates" / "screens"
JAVA = PLUGIN / "src" / "main" / "java" / "org" / "cbctqa" / "xnat" / "plugin" / "CbctQaPlugin.java"
GROOVY = RESOURCES / "scripts" / "cbctqa_notify_prefect.groovy"
ACTIONS_BOX = SCREENS / "xnat_imageSessionData" / "actionsBox"
JAVA_ROOT = PLUGIN / "src" / "main" / "java"
RATING_LABELS = JAVA.parent / "RatingLabels.java"
EDIT_SCREEN_CLASS = (
    JAVA_ROOT / "org/nrg/xnat/turbine/modules/screens/XDATScreen_edit_cbctqa_ratingData.java"
)
PRE_SAVE = JAVA_ROOT / "org/nrg/xnat/actions/imageAssessorEdit/preSave/CbctqaRatingPreSave.java"

#: Fields every assessor has from its XNAT base types, usable in forms and display documents.
INHERITED = {"ID", "label", "project", "date", "imageSession_ID", "meta/insert_date"}


# --------------------------------------------------------------------------- readers


def _schema() -> etree._Element:
    return etree.parse(str(schema_path("cbctqa"))).getroot()


def _schema_prefix() -> str:
    (prefix,) = [p for p, ns in _schema().nsmap.items() if ns == CBCTQA_NAMESPACE]
    assert prefix is not None
    return prefix


def _schema_types() -> dict[str, list[str]]:
    """``{"cbctqa:<type>": [own field names in order]}`` from cbctqa.xsd."""
    prefix = _schema_prefix()
    types = {}
    for complex_type in _schema().findall(XS + "complexType"):
        sequence = complex_type.find(f"{XS}complexContent/{XS}extension/{XS}sequence")
        assert sequence is not None
        types[f"{prefix}:{complex_type.get('name')}"] = [
            e.get("name") for e in sequence.findall(XS + "element")
        ]
    return types


def _gradle_properties() -> dict[str, str]:
    properties = {}
    for line in (PLUGIN / "gradle.properties").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            properties[key.strip()] = value.strip()
    return properties


@dataclass(frozen=True)
class PluginAnnotation:
    """The values of ``@XnatPlugin`` and its ``@XnatDataModel`` entries in the Java source."""

    plugin_id: str
    name: str
    version: str
    data_models: list[dict[str, str]]


def _java_annotation() -> PluginAnnotation:
    source = JAVA.read_text(encoding="utf-8")
    constants = dict(re.findall(r'static final String (\w+)\s*=\s*"([^"]*)";', source))

    def value(expression: str) -> str:
        expression = expression.strip()
        literal = re.fullmatch(r'"([^"]*)"', expression)
        if literal:
            return literal.group(1)
        constant = re.fullmatch(r"(?:CbctQaPlugin\.)?(\w+)", expression)
        assert constant and constant.group(1) in constants, f"cannot resolve {expression!r}"
        return constants[constant.group(1)]

    annotation = source[source.index("@XnatPlugin(") : source.index("public class")]
    models = []
    for body in re.findall(r"@XnatDataModel\((.*?)\)", annotation, re.S):
        models.append({k: value(v) for k, v in re.findall(r"(\w+)\s*=\s*([^,]+?)\s*(?:,|$)", body)})
    head = annotation.split("dataModels")[0]
    plugin_id = re.search(r"value\s*=\s*([^,]+),", head)
    name = re.search(r'name\s*=\s*("[^"]*")', head)
    version = re.search(r"version\s*=\s*([^,]+),", head)
    assert plugin_id and name and version
    return PluginAnnotation(
        value(plugin_id.group(1)), value(name.group(1)), value(version.group(1)), models
    )


# --------------------------------------------------------------------------- names agree


def test_plugin_id_and_datatypes_agree_everywhere() -> None:
    annotation = _java_annotation()
    properties = _gradle_properties()
    schema_types = _schema_types()
    assert annotation.plugin_id == properties["xnatPluginId"] == "cbctqaPlugin"
    assert annotation.name
    assert annotation.version == properties["version"]
    models = [m["value"] for m in annotation.data_models]
    assert models == properties["xnatDataModels"].split(",")
    assert set(models) == set(schema_types) == {"cbctqa:qaAssessmentData", "cbctqa:ratingData"}
    assert properties["xnatSchemaPrefix"] == _schema_prefix() == "cbctqa"
    for model in annotation.data_models:
        assert model["singular"] and model["plural"] and model["singular"] != model["plural"]
        assert re.fullmatch(r"[A-Z0-9]{2,10}", model["code"]), model
    assert len({m["code"] for m in annotation.data_models}) == len(models)
    # every schema type extends the XNAT assessor base, as the plugin class documents
    for complex_type in _schema().findall(XS + "complexType"):
        extension = complex_type.find(f"{XS}complexContent/{XS}extension")
        assert extension is not None and extension.get("base") == "xnat:imageAssessorData"


def test_resource_layout_matches_datatypes() -> None:
    prefix = _schema_prefix()
    types = [t.split(":")[1] for t in _schema_types()]
    displays = sorted(p.name for p in (RESOURCES / "schemas" / prefix / "display").iterdir())
    assert displays == sorted(f"{prefix}_{t}_display.xml" for t in types)
    screens = sorted(p.name for p in SCREENS.iterdir() if p.is_file())
    expected = [f"XDATScreen_report_{prefix}_{t}.vm" for t in types]
    expected.append(f"XDATScreen_edit_{prefix}_ratingData.vm")
    assert screens == sorted(expected)
    # the only sub-folder: the session page's Actions box add-on
    assert sorted(p.name for p in SCREENS.iterdir() if p.is_dir()) == ["xnat_imageSessionData"]
    assert sorted(p.name for p in ACTIONS_BOX.iterdir()) == ["CbctQaRating.vm"]
    # the schema's one source is where xnat-data-builder reads it; the Python copy links to it
    source = RESOURCES / "schemas" / prefix / f"{prefix}.xsd"
    assert source.is_file() and not source.is_symlink()
    assert schema_path(prefix).resolve() == source.resolve()


def test_gradle_build_packs_the_one_schema() -> None:
    build = (PLUGIN / "build.gradle").read_text(encoding="utf-8")
    code = re.sub(r"(?m)(?<![:\"])//.*$", "", re.sub(r"/\*.*?\*/", "", build, flags=re.S))
    settings = (PLUGIN / "settings.gradle").read_text(encoding="utf-8")
    properties = _gradle_properties()
    # xnat-data-builder reads src/main/resources/schemas/<name>/ only: no staging elsewhere
    assert "staged" not in code and "../schema" not in code
    assert 'compileJava.dependsOn "xnatDataBuilder"' in code
    assert 'id "org.nrg.xnat.build.xnat-data-builder" version "${vXnatDataBuilder}"' in code
    assert 'mavenBom "org.nrg:parent:${vXnat}"' in code
    assert re.search(r'^\s*compileOnly "log4j:log4j"', code, re.M)
    nrg = "https://nrgxnat.jfrog.io/nrgxnat/libs-release"
    assert nrg in code and nrg in settings
    assert re.fullmatch(r"1\.8\.\d+", properties["vXnat"])
    assert "JavaVersion.VERSION_1_8" in code


# --------------------------------------------------------------------------- display documents


@pytest.mark.parametrize("xsi_type", ["cbctqa:qaAssessmentData", "cbctqa:ratingData"])
def test_display_document_lists_every_field(xsi_type: str) -> None:
    prefix, name = xsi_type.split(":")
    path = RESOURCES / "schemas" / prefix / "display" / f"{prefix}_{name}_display.xml"
    root = etree.parse(str(path)).getroot()
    assert root.tag == "Displays" and root.get("schema-element") == xsi_type
    fields = root.findall("DisplayField")
    ids = [f.get("id") for f in fields]
    assert len(ids) == len(set(ids)), "duplicate DisplayField ids"
    searchable: dict[str, str] = {}
    own_fields = set(_schema_types()[xsi_type])
    for display_field in fields:
        for element in display_field.findall("DisplayFieldElement"):
            target = element.get("schema-element")
            assert target is not None
            if target.startswith(xsi_type + "/"):
                assert target.split("/", 1)[1] in own_fields | INHERITED, target
                if display_field.get("searchable") == "true":
                    searchable[target.split("/", 1)[1]] = display_field.get("id") or ""
    missing = [f for f in _schema_types()[xsi_type] if f not in searchable]
    assert not missing, f"schema fields without a searchable display field: {missing}"
    for reference in root.iter("DisplayFieldRef"):
        assert reference.get("id") in ids
    for field_id in ("EXPT_ID", "SESSION_ID", "PROJECT", "DATE", "LABEL"):
        assert field_id in ids
    versions = {v.get("versionName") for v in root.findall("DisplayVersion")}
    assert {"listing", "full"} <= versions
    arcs = {a.get("name") for a in root.findall("Arc")}
    assert "ASSESSOR" in arcs
    # XNAT quotes values in SQL filters by the display field's data-type: it knows its own type
    # names (string, integer, ...), not Java class names; the "Inserted" column is a string
    types = {f.get("id"): f.get("data-type") for f in fields if f.get("data-type")}
    assert types.get("INSERT_DATE") == "string"
    assert set(types.values()) <= {"string", "integer", "float", "boolean"}, types


# --------------------------------------------------------------------------- templates


@dataclass
class RecordingItem:
    """XNAT's ``$item`` as a template sees it: ``getProperty(path)`` over stored values."""

    values: dict[str, Any]
    read: set[str] = field(default_factory=set)

    def getProperty(self, path: str) -> Any:
        self.read.add(path)
        return self.values.get(path)


class _Escape:
    def html(self, value: Any) -> str:
        return "" if value is None else html.escape(str(value))


@dataclass
class _User:
    login: str

    def getUsername(self) -> str:
        return self.login


@dataclass
class _Scan:
    scan_id: str
    scan_type: str
    description: str

    def getId(self) -> str:
        return self.scan_id

    def getType(self) -> str:
        return self.scan_type

    def getSeriesDescription(self) -> str:
        return self.description


@dataclass
class _Share:
    project: str
    label: str | None = None

    def getProject(self) -> str:
        return self.project


@dataclass
class _ItemStatus:
    status: str

    def getStatus(self) -> str:
        return self.status


@dataclass
class _Session:
    """An image session as XNAT's templates see it (``XnatImagesessiondata``)."""

    label: str
    project: str
    scans: list[_Scan]
    session_id: str = "XNAT_E00001"
    xsi_type: str = "xnat:ctSessionData"
    status: str = "active"
    shares: list[_Share] = field(default_factory=list)

    def getLabel(self) -> str:
        return self.label

    def getProject(self) -> str:
        return self.project

    def getId(self) -> str:
        return self.session_id

    def getXSIType(self) -> str:
        return self.xsi_type

    def getItem(self) -> _ItemStatus:
        return _ItemStatus(self.status)

    def getSharing_share(self) -> list[_Share]:
        return self.shares

    def getIdentifier(self, project: str) -> str:
        """The session's label in ``project`` (its own label unless shared under another)."""
        for share in self.shares:
            if share.project == project and share.label:
                return share.label
        return self.label

    def getSortedScans(self) -> list[_Scan]:
        return self.scans


@dataclass
class _Bean:
    session: _Session | None

    def getImageSessionData(self) -> _Session | None:
        return self.session


class _Page:
    def setTitle(self, title: str) -> str:
        return ""


class _Link:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def setAction(self, action: str) -> _Link:
        self.parts = [f"/app/action/{action}"]
        return self

    def addPathInfo(self, key: str, value: str) -> _Link:
        self.parts.append(f"/{key}/{value}")
        return self

    def __str__(self) -> str:
        return "".join(self.parts)


class _Content:
    def getURI(self, path: str) -> str:
        return "/xnat" + path


def _render(
    template: str, item: RecordingItem, user: str = "alice", session: _Session | None = None
) -> str:
    context = {
        "item": item,
        "om": _Bean(session),
        "user": _User(user),
        "esc": _Escape(),
        "page": _Page(),
        "link": _Link(),
        "content": _Content(),
    }
    return str(airspeed.Template((SCREENS / template).read_text(encoding="utf-8")).merge(context))


@dataclass
class _UserHelper:
    """XNAT's ``userHelper``: which projects the user may edit ratings in; records the checks."""

    editable: set[str]
    asked: list[tuple[str, str]] = field(default_factory=list)

    def canEdit(self, path: str, project: str) -> bool:
        self.asked.append((path, project))
        return project in self.editable


@dataclass
class _HttpSession:
    helper: _UserHelper

    def getAttribute(self, name: str) -> Any:
        return self.helper if name == "userHelper" else None


@dataclass
class _RunData:
    session: _HttpSession

    def getSession(self) -> _HttpSession:
        return self.session


class _Element:
    def __init__(self, name: str) -> None:
        self.name = name

    def getFullXMLName(self) -> str:
        return self.name


def _render_actions_box(session: _Session, editable: set[str]) -> tuple[str, _UserHelper]:
    """Render the Actions-box add-on as on the session's report page."""
    helper = _UserHelper(editable)
    context = {
        "om": session,
        "element": _Element(session.xsi_type),
        "search_field": f"{session.xsi_type}.ID",
        "search_value": session.session_id,
        "dataPopup": "false",
        "data": _RunData(_HttpSession(helper)),
        "esc": _Escape(),
        "link": _Link(),
        "content": _Content(),
    }
    source = (ACTIONS_BOX / "CbctQaRating.vm").read_text(encoding="utf-8")
    return str(airspeed.Template(source).merge(context)), helper


@pytest.mark.parametrize(
    ("template", "xsi_type"),
    [
        ("XDATScreen_report_cbctqa_qaAssessmentData.vm", "cbctqa:qaAssessmentData"),
        ("XDATScreen_report_cbctqa_ratingData.vm", "cbctqa:ratingData"),
        ("XDATScreen_edit_cbctqa_ratingData.vm", "cbctqa:ratingData"),
    ],
)
def test_templates_read_every_field(template: str, xsi_type: str) -> None:
    item = RecordingItem({f"{xsi_type}/status": "complete", f"{xsi_type}/rater": "alice"})
    session = _Session("S001", "HN", [_Scan("2", "CBCT", "H&N")])
    rendered = _render(template, item, session=session)
    assert "$!" not in rendered and "#end" not in rendered and "#if" not in rendered
    fields = {p.split("/", 1)[1] for p in item.read if p.startswith(xsi_type + "/")}
    assert {p.split("/", 1)[0] for p in item.read} == {xsi_type}
    missing = sorted(set(_schema_types()[xsi_type]) - fields)
    assert not missing, f"{template} never reads {missing}"
    assert fields <= set(_schema_types()[xsi_type]) | INHERITED


def test_report_flags_outliers_and_failures() -> None:
    x = "cbctqa:qaAssessmentData"
    item = RecordingItem(
        {
            f"{x}/status": "failed",
            f"{x}/failure_reason": "DICOM <no pixel data>",
            f"{x}/larynx_outlier": "true",
            f"{x}/larynx_outlier_reason": "robust z 4.2",
        }
    )
    rendered = _render("XDATScreen_report_cbctqa_qaAssessmentData.vm", item)
    assert "Scoring failed: DICOM &lt;no pixel data&gt;" in rendered  # escaped, not raw HTML
    assert rendered.count('class="cbctqa-outlier"') == 1
    queued = _render(
        "XDATScreen_report_cbctqa_qaAssessmentData.vm", RecordingItem({f"{x}/status": "queued"})
    )
    assert "Status: queued" in queued and "Scoring failed" not in queued


def _form_inputs(rendered: str) -> list[dict[str, str]]:
    document = etree.HTML(rendered)
    inputs = []
    for element in document.iter("input", "select", "textarea"):
        attributes = {k: v for k, v in element.attrib.items()}
        attributes["tag"] = element.tag
        inputs.append(attributes)
    return inputs


def test_rating_form_for_a_new_rating() -> None:
    x = "cbctqa:ratingData"
    item = RecordingItem({f"{x}/imageSession_ID": "XNAT_E00001"})
    session = _Session("S 001/a", "HN_CBCT", [_Scan("2", "CBCT", "H&N"), _Scan("3", "CBCT", "")])
    rendered = _render("XDATScreen_edit_cbctqa_ratingData.vm", item, user="dr.bob", session=session)
    inputs = _form_inputs(rendered)
    by_name = {i["name"]: i for i in inputs if i.get("type") != "radio" and "name" in i}
    # rater: the logged-in user, read-only; label per the contract, sanitised
    assert by_name[f"{x}/rater"]["value"] == "dr.bob" and "readonly" in by_name[f"{x}/rater"]
    assert by_name[f"{x}/label"]["value"] == "S_001_a_rating_dr_bob"
    assert by_name[f"{x}/label"]["value"] == rating_label("S 001/a", "dr.bob")  # as the gateway
    # posted the way XNAT's generated image-assessor forms post
    (form,) = etree.HTML(rendered).iter("form")
    assert form.get("method") == "post"
    assert form.get("action") == "/app/action/ModifyImageAssessorData"
    assert by_name["project"]["value"] == "HN_CBCT" and by_name["project"]["type"] == "hidden"
    assert by_name[f"{x}/project"]["value"] == "HN_CBCT"
    assert by_name[f"{x}/imageSession_ID"]["value"] == "XNAT_E00001"
    assert by_name["ELEMENT_0"]["value"] == x
    # one 1..5 radio group per category, none preselected, each required
    radios = [i for i in inputs if i.get("type") == "radio"]
    groups: dict[str, list[str]] = {}
    for radio in radios:
        groups.setdefault(radio["name"], []).append(radio["value"])
        assert "required" in radio and "checked" not in radio
    assert groups == {f"{x}/{c}": ["1", "2", "3", "4", "5"] for c in CATEGORIES}
    # scan selector lists the session's scans, plus "whole session"
    document = etree.HTML(rendered)
    options = [o.get("value") for o in document.iter("option")]
    assert options == ["", "2", "3"]
    # comments and a submit button; every posted field is a real schema path
    assert by_name[f"{x}/comments"]["tag"] == "textarea"
    assert any(i.get("type") == "submit" for i in inputs)
    allowed = {f"{x}/{f}" for f in _schema_types()[x]} | {f"{x}/{f}" for f in INHERITED}
    posted = {i["name"] for i in inputs if i.get("name", "").startswith("cbctqa:")}
    assert posted <= allowed and {f"{x}/{c}" for c in CATEGORIES} <= posted


def test_rating_form_edits_own_rating_and_locks_others() -> None:
    x = "cbctqa:ratingData"
    values = {
        f"{x}/ID": "XNAT_E00009",
        f"{x}/label": "S001_rating_alice",
        f"{x}/rater": "alice",
        f"{x}/scan_id": "3",
        f"{x}/parotid": 4,
        f"{x}/overall": 2,
        f"{x}/comments": "<script>x</script>",
    }
    session = _Session("S001", "HN", [_Scan("2", "CBCT", ""), _Scan("3", "CBCT", "")])
    own = _render("XDATScreen_edit_cbctqa_ratingData.vm", RecordingItem(values), "alice", session)
    checked = {(i["name"], i["value"]) for i in _form_inputs(own) if "checked" in i}
    assert checked == {(f"{x}/parotid", "4"), (f"{x}/overall", "2")}
    selected = [o.get("value") for o in etree.HTML(own).iter("option") if o.get("selected")]
    assert selected == ["3"]
    assert "<script>x</script>" not in own and "&lt;script&gt;" in own
    assert any(i.get("type") == "submit" for i in _form_inputs(own))
    other = _render("XDATScreen_edit_cbctqa_ratingData.vm", RecordingItem(values), "bob", session)
    other_inputs = _form_inputs(other)
    assert not any(i.get("type") == "submit" for i in other_inputs)
    assert all("disabled" in i for i in other_inputs if i.get("type") == "radio")
    rater = next(i for i in other_inputs if i.get("name") == f"{x}/rater")
    assert rater["value"] == "alice"  # an existing rating keeps its rater


def test_rating_form_labels_a_shared_session_by_its_label_in_the_project() -> None:
    x = "cbctqa:ratingData"
    session = _Session("S001_A", "HN", [], shares=[_Share("TRIAL", "T-17")])
    item = RecordingItem({f"{x}/project": "TRIAL"})
    rendered = _render("XDATScreen_edit_cbctqa_ratingData.vm", item, user="carol", session=session)
    label = next(i for i in _form_inputs(rendered) if i.get("name") == f"{x}/label")
    assert label["value"] == rating_label("T-17", "carol") == "T-17_rating_carol"


# --------------------------------------------------------------------------- actions box


def _action_links(rendered: str) -> list[str]:
    return (
        [a.get("href") for a in etree.HTML(rendered).iter("a") if a.get("href")]
        if rendered.strip()
        else []
    )


def test_actions_box_opens_the_rating_form_per_editable_project() -> None:
    session = _Session(
        "S001_CBCT_03", "HN_CBCT", [], session_id="XNAT_E00012",
        shares=[_Share("TRIAL_A"), _Share("TRIAL_B")],
    )  # fmt: skip
    rendered, helper = _render_actions_box(session, {"HN_CBCT", "TRIAL_B"})
    assert "Rate CBCT quality" in rendered
    links = _action_links(rendered)
    assert links == [
        "/app/action/XDATActionRouter/xdataction/XDATScreen_edit_cbctqa_ratingData"
        "/search_element/xnat:ctSessionData/search_field/xnat:ctSessionData.ID"
        f"/search_value/XNAT_E00012/popup/false/project/{project}"
        for project in ("HN_CBCT", "TRIAL_B")
    ]
    # the edit screen named in the link is the template and the screen class shipped here
    assert (SCREENS / "XDATScreen_edit_cbctqa_ratingData.vm").is_file()
    assert EDIT_SCREEN_CLASS.stem == "XDATScreen_edit_cbctqa_ratingData"
    # permission is asked for the rating datatype, project by project
    assert {path for path, _ in helper.asked} == {"cbctqa:ratingData/project"}
    assert {p for _, p in helper.asked} == {"HN_CBCT", "TRIAL_A", "TRIAL_B"}


@pytest.mark.parametrize(
    ("session", "editable"),
    [
        (_Session("S", "HN", [], xsi_type="xnat:mrSessionData"), {"HN"}),  # not a CT session
        (_Session("S", "HN", [], status="obsolete"), {"HN"}),
        (_Session("S", "HN", [], shares=[_Share("T")]), set()),  # may edit in no project
    ],
)
def test_actions_box_offers_nothing_where_no_rating_can_be_made(
    session: _Session, editable: set[str]
) -> None:
    rendered, _ = _render_actions_box(session, editable)
    assert "Rate CBCT quality" not in rendered and not _action_links(rendered)


def test_actions_box_shared_project_only() -> None:
    session = _Session("S", "HN", [], session_id="XNAT_E9", shares=[_Share("TRIAL")])
    rendered, _ = _render_actions_box(session, {"TRIAL"})
    links = _action_links(rendered)
    assert len(links) == 1 and links[0].endswith("/search_value/XNAT_E9/popup/false/project/TRIAL")


# --------------------------------------------------------------------------- Java: rating labels


def _java_code(path: Path) -> str:
    source = path.read_text(encoding="utf-8")
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"(?m)//.*$", "", source)


def _package_of(path: Path) -> str:
    package = re.search(r"^package ([\w.]+);", _java_code(path), re.M)
    assert package, path
    return package.group(1)


def test_java_rating_label_rule_is_the_gateways() -> None:
    code = _java_code(RATING_LABELS)
    unsafe = re.search(r'UNSAFE_LABEL_CHARACTERS\s*=\s*"([^"]*)"', code)
    infix = re.search(r'RATING_INFIX\s*=\s*"([^"]*)"', code)
    assert unsafe and infix
    # the same character class and joiner as xnat_plugin.gateway.records.rating_label
    probes = [("S 001/a", "dr.bob"), ("CBCT_01", "x@y.z"), ("é ü", "a-b_c"), ("P1-S2", "ann")]
    for session_label, rater in probes:
        java_rule = re.sub(unsafe.group(1), "_", session_label + infix.group(1) + rater)
        assert java_rule == rating_label(session_label, rater)
        assert java_rule == safe_label_part(f"{session_label}_rating_{rater}")
    assert re.search(r'\.replaceAll\("_"\)', code)


def test_java_classes_sit_where_xnat_finds_them() -> None:
    for path in (JAVA, RATING_LABELS, EDIT_SCREEN_CLASS, PRE_SAVE):
        # one public class per file, named as the file, in the folder of its package
        assert re.search(rf"\bpublic (?:final )?class {path.stem}\b", _java_code(path)), path
        assert path.parent == JAVA_ROOT / _package_of(path).replace(".", "/")
    # Turbine looks screen classes up by the template's name in org.nrg.xnat.turbine.modules
    assert _package_of(EDIT_SCREEN_CLASS) == "org.nrg.xnat.turbine.modules.screens"
    screen = _java_code(EDIT_SCREEN_CLASS)
    assert re.search(
        r"extends\s+org\.nrg\.xdat\.turbine\.modules\.screens\.XDATScreen_edit_cbctqa_ratingData\b",
        screen,
    )  # the class xnat-data-builder generates from cbctqa.xsd
    # ModifyImageAssessorData runs every PreSaveAction of this one package before saving
    assert _package_of(PRE_SAVE) == "org.nrg.xnat.actions.imageAssessorEdit.preSave"
    assert "implements ModifyImageAssessorData.PreSaveAction" in _java_code(PRE_SAVE)


@pytest.mark.parametrize("path", [EDIT_SCREEN_CLASS, PRE_SAVE], ids=["screen", "pre-save"])
def test_java_looks_the_rating_label_up_before_making_a_new_one(path: Path) -> None:
    code = _java_code(path)
    label = code.index("RatingLabels.ratingLabel(session.getIdentifier(")
    lookup = code.index("XnatExperimentdata.GetExptByProjectIdentifier(")
    assert label < lookup
    assert "CbctqaRatingdata.SCHEMA_ELEMENT_NAME.equals(existing.getXSIType())" in code
    if path == EDIT_SCREEN_CLASS:
        # an existing rating opens for editing; only otherwise is a new accession number made
        assert (
            lookup
            < code.index("return existing.getItem();")
            < code.index("XnatExperimentdata.CreateNewID()")
        )
        for setter in ("setImagesessionId(", "setProject(", "setLabel(label)", "setRater(rater)"):
            assert setter in code, setter
    else:
        assert lookup < code.index("rating.setId(existing.getId());")
        assert "rating.setLabel(label);" in code
        # a form naming another rater is refused
        assert re.search(r"!login\.equals\(rating\.getRater\(\)\)\)\s*\{\s*throw", code)


# --------------------------------------------------------------------------- automation script


def _groovy() -> str:
    return GROOVY.read_text(encoding="utf-8")


def _code_only(source: str) -> str:
    """The script without comments (so that documentation cannot satisfy a check)."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"(?m)^\s*//.*$", "", source)


def test_groovy_script_sends_the_agreed_prefect_event() -> None:
    code = _code_only(_groovy())
    assert re.search(r'EVENT_NAME\s*=\s*"xnat\.session\.archived"', code)
    assert re.search(r'"prefect\.resource\.id"\s*:\s*"xnat\.session\.\$\{sessionId\}"', code)
    assert re.search(r'apiUrl\.replaceAll\("/\+\\\$", ""\) \+ "/events"', code)
    assert 'setRequestMethod("POST")' in code
    assert re.search(r'SESSION_TYPES\s*=\s*\["xnat:ctSessionData"\]', code)
    payload = re.search(r"payload\s*:\s*\[(.*?)\]", code, re.S)
    assert payload
    keys = set(re.findall(r"(\w+)\s*:", payload.group(1)))
    assert {"project", "subject", "label", "uri", "session_id"} <= keys


def test_groovy_event_fields_are_prefects() -> None:
    from prefect.events.schemas.events import Event

    code = _code_only(_groovy())
    body = code[code.index("return [[") : code.index("]]", code.index("return [["))]
    top_level = set(re.findall(r"^\s{12}(\w+)\s*:", body, re.M))
    required = {n for n, f in Event.model_fields.items() if f.is_required()}
    assert required <= top_level <= set(Event.model_fields)


def test_groovy_script_never_blocks_or_throws() -> None:
    code = _code_only(_groovy())
    connect = re.search(r"CONNECT_TIMEOUT_MS\s*=\s*(\d+)", code)
    read = re.search(r"READ_TIMEOUT_MS\s*=\s*(\d+)", code)
    attempts = re.search(r"MAX_ATTEMPTS\s*=\s*(\d+)", code)
    assert connect and read and attempts
    assert 0 < int(connect.group(1)) <= 10_000 and 0 < int(read.group(1)) <= 30_000
    assert "setConnectTimeout(CONNECT_TIMEOUT_MS)" in code
    assert "setReadTimeout(READ_TIMEOUT_MS)" in code
    # worst case per event stays well under a minute
    assert int(attempts.group(1)) * (int(connect.group(1)) + int(read.group(1))) <= 60_000
    assert not re.search(r"\bthrow\b", code), "the script must never rethrow"
    main = code[code.rindex("\ntry {") :]
    assert re.search(r"\ntry \{.*\n\} catch \(Exception e\) \{\n\s*log\.error", main, re.S)
    assert "catch (IOException e)" in code  # network errors are retried, not raised
    # an API key may be sent, but is never logged
    for call in re.findall(r"log\.\w+\((.*?)\)\n", code, re.S):
        assert "apiKey" not in call


# --------------------------------------------------------------------------- README


def test_readme_documents_install_and_push() -> None:
    readme = (PLUGIN / "README.md").read_text(encoding="utf-8")
    for needle in (
        "plugins/",
        "restart",
        "Administer → Automation",
        "prefect_api_url",
        "xnat.session.archived",
        "polling",
        "nrgxnat.jfrog.io",
        "src/main/resources/schemas/cbctqa/cbctqa.xsd",
        "Actions → Rate CBCT quality",
        "ModifyImageAssessorData",
    ):
        assert needle in readme, needle
    # XNAT activates the @XnatDataModel datatypes itself at start-up: no such install step
    steps = re.findall(r"(?m)^\d+\. .*$", readme)
    assert steps and not any("Setup Additional Data Type" in step for step in steps), steps
