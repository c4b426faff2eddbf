from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from qa_core.categories import CATEGORIES
from qa_core.errors import TrainingError
from qa_core.model import LikertCNN, load_model
from qa_core.training import (
    TrainingConfig,
    VolumeSamples,
    evaluate_samples,
    load_cohort_samples,
    make_samples,
    read_rated_cohort,
    split_volumes,
    train_from_cohort,
    train_model,
)
from qa_core.volume import Volume

TINY = TrainingConfig(epochs=2, seed=3, batch_size=8, widths=(4, 4, 8, 8), hidden=4, patience=2)


def _cohort(n: int = 6, slices: int = 3, seed: int = 0) -> list[VolumeSamples]:
    """Volumes whose noise level follows their 'overall' score (lower score, more noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = 1.0 + 4.0 * rng.random(len(CATEGORIES))
        hu = rng.normal(0.0, 20.0 + 60.0 * (5.0 - q[-1]), size=(slices, 64, 64)).astype(np.float32)
        out.append(make_samples(f"s{i:02d}", Volume(hu=hu, spacing=(2.0, 1.0, 1.0)), dict(zip(CATEGORIES, q, strict=True))))
    return out


# --- split -------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_seeded() -> None:
    labels = [f"v{i}" for i in range(20)]
    train, val = split_volumes(labels, val_fraction=0.25, seed=7)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(labels)
    assert len(val) == 5
    assert split_volumes(labels, val_fraction=0.25, seed=7) == (train, val)
    assert split_volumes(labels, val_fraction=0.25, seed=8) != (train, val)
    # input order does not matter
    assert split_volumes(list(reversed(labels)), val_fraction=0.25, seed=7) == (train, val)


def test_split_keeps_two_validation_and_one_training_volume() -> None:
    train, val = split_volumes(["a", "b", "c"], val_fraction=0.01, seed=0)
    assert len(val) == 2 and len(train) == 1
    train, val = split_volumes(["a", "b", "c"], val_fraction=0.99, seed=0)
    assert len(val) == 2 and len(train) == 1


@pytest.mark.parametrize(
    ("labels", "fraction", "match"),
    [
        (["a", "b"], 0.5, "at least 3 volumes"),
        (["a", "a", "b"], 0.5, "unique"),
        (["a", "b", "c"], 0.0, "val_fraction"),
        (["a", "b", "c"], 1.0, "val_fraction"),
    ],
)
def test_split_errors(labels: list[str], fraction: float, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        split_volumes(labels, val_fraction=fraction, seed=0)


# --- samples -------------------------------------------------------------------------------


def test_make_samples_labels_every_slice_in_category_order() -> None:
    vol = Volume(hu=np.zeros((4, 32, 32), np.float32), spacing=(2.0, 1.0, 1.0))
    cons = {c: float(i + 1) for i, c in enumerate(CATEGORIES)}
    s = make_samples("x", vol, cons)
    assert s.slices.shape == (4, 1, 128, 128)
    assert s.consensus == (1.0, 2.0, 3.0, 4.0, 5.0)


def test_make_samples_and_volume_samples_errors() -> None:
    vol = Volume(hu=np.zeros((1, 8, 8), np.float32), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(TrainingError, match=r"session x: consensus lacks categories \['overall'\]"):
        make_samples("x", vol, {c: 3.0 for c in CATEGORIES[:-1]})
    with pytest.raises(TrainingError, match=r"session y: consensus must be"):
        make_samples("y", vol, {c: 6.0 for c in CATEGORIES})
    with pytest.raises(TrainingError, match=r"session z: slices must be"):
        VolumeSamples("z", torch.zeros(2, 1, 64, 64), (3.0,) * 5)


def test_training_config_errors() -> None:
    with pytest.raises(TrainingError, match=r"epochs must be >= 1.*batch_size must be >= 1"):
        TrainingConfig(epochs=0, batch_size=0)
    with pytest.raises(TrainingError, match="slices_per_volume"):
        TrainingConfig(slices_per_volume=0)


def test_epoch_indices_draw_per_volume_without_replacement() -> None:
    from qa_core.training import _epoch_indices

    rng = np.random.default_rng(0)
    idx = _epoch_indices([3, 5, 4], 2, rng)
    assert idx.size == 6 and len(set(idx.tolist())) == 6
    volume_of = np.repeat([0, 1, 2], [3, 5, 4])
    assert np.bincount(volume_of[idx]).tolist() == [2, 2, 2]
    everything = _epoch_indices([3, 5, 4], None, rng)
    assert sorted(everything.tolist()) == list(range(12))


# --- evaluation ------------------------------------------------------------------------------


def test_evaluate_constant_model_known_answer() -> None:
    model = LikertCNN(widths=(4, 4, 8, 8), hidden=4)
    with torch.no_grad():
        model.head.w2.zero_()
        model.head.b2.zero_()  # output 1 + 4 * sigmoid(0) = 3 for every slice and category
    samples = _cohort(4, slices=2)
    report = evaluate_samples(model, samples, device="cpu")
    for k, m in enumerate(report.metrics):
        assert m.category == CATEGORIES[k] and m.n_volumes == 4
        assert m.mae == pytest.approx(np.mean([abs(3.0 - s.consensus[k]) for s in samples]), abs=1e-6)
        assert math.isnan(m.spearman_rho) and m.warning == "constant predictions"
    assert report.as_dict()["metrics"]["parotid"]["spearman_rho"] is None


def test_evaluate_matches_scipy_on_volume_means() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # a fixed random model whose volume means all differ
        model = LikertCNN(widths=(4, 4, 8, 8), hidden=4).eval()
    samples = _cohort(5, slices=3)
    report = evaluate_samples(model, samples, device="cpu")
    with torch.no_grad():
        means = np.stack([model(s.slices).mean(0).numpy() for s in samples])
    cons = np.array([s.consensus for s in samples])
    for k, m in enumerate(report.metrics):
        assert not m.warning
        ref = stats.spearmanr(means[:, k], cons[:, k])
        assert m.spearman_rho == pytest.approx(ref.statistic)
        assert m.spearman_p == pytest.approx(ref.pvalue)
        assert m.mae == pytest.approx(np.abs(means[:, k] - cons[:, k]).mean(), rel=1e-5)
    assert "parotid" in report.table()
    # JSON form keeps 6 significant digits, so tiny p values never round to 0
    d = report.as_dict()["metrics"]
    for m in report.metrics:
        assert d[m.category]["spearman_p"] == float(f"{m.spearman_p:.6g}")


def test_evaluate_needs_two_volumes() -> None:
    with pytest.raises(TrainingError, match="at least 2 volumes"):
        evaluate_samples(LikertCNN(widths=(4, 4, 8, 8), hidden=4), _cohort(1), device="cpu")


# --- training ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_is_reproducible_and_seed_dependent() -> None:
    samples = _cohort()
    state_before = torch.random.get_rng_state()
    a = train_model(samples, TINY, device="cpu", progress=False)
    assert torch.equal(torch.random.get_rng_state(), state_before)  # global RNG untouched
    b = train_model(samples, TINY, device="cpu", progress=False)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.history == b.history
    c = train_model(samples, TrainingConfig(**{**TINY.__dict__, "seed": 4}), device="cpu", progress=False)
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_training_split_volume_level_and_best_epoch_kept() -> None:
    samples = _cohort()
    cfg = TrainingConfig(**{**TINY.__dict__, "epochs": 3, "augment": False})
    r = train_model(samples, cfg, device="cpu", progress=False)
    assert not set(r.train_labels) & set(r.val_labels)
    assert sorted(r.train_labels + r.val_labels) == [s.label for s in samples]
    assert [m.n_volumes for m in r.validation.metrics] == [len(r.val_labels)] * 5
    assert set(r.validation.predictions) == set(r.val_labels)
    assert not r.model.training
    # the kept weights are those of the epoch with the lowest validation loss
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == int(np.argmin(losses)) + 1
    by_label = {s.label: s for s in samples}
    x = torch.cat([by_label[k].slices for k in r.val_labels])
    y = torch.cat([torch.tensor(by_label[k].consensus).expand(by_label[k].slices.shape[0], -1) for k in r.val_labels])
    with torch.no_grad():
        val_loss = float(F.smooth_l1_loss(r.model(x), y, beta=0.5))
    assert val_loss == pytest.approx(min(losses), rel=1e-5)


def test_train_model_rejects_duplicate_labels() -> None:
    s = _cohort(3)
    with pytest.raises(TrainingError, match="unique"):
        train_model([*s, s[0]], TINY, device="cpu", progress=False)


# --- cohorts on disk -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qa_core.synth import generate_cohort

    root = tmp_path_factory.mktemp("cohort") / "c"
    generate_cohort(root, n_sessions=6, slices=8, size=64, seed=5, progress=False)
    return root


@pytest.fixture()
def user_cohort(tiny_cohort: Path, tmp_path: Path) -> Path:
    """The tiny cohort as a user would supply it: DICOM folders and ratings.csv only."""
    root = tmp_path / "user"
    root.mkdir()
    shutil.copy(tiny_cohort / "ratings.csv", root / "ratings.csv")
    for d in (tiny_cohort / "sessions").iterdir():
        shutil.copytree(d / "DICOM", root / "sessions" / d.name / "DICOM")
    return root


def test_read_simulated_cohort(tiny_cohort: Path) -> None:
    from qa_core.synth import read_cohort

    entries, desc = read_rated_cohort(tiny_cohort)
    truth = {s.label: s.consensus for s in read_cohort(tiny_cohort).sessions}
    assert [e.label for e in entries] == sorted(truth)
    assert all(e.consensus == truth[e.label] for e in entries)
    assert desc["kind"] == "simulated" and desc["seed"] == 5 and desc["slices"] == 8


def test_user_cohort_consensus_is_weighted_mean_of_ratings(tiny_cohort: Path, user_cohort: Path) -> None:
    from qa_core.synth import read_cohort

    truth = {s.label: s.consensus for s in read_cohort(tiny_cohort).sessions}
    entries, desc = read_rated_cohort(user_cohort)
    assert desc["kind"] == "user-supplied"
    for e in entries:
        for c in CATEGORIES:
            assert e.consensus[c] == pytest.approx(truth[e.label][c], abs=1e-6)
    samples, sdesc = load_cohort_samples(user_cohort, progress=False)
    assert sdesc["n_sessions"] == 6 and sdesc["n_slices"] == 48
    assert all(s.slices.shape == (8, 1, 128, 128) for s in samples)


def test_user_cohort_errors(user_cohort: Path) -> None:
    csv_path = user_cohort / "ratings.csv"
    rows = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([rows[0], rows[1].replace("parotid", "thyroid"), *rows[2:]]) + "\n")
    with pytest.raises(TrainingError, match=r"ratings\.csv, line 2: unknown category 'thyroid'"):
        read_rated_cohort(user_cohort)
    csv_path.write_text("\n".join([rows[0], *(r for r in rows[1:] if ",overall," not in r)]) + "\n")
    with pytest.raises(TrainingError, match=r"has no ratings for \['overall'\]"):
        read_rated_cohort(user_cohort)
    csv_path.write_text("\n".join(["session,rater,category,score", *rows[1:]]) + "\n")
    with pytest.raises(TrainingError, match="must have the header"):
        read_rated_cohort(user_cohort)
    csv_path.write_text("\n".join(rows) + "\n")
    first = rows[1].split(",")[0]
    shutil.rmtree(user_cohort / "sessions" / first)
    with pytest.raises(TrainingError, match=rf"rates session {first} but .* does not exist"):
        read_rated_cohort(user_cohort)
    csv_path.unlink()
    with pytest.raises(TrainingError, match=r"neither truth\.json nor ratings\.csv"):
        read_rated_cohort(user_cohort)
    with pytest.raises(TrainingError, match="does not exist"):
        read_rated_cohort(user_cohort / "nope")


@pytest.mark.slow
def test_train_from_cohort_writes_loadable_reproducible_checkpoint(tiny_cohort: Path, tmp_path: Path) -> None:
    a = train_from_cohort(tiny_cohort, tmp_path / "a.pt", TINY, device="cpu", command="cmd", heldout_dir=tiny_cohort, progress=False)
    b = train_from_cohort(tiny_cohort, tmp_path / "b.pt", TINY, device="cpu", command="cmd", progress=False)
    assert a.card["sha256"] == b.card["sha256"]  # same seed -> same weights -> same bytes
    card = load_model(tmp_path / "a.pt", device="cpu").card
    assert card["command"] == "cmd"
    assert card["training"]["seed"] == 3 and card["training"]["data"]["seed"] == 5
    assert not set(card["training"]["train_sessions"]) & set(card["training"]["val_sessions"])
    assert set(card["validation"]["metrics"]) == set(CATEGORIES)
    assert card["heldout"]["data"]["n_sessions"] == 6
    assert card["versions"]["torch"] is not None and card["sha256"] == a.card["sha256"]
    with pytest.raises(TrainingError, match=r"must end in \.pt"):
        train_from_cohort(tiny_cohort, tmp_path / "a.pth", TINY, device="cpu", progress=False)
