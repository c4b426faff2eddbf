"""The plugin JAR as XNAT reads it, assembled from ``xnat_plugin/plugin`` the way Gradle would.

No Java build runs on these machines (XNAT's artifact repository is unreachable), so a file put
in the wrong folder would only show in a real XNAT. This module assembles the JAR that
``gradle xnatPluginJar`` produces from the sources, by the rules the build file declares (every
file of ``src/main/resources`` at the same path in the JAR; a class per ``src/main/java`` source;
``META-INF/xnat/<id>-plugin.properties`` written from the ``@XnatPlugin`` annotation by the rules
of NRG's ``XnatPluginAnnotationProcessor``), writes it as a real zip, and checks it where XNAT
looks:

* ``META-INF/xnat/*-plugin.properties``: one file, named by the plugin id, with ``id``,
  ``class`` (a class in the JAR), ``name``, ``version``, ``beanName`` and per datatype
  ``dataModel.<prefix>.<type>.{secured,singular,plural,code}``;
* every datatype's schema at ``schemas/<prefix>/<prefix>.xsd`` declaring the type, and its
  display document at ``schemas/<prefix>/display/<prefix>_<type>_display.xml``;
* the Turbine screens at ``META-INF/resources/templates/screens/XDATScreen_{report,edit}_...vm``
  and the session Actions-box add-on at ``.../screens/xnat_imageSessionData/actionsBox/``;
* the edit screen's Java class under the same name in a Turbine module package;
* nothing misplaced: no schema, display document or template anywhere else.

The checker is also run on JARs with a file moved, so the checks are shown to fail.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from lxml import etree

PLUGIN = Path(__file__).resolve().parents[2] / "xnat_plugin" / "plugin"
RESOURCES = PLUGIN / "src" / "main" / "resources"
JAVA_ROOT = PLUGIN / "src" / "main" / "java"
XS = "{http://www.w3.org/2001/XMLSchema}"
SCREENS = "META-INF/resources/templates/screens/"
#: Packages in which Turbine looks up screen classes by the screen's name.
TURBINE_SCREEN_PACKAGES = (
    "org/nrg/xnat/turbine/modules/screens/",
    "org/apache/turbine/app/xnat/modules/screens/",
)


# --------------------------------------------------------------------------- reading the sources


def _java_code(path: Path) -> str:
    source = path.read_text(encoding="utf-8")
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"(?m)(?<![:\"])//.*$", "", source)


def _plugin_class() -> Path:
    """The one source file carrying ``@XnatPlugin``."""
    found = [p for p in JAVA_ROOT.rglob("*.java") if "@XnatPlugin(" in _java_code(p)]
    assert len(found) == 1, found
    return found[0]


def _annotation_properties(path: Path) -> tuple[str, dict[str, str]]:
    """(file name, properties) as ``XnatPluginAnnotationProcessor`` writes them for ``path``."""
    code = _java_code(path)
    constants = dict(re.findall(r'static final String (\w+)\s*=\s*"([^"]*)";', code))

    def value(expression: str) -> str:
        expression = expression.strip()
        parts = re.findall(r'"((?:[^"\\]|\\.)*)"|(?:\w+\.)?([A-Z_][A-Z0-9_]*)', expression)
        out = []
        for literal, constant in parts:
            if constant:
                assert constant in constants, f"cannot resolve {constant} in {path.name}"
                out.append(constants[constant])
            else:
                out.append(literal)
        return "".join(out)

    annotation = code[code.index("@XnatPlugin(") : code.index("public class")]
    head, _, models_part = annotation.partition("dataModels")
    attributes = dict(
        re.findall(r"(\w+)\s*=\s*((?:\"[^\"]*\"\s*\+?\s*|\w+\.\w+\s*|\w+\s*)+)", head)
    )
    package = re.search(r"^package ([\w.]+);", code, re.M)
    class_name = re.search(r"public class (\w+)", code)
    assert package and class_name
    plugin_id = value(attributes["value"])
    properties = {
        "id": plugin_id,
        "class": f"{package.group(1)}.{class_name.group(1)}",
        "name": value(attributes["name"]),
    }
    for key in ("version", "description"):
        if key in attributes and value(attributes[key]):
            properties[key] = value(attributes[key])
    bean = value(attributes["beanName"]) if "beanName" in attributes else ""
    properties["beanName"] = bean or class_name.group(1)[0].lower() + class_name.group(1)[1:]
    for body in re.findall(r"@XnatDataModel\((.*?)\)", models_part, re.S):
        model = {k: value(v) for k, v in re.findall(r"(\w+)\s*=\s*([^,]+?)\s*(?:,|$)", body)}
        prefix = "dataModel." + model["value"].replace(":", ".") + "."
        properties[prefix + "secured"] = model.get("secured", "true")
        for key in ("singular", "plural", "code"):
            if model.get(key):
                properties[prefix + key] = model[key]
    return f"META-INF/xnat/{plugin_id}-plugin.properties", properties


def _properties_text(properties: dict[str, str]) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")

    return "".join(f"{escape(k)}={escape(v)}\n" for k, v in properties.items())


def _parse_properties(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("#", "!")):
            continue
        key, _, value = re.split(r"(?<!\\)([=:])", line, maxsplit=1)
        out[key.strip().replace("\\", "")] = value.strip().replace("\\:", ":").replace("\\=", "=")
    return out


def _java_classes() -> list[str]:
    """The class files ``compileJava`` writes for the plugin's own sources."""
    classes = []
    for path in JAVA_ROOT.rglob("*.java"):
        relative = path.relative_to(JAVA_ROOT).with_suffix(".class")
        classes.append(relative.as_posix())
    return sorted(classes)


def _assemble(resources: Path, target: Path) -> Path:
    """Write the JAR ``xnatPluginJar`` builds from ``resources`` and the Java sources."""
    build = (PLUGIN / "build.gradle").read_text(encoding="utf-8")
    # the build adds no resources root of its own but the generated one (read here as a rule)
    roots = re.findall(r'resources\s*\{\s*srcDir\s+"([^"]+)"', build)
    assert roots == ["build/xnat-generated/src/main/resources"], roots
    name, properties = _annotation_properties(_plugin_class())
    with zipfile.ZipFile(target, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        for path in sorted(resources.rglob("*")):
            if path.is_file():
                jar.write(path, path.relative_to(resources).as_posix())
        for class_file in _java_classes():
            jar.writestr(class_file, b"\xca\xfe\xba\xbe")
        jar.writestr(name, _properties_text(properties))
    return target


# --------------------------------------------------------------------------- XNAT's view of a JAR


def layout_problems(jar_path: Path) -> list[str]:
    """Everything in ``jar_path`` that XNAT 1.8 would not find, or would find misplaced."""
    problems: list[str] = []
    with zipfile.ZipFile(jar_path) as jar:
        names = set(jar.namelist())
        read = {n: jar.read(n) for n in names if not n.endswith(".class")}
    property_files = [
        n for n in names if re.fullmatch(r"META-INF/xnat/[^/]+-plugin\.properties", n)
    ]
    if len(property_files) != 1:
        return [f"expected one META-INF/xnat/<id>-plugin.properties, found {property_files}"]
    (property_file,) = property_files
    properties = _parse_properties(read[property_file].decode("utf-8"))
    plugin_id = properties.get("id", "")
    if property_file != f"META-INF/xnat/{plugin_id}-plugin.properties":
        problems.append(f"{property_file} is not named by the plugin id {plugin_id!r}")
    for key in ("id", "class", "name", "beanName"):
        if not properties.get(key):
            problems.append(f"{property_file} lacks {key}")
    plugin_class = properties.get("class", "").replace(".", "/") + ".class"
    if plugin_class not in names:
        problems.append(f"plugin class {plugin_class} is not in the JAR")

    models = sorted({k.rsplit(".", 1)[0] for k in properties if k.startswith("dataModel.")})
    if not models:
        problems.append(f"{property_file} declares no data models")
    for model in models:
        _, prefix, type_name = model.split(".", 2)
        for key in ("secured", "singular", "plural", "code"):
            if not properties.get(f"{model}.{key}"):
                problems.append(f"{model}.{key} missing from {property_file}")
        schema = f"schemas/{prefix}/{prefix}.xsd"
        if schema not in read:
            problems.append(f"{prefix}:{type_name}: schema {schema} is not in the JAR")
        else:
            root = etree.fromstring(read[schema])
            declared = {t.get("name") for t in root.findall(XS + "complexType")}
            if type_name not in declared:
                problems.append(f"{schema} does not declare {type_name}")
            elements = {e.get("type") for e in root.findall(XS + "element")}
            if f"{prefix}:{type_name}" not in elements:
                problems.append(f"{schema} has no root element of type {prefix}:{type_name}")
        display = f"schemas/{prefix}/display/{prefix}_{type_name}_display.xml"
        if display not in read:
            problems.append(f"{prefix}:{type_name}: display document {display} is not in the JAR")
        elif etree.fromstring(read[display]).get("schema-element") != f"{prefix}:{type_name}":
            problems.append(f"{display} is not the display document of {prefix}:{type_name}")
        report = f"{SCREENS}XDATScreen_report_{prefix}_{type_name}.vm"
        if report not in read:
            problems.append(f"{prefix}:{type_name}: report screen {report} is not in the JAR")

    edit_screens = [
        n for n in names if re.fullmatch(re.escape(SCREENS) + r"XDATScreen_edit_\w+\.vm", n)
    ]
    if not edit_screens:
        problems.append("no edit screen (XDATScreen_edit_<prefix>_<type>.vm) in the JAR")
    for screen in edit_screens:
        stem = PurePosixPath(screen).stem
        if not any(f"{package}{stem}.class" in names for package in TURBINE_SCREEN_PACKAGES):
            problems.append(f"{screen} has no screen class {stem} in a Turbine module package")
    actions = [n for n in names if n.startswith(f"{SCREENS}xnat_imageSessionData/actionsBox/")]
    if not [n for n in actions if n.endswith(".vm")]:
        problems.append("no Actions-box add-on in screens/xnat_imageSessionData/actionsBox/")

    # nothing where XNAT would not look for it
    for name in sorted(names):
        if name.endswith(".xsd") and not re.fullmatch(r"schemas/([^/]+)/\1\.xsd", name):
            problems.append(f"misplaced schema {name} (XNAT loads schemas/<name>/<name>.xsd)")
        if name.endswith("_display.xml") and not re.fullmatch(
            r"schemas/[^/]+/display/[^/]+_display\.xml", name
        ):
            problems.append(f"misplaced display document {name}")
        if name.endswith(".vm") and not name.startswith("META-INF/resources/templates/"):
            problems.append(f"misplaced template {name} (XNAT reads META-INF/resources/templates)")
        if name.startswith(("src/", "build/", "resources/")):
            problems.append(f"source folder packed into the JAR: {name}")
    return problems


# --------------------------------------------------------------------------- tests


@pytest.fixture
def jar(tmp_path: Path) -> Path:
    return _assemble(RESOURCES, tmp_path / "cbctqa-xnat-plugin-0.1.0-xpl.jar")


def test_assembled_jar_has_everything_where_xnat_looks(jar: Path) -> None:
    assert layout_problems(jar) == []
    with zipfile.ZipFile(jar) as archive:
        names = set(archive.namelist())
    for expected in (
        "schemas/cbctqa/cbctqa.xsd",
        "schemas/cbctqa/display/cbctqa_qaAssessmentData_display.xml",
        "schemas/cbctqa/display/cbctqa_ratingData_display.xml",
        f"{SCREENS}XDATScreen_report_cbctqa_qaAssessmentData.vm",
        f"{SCREENS}XDATScreen_report_cbctqa_ratingData.vm",
        f"{SCREENS}XDATScreen_edit_cbctqa_ratingData.vm",
        f"{SCREENS}xnat_imageSessionData/actionsBox/CbctQaRating.vm",
        "META-INF/xnat/cbctqaPlugin-plugin.properties",
        "org/cbctqa/xnat/plugin/CbctQaPlugin.class",
        "org/nrg/xnat/turbine/modules/screens/XDATScreen_edit_cbctqa_ratingData.class",
        "org/nrg/xnat/actions/imageAssessorEdit/preSave/CbctqaRatingPreSave.class",
        "scripts/cbctqa_notify_prefect.groovy",
    ):
        assert expected in names, expected


def test_plugin_properties_as_the_annotation_processor_writes_them(jar: Path) -> None:
    with zipfile.ZipFile(jar) as archive:
        text = archive.read("META-INF/xnat/cbctqaPlugin-plugin.properties").decode("utf-8")
    properties = _parse_properties(text)
    assert properties["id"] == "cbctqaPlugin"
    assert properties["class"] == "org.cbctqa.xnat.plugin.CbctQaPlugin"
    assert properties["beanName"] == "cbctQaPlugin"
    assert properties["name"] == "CBCT QA monitor" and properties["version"] == "0.1.0"
    assert properties["description"].startswith("Automatic image-quality scoring")
    assert {k: v for k, v in properties.items() if k.startswith("dataModel.")} == {
        "dataModel.cbctqa.qaAssessmentData.secured": "true",
        "dataModel.cbctqa.qaAssessmentData.singular": "CBCT QA Assessment",
        "dataModel.cbctqa.qaAssessmentData.plural": "CBCT QA Assessments",
        "dataModel.cbctqa.qaAssessmentData.code": "CBCTQA",
        "dataModel.cbctqa.ratingData.secured": "true",
        "dataModel.cbctqa.ratingData.singular": "CBCT Quality Rating",
        "dataModel.cbctqa.ratingData.plural": "CBCT Quality Ratings",
        "dataModel.cbctqa.ratingData.code": "CBCTRT",
    }


def _moved(tmp_path: Path, source: str, target: str | None) -> Path:
    """A copy of the resources with ``source`` moved to ``target`` (or deleted), as a JAR."""
    resources = tmp_path / "resources"
    shutil.copytree(RESOURCES, resources)
    moved = resources / source
    assert moved.is_file(), source
    if target is not None:
        (resources / target).parent.mkdir(parents=True, exist_ok=True)
        moved.rename(resources / target)
    else:
        moved.unlink()
    return _assemble(resources, tmp_path / "broken.jar")


@pytest.mark.parametrize(
    ("source", "target", "complaint"),
    [
        # the old build: schema staged outside schemas/<name>/ (never seen by xdat-data-builder)
        (
            "schemas/cbctqa/cbctqa.xsd",
            "staged-schemas/cbctqa.xsd",
            "schema schemas/cbctqa/cbctqa.xsd",
        ),
        ("schemas/cbctqa/cbctqa.xsd", "schemas/cbctqa.xsd", "misplaced schema schemas/cbctqa.xsd"),
        (
            "schemas/cbctqa/display/cbctqa_ratingData_display.xml",
            "schemas/cbctqa/cbctqa_ratingData_display.xml",
            "misplaced display document",
        ),
        (
            f"{SCREENS}XDATScreen_report_cbctqa_qaAssessmentData.vm",
            "templates/screens/XDATScreen_report_cbctqa_qaAssessmentData.vm",
            "misplaced template",
        ),
        (
            f"{SCREENS}xnat_imageSessionData/actionsBox/CbctQaRating.vm",
            f"{SCREENS}xnat_ctSessionData/CbctQaRating.vm",
            "no Actions-box add-on",
        ),
        ("schemas/cbctqa/display/cbctqa_qaAssessmentData_display.xml", None, "display document"),
    ],
)
def test_a_misplaced_file_fails_the_layout_check(
    tmp_path: Path, source: str, target: str | None, complaint: str
) -> None:
    problems = layout_problems(_moved(tmp_path, source, target))
    assert any(complaint in p for p in problems), problems


def test_a_schema_without_the_annotated_type_fails(tmp_path: Path) -> None:
    resources = tmp_path / "resources"
    shutil.copytree(RESOURCES, resources)
    schema = resources / "schemas" / "cbctqa" / "cbctqa.xsd"
    schema.write_text(
        schema.read_text(encoding="utf-8").replace('name="ratingData"', 'name="rating"'),
        encoding="utf-8",
    )
    problems = layout_problems(_assemble(resources, tmp_path / "broken.jar"))
    assert "schemas/cbctqa/cbctqa.xsd does not declare ratingData" in problems


def test_properties_named_for_another_id_fail(tmp_path: Path, jar: Path) -> None:
    broken = tmp_path / "renamed.jar"
    with zipfile.ZipFile(jar) as source, zipfile.ZipFile(broken, "w") as target:
        for info in source.infolist():
            name = info.filename.replace("cbctqaPlugin-plugin", "cbctqa-plugin")
            target.writestr(name, source.read(info.filename))
    problems = layout_problems(broken)
    assert any("is not named by the plugin id 'cbctqaPlugin'" in p for p in problems), problems
