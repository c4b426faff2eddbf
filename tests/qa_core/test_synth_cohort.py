"""Tests for qa_core.synth.cohort: sessions in memory, cohorts on disk, the reader."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest

from qa_core.categories import CATEGORIES
from qa_core.consensus import weighted_consensus
from qa_core.errors import SynthesisError
from qa_core.rtstruct import read_structure_set_info
from qa_core.synth import (
    GENERATOR_VERSION,
    Cohort,
    generate_cohort,
    read_cohort,
    session_label,
    simulate_session,
    subject_label,
)
from qa_core.synth.phantom import LABELS

KW = {"slices": 8, "size": 64}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    out = tmp_path_factory.mktemp("cohort") / "c"
    return generate_cohort(out, n_sessions=2, seed=5, progress=False, **KW)


def test_layout_and_labels(cohort):
    root = cohort.root
    for name in ("cohort.json", "ratings.csv", "truth.json"):
        assert (root / name).is_file()
    assert [s.label for s in cohort.sessions] == ["SIM5_001", "SIM5_002"]
    assert [s.subject for s in cohort.sessions] == ["SUBJ5_001", "SUBJ5_002"]
    for s in cohort.sessions:
        files = sorted(s.dicom_dir.glob("*.dcm"))
        # the CT slices, then the organs at risk as an RTSTRUCT referencing them
        assert [f.name for f in files] == [f"CT{i:04d}.dcm" for i in range(KW["slices"])] + ["RS.dcm"]
        rs = read_structure_set_info(s.dicom_dir / "RS.dcm")
        assert rs.referenced_series_uids == (str(pydicom.dcmread(files[0]).SeriesInstanceUID),)
        assert {"External", "Parotid_L", "Parotid_R", "Bone_Mandible"} <= set(rs.roi_names)
        npz = np.load(s.labels_path)
        assert npz["labels"].dtype == np.uint8 and npz["labels"].shape == (8, 64, 64)
        assert dict(zip(npz["names"].tolist(), npz["values"].tolist(), strict=True)) == LABELS
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["generator"] == GENERATOR_VERSION and meta["complete"] is True
    assert (meta["seed"], meta["n_sessions"], meta["slices"], meta["size"]) == (5, 2, 8, 64)
    assert len(meta["raters"]) >= 3 and meta["settings_ranges"]
    assert not list((root / "sessions").glob(".tmp-*"))


def test_truth_json_contract(cohort):
    truth = json.loads((cohort.root / "truth.json").read_text())
    assert sorted(truth) == ["SIM5_001", "SIM5_002"]
    for entry in truth.values():
        assert {"subject", "settings", "latent", "consensus", "ratings", "weights"} <= set(entry)
        assert set(entry["latent"]) == set(CATEGORIES) == set(entry["consensus"])
        assert {"acquisition", "anatomy"} <= set(entry["settings"])


def test_ratings_csv_consensus_is_weighted_mean(cohort):
    with (cohort.root / "ratings.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["session", "rater", "category", "score", "weight"]
        rows = list(reader)
    assert len(rows) == 2 * 4 * len(CATEGORIES)
    grouped: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        score = int(r["score"])
        assert 1 <= score <= 5 and r["score"] == str(score)
        grouped[(r["session"], r["category"])].append((score, float(r["weight"])))
    by_label = {s.label: s for s in cohort.sessions}
    for (label, cat), pairs in grouped.items():
        s, w = zip(*pairs, strict=True)
        assert by_label[label].consensus[cat] == pytest.approx(weighted_consensus(s, w), abs=1e-6)


def test_no_ground_truth_inside_dicom(cohort):
    s = cohort.sessions[0]
    truth_strings = {f"{v:.4f}" for v in s.latent.values()} | {"latent", "consensus", "ratings"}
    for f in sorted(s.dicom_dir.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        assert not any(elem.tag.is_private for elem in ds.iterall())
        raw = f.read_bytes()
        for text in truth_strings:
            assert text.encode() not in raw
        assert ds.PatientID == s.subject
        assert ds.Modality == ("RTSTRUCT" if f.name == "RS.dcm" else "CT")


def test_session_loads_back_through_load_series(cohort):
    from qa_core.dicom_series import load_series

    s = cohort.sessions[1]
    vol = load_series(s.dicom_dir)
    sim = simulate_session(5, 2, **KW)
    assert vol.shape == sim.hu.shape
    assert vol.spacing == pytest.approx(sim.spacing, rel=1e-4)
    np.testing.assert_allclose(vol.hu, sim.hu, atol=0.51)  # stored as integer HU


def test_simulate_session_deterministic():
    a = simulate_session(9, 3, **KW)
    b = simulate_session(9, 3, **KW)
    np.testing.assert_array_equal(a.hu, b.hu)
    assert a.latent == b.latent and a.ratings == b.ratings and a.settings == b.settings
    c = simulate_session(9, 4, **KW)
    assert not np.array_equal(a.hu, c.hu)
    assert (
        (a.label, a.subject)
        == (session_label(9, 3), subject_label(9, 3))
        == ("SIM9_003", "SUBJ9_003")
    )


def test_session_independent_of_cohort_size(cohort, tmp_path):
    """Session 1 of a 1-session cohort equals session 1 of the 2-session cohort, byte for byte."""
    small = generate_cohort(tmp_path / "one", n_sessions=1, seed=5, progress=False, **KW)
    a, b = small.sessions[0], cohort.sessions[0]
    assert (a.label, a.consensus, a.ratings, a.settings) == (
        b.label,
        b.consensus,
        b.ratings,
        b.settings,
    )
    for fa, fb in zip(sorted(a.dicom_dir.iterdir()), sorted(b.dicom_dir.iterdir()), strict=True):
        assert fa.read_bytes() == fb.read_bytes()


def test_resume_keeps_finished_sessions_and_cleans_temp(tmp_path):
    out = tmp_path / "c"
    seen: list[int] = []

    class Stop(Exception):
        pass

    def stop_after_first(i: int) -> None:
        seen.append(i)
        raise Stop

    with pytest.raises(Stop):
        generate_cohort(
            out, n_sessions=2, seed=1, progress=False, on_session=stop_after_first, **KW
        )
    done = sorted(p.name for p in (out / "sessions").iterdir())
    assert len(done) == 1 and done[0] == session_label(1, seen[0])  # no half session
    stale = out / "sessions" / ".tmp-SIM1_002-12345"
    stale.mkdir()
    (stale / "junk").write_text("x")
    first = out / "sessions" / done[0] / "truth.json"
    mtime = first.stat().st_mtime_ns
    cohort = generate_cohort(out, n_sessions=2, seed=1, progress=False, **KW)
    assert len(cohort.sessions) == 2
    assert first.stat().st_mtime_ns == mtime  # kept, not regenerated
    assert not stale.exists()


def test_refuses_foreign_or_mismatched_folder(tmp_path, cohort):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SynthesisError, match=r"without cohort\.json"):
        generate_cohort(foreign, n_sessions=1, progress=False, **KW)
    with pytest.raises(SynthesisError, match="seed=5"):
        generate_cohort(cohort.root, n_sessions=1, seed=6, progress=False, **KW)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SynthesisError, match="not a folder"):
        generate_cohort(afile, n_sessions=1, progress=False, **KW)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_sessions": 0}, "n_sessions"),
        ({"n_sessions": 1, "workers": 0}, "workers"),
        ({"n_sessions": 1, "size": 32}, "size"),
        ({"n_sessions": 1, "slices": 4}, "slices"),
        ({"n_sessions": 1, "seed": -1}, "seed"),
    ],
)
def test_generate_cohort_argument_errors(tmp_path, kwargs, match):
    args = {**KW, **kwargs}
    with pytest.raises(SynthesisError, match=match):
        generate_cohort(tmp_path / "x", progress=False, **args)


def test_simulate_session_errors():
    with pytest.raises(SynthesisError, match="index starts at 1"):
        simulate_session(0, 0, **KW)
    with pytest.raises(SynthesisError, match="slices"):
        simulate_session(0, 1, slices=3, size=64)


def test_read_cohort_errors(tmp_path, cohort):
    import shutil

    with pytest.raises(SynthesisError, match="does not exist"):
        read_cohort(tmp_path / "none")
    broken = tmp_path / "broken"
    shutil.copytree(cohort.root, broken)
    (broken / "ratings.csv").unlink()
    with pytest.raises(SynthesisError, match=r"ratings\.csv"):
        read_cohort(broken)
    shutil.copy(cohort.root / "ratings.csv", broken / "ratings.csv")
    text = (broken / "ratings.csv").read_text().splitlines()
    row = text[1].split(",")
    row[3] = str(6 - int(row[3]) if row[3] != "3" else 4)
    (broken / "ratings.csv").write_text("\n".join([text[0], ",".join(row), *text[2:]]) + "\n")
    with pytest.raises(SynthesisError, match="disagrees"):
        read_cohort(broken)
    (broken / "ratings.csv").write_text("a,b\n")
    with pytest.raises(SynthesisError, match="header"):
        read_cohort(broken)
    shutil.copy(cohort.root / "ratings.csv", broken / "ratings.csv")
    (broken / "truth.json").write_text("{not json")
    with pytest.raises(SynthesisError, match=r"truth\.json|parse"):
        read_cohort(broken)
    (broken / "truth.json").write_text(json.dumps({"SIM5_001": {"subject": "x"}}))
    with pytest.raises(SynthesisError, match="SIM5_001"):
        read_cohort(broken)
    shutil.rmtree(broken / "sessions" / "SIM5_001" / "DICOM")
    shutil.copy(cohort.root / "truth.json", broken / "truth.json")
    with pytest.raises(SynthesisError, match="no DICOM folder"):
        read_cohort(broken)


def test_workers_give_identical_cohort(tmp_path, cohort):
    par = generate_cohort(tmp_path / "par", n_sessions=2, seed=5, workers=2, progress=False, **KW)
    assert [s.consensus for s in par.sessions] == [s.consensus for s in cohort.sessions]
    for a, b in zip(par.sessions, cohort.sessions, strict=True):
        fa = sorted(Path(a.dicom_dir).iterdir())
        fb = sorted(Path(b.dicom_dir).iterdir())
        assert [f.read_bytes() for f in fa] == [f.read_bytes() for f in fb]


def test_lock_refuses_a_concurrent_writer_and_takes_over_a_stale_one(tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "c"
    out.mkdir()
    (out / ".synth.lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(SynthesisError, match="another cbctqa synth"):
        generate_cohort(out, n_sessions=1, progress=False, **KW)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (out / ".synth.lock").write_text(dead.stdout.strip())  # its writer is gone
    cohort = generate_cohort(out, n_sessions=1, progress=False, **KW)
    assert len(cohort.sessions) == 1
    assert not (out / ".synth.lock").exists()
