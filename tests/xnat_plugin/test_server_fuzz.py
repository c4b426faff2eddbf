"""Hostile XML at every endpoint that accepts XML: the answer is 4xx, never 500.

Bodies as an attacker would send them (nesting tens of thousands deep, entity bombs,
external entities, values of the wrong type, broken encodings) plus seeded random
mutations of valid documents, sent as a raw XML body and, for object writes, as pyxnat's
multipart ``data.xml``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import requests

from xnat_plugin.server import RunningServer

P = "FUZZ"

QA = """<cbctqa:QAAssessment xmlns:cbctqa="http://cbctqa.org/xnat/cbctqa"
    xmlns:xnat="http://nrg.wustl.edu/xnat" project="FUZZ" label="A1">
  <xnat:date>2026-03-16</xnat:date>
  <cbctqa:status>complete</cbctqa:status>
  <cbctqa:scan_id>1</cbctqa:scan_id>
  <cbctqa:model_version>v2</cbctqa:model_version>
  <cbctqa:larynx_score>2.5</cbctqa:larynx_score>
  <cbctqa:larynx_outlier>false</cbctqa:larynx_outlier>
</cbctqa:QAAssessment>"""

SESSION = """<xnat:CTSession xmlns:xnat="http://nrg.wustl.edu/xnat" project="FUZZ" label="E1">
  <xnat:date>2026-03-16</xnat:date><xnat:note>ok</xnat:note></xnat:CTSession>"""

BUNDLE = """<xdat:bundle xmlns:xdat="http://nrg.wustl.edu/security" ID="@q">
  <xdat:root_element_name>cbctqa:qaAssessmentData</xdat:root_element_name>
  <xdat:search_field><xdat:element_name>cbctqa:qaAssessmentData</xdat:element_name>
    <xdat:field_ID>LABEL</xdat:field_ID><xdat:sequence>0</xdat:sequence></xdat:search_field>
  <xdat:search_where method="AND">
    <xdat:criteria><xdat:schema_field>cbctqa:qaAssessmentData/larynx_score</xdat:schema_field>
      <xdat:comparison_type>&gt;</xdat:comparison_type><xdat:value>1</xdat:value></xdat:criteria>
  </xdat:search_where></xdat:bundle>"""

#: (method, path, query, valid document) of every XML-accepting endpoint
ENDPOINTS = [
    ("PUT", f"/data/projects/{P}X", {}, f'<xnat:Project xmlns:xnat="http://nrg.wustl.edu/xnat" '
                                       f'ID="{P}X"><xnat:name>n</xnat:name></xnat:Project>'),
    ("PUT", f"/data/projects/{P}/subjects/S2", {},
     '<xnat:Subject xmlns:xnat="http://nrg.wustl.edu/xnat" label="S2"><xnat:group>g</xnat:group>'
     "</xnat:Subject>"),
    ("PUT", f"/data/projects/{P}/subjects/S1/experiments/E1", {}, SESSION),
    ("PUT", f"/data/projects/{P}/subjects/S1/experiments/E2", {"xsiType": "xnat:ctSessionData"},
     SESSION.replace("E1", "E2")),
    ("PUT", f"/data/projects/{P}/subjects/S1/experiments/E1/scans/7",
     {"xsiType": "xnat:ctScanData"},
     '<xnat:CTScan xmlns:xnat="http://nrg.wustl.edu/xnat" ID="7" type="CBCT">'
     "<xnat:frames>4</xnat:frames></xnat:CTScan>"),
    ("PUT", f"/data/projects/{P}/subjects/S1/experiments/E1/assessors/A1", {}, QA),
    ("PUT", "/data/experiments/{E1}/assessors/A2", {"xsiType": "cbctqa:qaAssessmentData"},
     QA.replace("A1", "A2")),
    ("POST", "/data/search", {"format": "json"}, BUNDLE),
]


def _hostile(valid: str) -> list[bytes]:
    """Crafted bodies, then seeded random mutations of ``valid``."""
    root_end = valid.index(">") + 1
    head, tail = valid[:root_end], valid[root_end:]
    bodies = [
        (head + "<a>" * 50_000 + "</a>" * 50_000 + tail).encode(),
        (head + "<a>" * 70 + "x" + "</a>" * 70 + tail).encode(),
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
        b'&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        + valid.replace(">", ">&c;", 1).encode(),
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>' + valid.replace(
            ">", ">&e;", 1).encode(),
        valid.replace("2.5", "not-a-number").replace("false", "maybe").encode(),
        valid.replace("2.5", "1e999").replace("2026-03-16", "2026-13-45").encode(),
        valid.replace("2.5", "nan").replace(">0<", ">zero<").replace(">4<", ">-x<").encode(),
        valid.replace("complete", "x" * 100_000).encode(),
        valid.replace(">1<", ">" + "9" * 5000 + "<").encode(),
        valid.replace("cbctqa:QAAssessment", "cbctqa:NoSuchType").encode(),
        valid.replace('xmlns:xnat="http://nrg.wustl.edu/xnat"', "").encode(),
        valid.encode()[: len(valid) // 2],
        valid.encode().replace(b"2", b"\xff\xfe"),
        valid.encode().replace(b"<", b"<\x00", 3),
        valid.replace(">", ' a="' + "q" * 20_000 + '">', 1).encode(),
        valid.replace(">", "".join(f' a{i}="{i}"' for i in range(2000)) + ">", 1).encode(),
        b"",
        b"<",
        b"\xef\xbb\xbf" + valid.encode("utf-16"),
    ]
    rng = random.Random(len(valid))
    raw = valid.encode()
    for _ in range(30):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            pos = rng.randrange(len(data)) if data else 0
            if op < 0.4 and data:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                data[pos:pos] = rng.choice([b"<", b">", b"&", b"/", b'"', b"<x>", b"</", b"]]>",
                                            b"&amp;", b"&#0;", b"&#xFFFF;", b"-1", b"9e9"])
            else:
                del data[pos:pos + rng.randint(1, 20)]
        bodies.append(bytes(data))
    return bodies


@pytest.fixture(scope="module")
def admin(xnat_server: RunningServer) -> Iterator[requests.Session]:
    http = requests.Session()
    http.auth = (xnat_server.user, xnat_server.password)
    base = xnat_server.url
    assert http.put(f"{base}/data/projects/{P}").status_code in {200, 201}
    assert http.put(f"{base}/data/projects/{P}/subjects/S1").status_code in {200, 201}
    assert http.put(f"{base}/data/projects/{P}/subjects/S1/experiments/E1",
                    params={"xsiType": "xnat:ctSessionData"}).status_code in {200, 201}
    yield http
    http.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_hostile_xml_answers_4xx_never_500(admin: requests.Session, xnat_server: RunningServer,
                                           endpoint: tuple[str, str, dict[str, str], str]) -> None:
    method, path, query, valid = endpoint
    base = xnat_server.url
    session_id = admin.get(f"{base}/data/projects/{P}/experiments/E1",
                           params={"format": "json"}).json()["items"][0]["data_fields"]["ID"]
    path = path.replace("{E1}", session_id)
    failures = []
    for i, body in enumerate(_hostile(valid)):
        sends = [("raw", {"data": body, "headers": {"Content-Type": "text/xml"}})]
        if method == "PUT":
            sends.append(("multipart", {"files": {"data.xml": ("data.xml", body, "text/xml")},
                                        "params": {**query, "allowDataDeletion": "true"}}))
        for how, kwargs in sends:
            kwargs.setdefault("params", query)
            answer = admin.request(method, base + path, timeout=60, **kwargs)  # type: ignore[arg-type]
            if answer.status_code >= 500 or answer.status_code < 200:
                failures.append((i, how, answer.status_code, answer.text[:200]))
    assert not failures, failures[:5]
    # the valid document still works after all that
    ok = admin.request(method, base + path, params=query, data=valid.encode(),
                       headers={"Content-Type": "text/xml"}, timeout=60)
    assert ok.status_code in {200, 201}, ok.text


def test_search_sequence_that_is_not_a_number_answers_400(admin: requests.Session,
                                                          xnat_server: RunningServer) -> None:
    answer = admin.post(f"{xnat_server.url}/data/search", params={"format": "json"},
                        data=BUNDLE.replace("<xdat:sequence>0", "<xdat:sequence>first"))
    assert answer.status_code == 400 and "sequence" in answer.text


def test_deeply_nested_xml_answers_400(admin: requests.Session, xnat_server: RunningServer) -> None:
    deep = "<a>" * 40_000 + "</a>" * 40_000
    answer = admin.put(f"{xnat_server.url}/data/projects/{P}/subjects/S1/experiments/E1",
                       data=SESSION.replace("<xnat:note>", deep + "<xnat:note>"),
                       headers={"Content-Type": "text/xml"})
    assert answer.status_code == 400 and "nested deeper" in answer.text
