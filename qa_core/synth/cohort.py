"""Simulated head-and-neck CBCT cohorts: one session in memory, a cohort on disk, its reader.

Reproducibility
---------------
Session ``i`` (1-based) of seed ``K`` depends on ``(K, i, slices, size)`` only: its random
streams are ``numpy.random.SeedSequence([K, i, stream])`` for the anatomy, the acquisition
settings, the quantum noise and the raters, and the rater panel depends on ``K`` alone.
Session 3 of a 24-session cohort therefore equals session 3 of a 4-session cohort.

Layout written by :func:`generate_cohort` (a contract other modules rely on)::

    OUT/cohort.json     generator version, seed, n_sessions, slices, size, settings ranges,
                        rater panel, label names
    OUT/ratings.csv     session,rater,category,score,weight
    OUT/truth.json      {session: {subject, settings, latent, consensus, ratings, weights,
                        measures}}
    OUT/sessions/<session>/DICOM/CT0000.dcm ...   one CT series per session
    OUT/sessions/<session>/DICOM/RS.dcm           RTSTRUCT of the organs at risk (TG-263 names)
                                                  referencing that series
    OUT/sessions/<session>/labels.npz             uint8 label map + label names
    OUT/sessions/<session>/truth.json             the session's own ground truth

Ground truth is never written into the DICOM files. Each session is written into a
temporary folder and renamed into place, so an interrupted run leaves no half session; a
re-run with the same parameters keeps the finished sessions and makes the rest.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from qa_core.categories import CATEGORIES
from qa_core.errors import SynthesisError
from qa_core.synth.acquisition import SETTING_RANGES, AcquisitionSettings, acquire, sample_settings
from qa_core.synth.anomalies import (
    ANOMALY_STAGES,
    InjectedAnomaly,
    check_anomaly_kinds,
    choose_anomaly,
    flip_head_feet,
    flip_left_right,
    heavy_metal,
    miscalibrate_hu,
    other_body_part,
    severe_motion,
    truncate_fov,
)
from qa_core.synth.phantom import (
    GRID_MM,
    LABELS,
    PatientAnatomy,
    build_phantom,
    category_regions,
    sample_anatomy,
)
from qa_core.synth.raters import (
    RegionQuality,
    consensus_scores,
    make_panel,
    measure_quality,
    rate_session,
    reference_image,
)

__all__ = [
    "GENERATOR_VERSION",
    "Cohort",
    "CohortSession",
    "SimulatedSession",
    "generate_cohort",
    "read_cohort",
    "session_label",
    "simulate_session",
    "subject_label",
]

#: Version of the simulator; bumped whenever the same seed would give different data.
GENERATOR_VERSION: Final[str] = "cbctqa-synth 1.0"
#: Raters in every panel.
N_RATERS: Final[int] = 4
_STREAM_ANATOMY, _STREAM_SETTINGS, _STREAM_NOISE, _STREAM_RATERS = 1, 2, 3, 4
#: Streams of the anomaly choice and of its parameters (only drawn when anomalies are asked for).
_STREAM_ANOMALY, _STREAM_ANOMALY_PARAMS = 5, 6
_MIN_SLICES, _MIN_SIZE, _MAX_SIZE = 8, 64, 1024


def session_label(seed: int, index: int) -> str:
    """``SIM{seed}_{index:03d}`` (index from 1)."""
    return f"SIM{seed}_{index:03d}"


def subject_label(seed: int, index: int) -> str:
    """Pseudonymous subject / patient ID ``SUBJ{seed}_{index:03d}``."""
    return f"SUBJ{seed}_{index:03d}"


@dataclass(frozen=True, eq=False)
class SimulatedSession:
    """One simulated session in memory.

    Attributes
    ----------
    label, subject:
        Session and subject IDs.
    hu:
        float32 ``(slices, size, size)`` reconstructed HU (what the DICOM series holds).
    spacing:
        ``(z, y, x)`` in mm.
    labels:
        uint8 label map, same shape (:data:`qa_core.synth.phantom.LABELS`).
    anatomy, settings:
        The patient and the acquisition settings.
    measures:
        Category -> measured region quality (with the latent score).
    latent:
        Category -> latent quality (1-5, continuous).
    ratings:
        Rater -> category -> integer score 1-5.
    weights:
        Rater -> consensus weight.
    consensus:
        Category -> weighted mean of the ratings.
    diagnostics:
        Acquisition diagnostics (scatter-to-primary ratio, minimum counts, ...).
    anomaly:
        The injected anomaly (:mod:`qa_core.synth.anomalies`), ``None`` for a normal session.
    """

    label: str
    subject: str
    hu: npt.NDArray[np.float32]
    spacing: tuple[float, float, float]
    labels: npt.NDArray[np.uint8]
    anatomy: PatientAnatomy
    settings: AcquisitionSettings
    measures: dict[str, RegionQuality]
    latent: dict[str, float]
    ratings: dict[str, dict[str, int]]
    weights: dict[str, float]
    consensus: dict[str, float]
    diagnostics: dict[str, float] = field(default_factory=dict)
    anomaly: InjectedAnomaly | None = None

    def settings_json(self) -> dict[str, Any]:
        """Acquisition settings plus the anatomy (both vary per session)."""
        return {"acquisition": self.settings.to_json(), "anatomy": self.anatomy.to_json()}

    def truth_json(self) -> dict[str, Any]:
        """The session's entry in ``truth.json``."""
        return {
            "subject": self.subject,
            "settings": self.settings_json(),
            "latent": self.latent,
            "consensus": self.consensus,
            "ratings": self.ratings,
            "weights": self.weights,
            "measures": {k: v.to_json() for k, v in self.measures.items()},
            "diagnostics": self.diagnostics,
            "spacing": list(self.spacing),
            "anomaly": None if self.anomaly is None else self.anomaly.to_json(),
        }


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), stream]))


def _check_params(seed: int, index: int, slices: int, size: int) -> None:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise SynthesisError(f"seed must be an integer >= 0; got {seed!r}")
    if index < 1:
        raise SynthesisError(f"session index starts at 1; got {index}")
    if slices < _MIN_SLICES:
        raise SynthesisError(
            f"slices must be >= {_MIN_SLICES} to cover every category region; got {slices}"
        )
    if not (_MIN_SIZE <= size <= _MAX_SIZE):
        raise SynthesisError(f"size must be {_MIN_SIZE}-{_MAX_SIZE} pixels; got {size}")


def simulate_session(
    seed: int,
    index: int,
    *,
    slices: int,
    size: int,
    anatomy: PatientAnatomy | None = None,
    settings: AcquisitionSettings | None = None,
    anomaly: str | None = None,
) -> SimulatedSession:
    """Simulate one session in memory.

    Parameters
    ----------
    seed:
        Cohort seed (>= 0).
    index:
        Session index, from 1.
    slices:
        Axial slices (>= 8); they always span the same anatomy.
    size:
        Pixels per side (64-1024) over a 280 mm field.
    anatomy, settings:
        Override the patient or the acquisition drawn for ``(seed, index)`` (tests use
        this to compare acquisitions of one patient); the noise and rater streams stay
        those of ``(seed, index)``.
    anomaly:
        Inject this known anomaly (:data:`qa_core.synth.anomalies.ANOMALY_KINDS`), with
        parameters drawn from the stream ``(seed, index, 6)``; ``None`` (default) for a
        normal session. Ratings are measured before image-stage faults (flips, HU
        calibration); the label map stays the intended head-and-neck patient's.

    Returns
    -------
    SimulatedSession
    """
    _check_params(seed, index, slices, size)
    anat = anatomy if anatomy is not None else sample_anatomy(_rng(seed, index, _STREAM_ANATOMY))
    acq = settings if settings is not None else sample_settings(_rng(seed, index, _STREAM_SETTINGS))
    injected: InjectedAnomaly | None = None
    arng = _rng(seed, index, _STREAM_ANOMALY_PARAMS)
    if anomaly is not None:
        (kind,) = check_anomaly_kinds([anomaly])
        params: dict[str, Any] = {}
        if kind == "metal":
            anat, params = heavy_metal(anat, arng)
        elif kind == "truncated_fov":
            acq, params = truncate_fov(acq, arng)
        elif kind == "motion":
            acq, params = severe_motion(acq, arng)
        injected = InjectedAnomaly(kind, ANOMALY_STAGES[kind], params)
    phantom = build_phantom(anat, slices=slices, size=size)
    imaged = phantom
    if injected is not None and injected.kind == "body_part":
        imaged, params = other_body_part(phantom, arng)
        injected = replace(injected, params=params)
    hu, fov, diag = acquire(imaged, acq, _rng(seed, index, _STREAM_NOISE))
    regions = category_regions(phantom.labels, phantom.spacing)
    measures = measure_quality(
        hu, reference_image(phantom), phantom.labels, regions, fov, pixel_mm=phantom.spacing[1]
    )
    if injected is not None and injected.stage == "image":
        fault = {"flip_hf": flip_head_feet, "flip_lr": flip_left_right, "hu_calibration": miscalibrate_hu}
        hu, params = fault[injected.kind](hu, arng)
        injected = replace(injected, params=params)
    latent = {c: round(measures[c].latent, 4) for c in CATEGORIES}
    panel = make_panel(seed, N_RATERS)
    ratings = rate_session(latent, panel, _rng(seed, index, _STREAM_RATERS))
    weights = {r.name: r.weight for r in panel}
    consensus = {c: round(v, 6) for c, v in consensus_scores(ratings, weights).items()}
    return SimulatedSession(
        label=session_label(seed, index),
        subject=subject_label(seed, index),
        hu=hu,
        spacing=phantom.spacing,
        labels=phantom.labels,
        anatomy=anat,
        settings=acq,
        measures=measures,
        latent=latent,
        ratings=ratings,
        weights=weights,
        consensus=consensus,
        diagnostics=diag,
        anomaly=injected,
    )


# --------------------------------------------------------------------------- on disk


@dataclass(frozen=True)
class CohortSession:
    """One session of a cohort on disk, with its ground truth.

    Attributes
    ----------
    label, subject:
        Session and pseudonymous subject IDs.
    dicom_dir:
        Folder holding the session's DICOM series.
    consensus, latent:
        Category -> consensus (weighted mean rating) / latent quality.
    ratings:
        Rater -> category -> score 1-5.
    weights:
        Rater -> weight.
    settings:
        Acquisition settings and anatomy (``{"acquisition": ..., "anatomy": ...}``).
    anomaly:
        The injected anomaly (``{"kind", "stage", "params"}``), ``None`` for a normal session.
    """

    label: str
    subject: str
    dicom_dir: Path
    consensus: dict[str, float]
    latent: dict[str, float]
    ratings: dict[str, dict[str, int]]
    weights: dict[str, float]
    settings: dict[str, Any]
    anomaly: dict[str, Any] | None = None

    @property
    def labels_path(self) -> Path:
        """The session's ``labels.npz``."""
        return self.dicom_dir.parent / "labels.npz"


@dataclass(frozen=True)
class Cohort:
    """A simulated cohort read from disk (:func:`read_cohort`).

    Attributes
    ----------
    root:
        The cohort folder.
    seed, slices, size:
        Generation parameters.
    generator:
        Generator version string.
    raters:
        The rater panel as written in ``cohort.json``.
    sessions:
        Sessions in index order.
    """

    root: Path
    seed: int
    slices: int
    size: int
    generator: str
    raters: tuple[dict[str, Any], ...]
    sessions: tuple[CohortSession, ...]

    def consensus_table(self) -> dict[str, list[float]]:
        """Category -> consensus of every session (session order)."""
        return {c: [s.consensus[c] for s in self.sessions] for c in CATEGORIES}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_session(root: Path, sim: SimulatedSession, seed: int, index: int) -> dict[str, Any]:
    """Write one session atomically; returns its truth entry."""
    from qa_core.dicom_writer import write_series
    from qa_core.synth.rtstruct_writer import phantom_roi_masks, write_rtstruct

    sessions = root / "sessions"
    final = sessions / sim.label
    tmp = sessions / f".tmp-{sim.label}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        n = sim.hu.shape[1]
        px = sim.spacing[1]
        half = (n - 1) / 2.0 * px
        origin = (-half, -half, -sim.spacing[0] * (sim.hu.shape[0] - 1))
        study_date = (date(2026, 1, 1) + timedelta(days=index - 1)).strftime("%Y%m%d")
        ct_files = write_series(
            sim.hu,
            sim.spacing,
            tmp / "DICOM",
            origin=origin,
            uid_seed=f"cbctqa-synth:{seed}:{index}",
            patient_id=sim.subject,
            patient_name=sim.subject,
            study_description="Simulated head and neck CBCT",
            series_description="CBCT head and neck",
            series_number=1,
            study_date=study_date,
            manufacturer="cbctqa simulator",
            kvp=100.0,
            exposure_mas=max(1.0, sim.settings.dose * sim.settings.n_views / 4e5),
            file_prefix="CT",
        )
        if sim.labels.shape == sim.hu.shape:  # organs at risk under TG-263 names, as RT exports
            write_rtstruct(
                ct_files,
                phantom_roi_masks(sim.labels),
                tmp / "DICOM" / "RS.dcm",
                uid_seed=f"cbctqa-synth:{seed}:{index}",
            )
        names = np.array(sorted(LABELS, key=LABELS.__getitem__))
        np.savez_compressed(
            tmp / "labels.npz",
            labels=sim.labels,
            names=names,
            values=np.array([LABELS[k] for k in names]),
        )
        truth = sim.truth_json()
        _write_json(tmp / "truth.json", truth)
        if final.exists():  # a session folder without truth.json (left by hand): replace it
            _replace_dir(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return truth


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _make_session(
    root: str,
    seed: int,
    index: int,
    slices: int,
    size: int,
    anomalies: tuple[str, ...] = (),
    anomaly_fraction: float = 0.0,
) -> tuple[int, dict[str, Any]]:
    """Worker entry point: simulate and write session ``index``."""
    kind = (
        choose_anomaly(_rng(seed, index, _STREAM_ANOMALY), index, anomalies, anomaly_fraction)
        if anomalies
        else None
    )
    sim = simulate_session(seed, index, slices=slices, size=size, anomaly=kind)
    return index, _write_session(Path(root), sim, seed, index)


def _cohort_header(
    seed: int,
    n_sessions: int,
    slices: int,
    size: int,
    anomalies: tuple[str, ...] = (),
    anomaly_fraction: float = 0.0,
) -> dict[str, Any]:
    return {
        "anomalies": list(anomalies),
        "anomaly_fraction": float(anomaly_fraction) if anomalies else 0.0,
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "n_sessions": n_sessions,
        "slices": slices,
        "size": size,
        "grid_mm": GRID_MM,
        "categories": list(CATEGORIES),
        "settings_ranges": dict(SETTING_RANGES),
        "anatomy_ranges": "see qa_core.synth.phantom.sample_anatomy",
        "raters": [r.to_json() for r in make_panel(seed, N_RATERS)],
        "labels": dict(LABELS),
        "session_label": "SIM{seed}_{index:03d}",
        "subject_label": "SUBJ{seed}_{index:03d}",
    }


def _check_out(out: Path, header: dict[str, Any]) -> None:
    """Refuse a non-empty folder that is not a cohort with the same parameters."""
    if out.exists() and not out.is_dir():
        raise SynthesisError(
            f"cohort output {out} exists and is not a folder; choose another --out"
        )
    if not out.exists():
        return
    leftovers = {p.name for p in out.iterdir()}
    sessions = out / "sessions"
    if leftovers <= {".synth.lock", "sessions"} and not (
        sessions.is_dir() and any(sessions.iterdir())
    ):
        return  # empty, or only what an interrupted start of a run leaves
    meta = out / "cohort.json"
    if not meta.is_file():
        raise SynthesisError(
            f"cohort output {out} is a non-empty folder without cohort.json; refusing to write "
            "into it - choose an empty or new folder"
        )
    try:
        old = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SynthesisError(
            f"cannot read {meta}: {exc}; remove the folder or choose another --out"
        ) from exc
    for key in ("generator", "seed", "slices", "size", "anomalies", "anomaly_fraction"):
        default: Any = [] if key == "anomalies" else 0.0 if key == "anomaly_fraction" else None
        if old.get(key, default) != header[key]:
            raise SynthesisError(
                f"cohort output {out} holds a cohort with {key}={old.get(key)!r}, not {header[key]!r}; "
                "choose another --out or remove the old cohort"
            )


class _CohortLock:
    """Exclusive ``OUT/.synth.lock`` (holds the writer's PID) for one generating process.

    Two runs writing into one folder would delete each other's temporary sessions; the
    second run is refused. A lock left by a process that no longer exists is taken over.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / ".synth.lock"

    def __enter__(self) -> _CohortLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._owner_alive():
                    raise SynthesisError(
                        f"another cbctqa synth (pid {self._owner()}) is writing {self.path.parent}; "
                        f"wait for it to finish, or remove {self.path} if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale lock of a dead process
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise SynthesisError(f"cannot take the lock {self.path}; remove it and retry")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def _owner_alive(self) -> bool:
        pid = self._owner()
        if pid is None or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def generate_cohort(
    out: str | Path,
    *,
    n_sessions: int,
    slices: int = 64,
    size: int = 256,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    on_session: Callable[[int], None] | None = None,
    anomalies: tuple[str, ...] | list[str] = (),
    anomaly_fraction: float = 0.0,
) -> Cohort:
    """Simulate a cohort and write it to ``out`` (layout in the module docstring).

    Parameters
    ----------
    out:
        Output folder: new, empty, or a previous cohort with the same generator, seed,
        slices and size (finished sessions are kept; the rest are made; sessions beyond
        ``n_sessions`` stay on disk but are not listed in truth.json and ratings.csv).
    n_sessions:
        Sessions (>= 1), indices 1..n.
    slices, size, seed:
        See :func:`simulate_session`.
    workers:
        Processes (>= 1); each session is independent.
    progress:
        Show a tqdm progress bar on stderr.
    on_session:
        Called with the index of every finished session (progress hooks).
    anomalies, anomaly_fraction:
        Inject known anomalies (:mod:`qa_core.synth.anomalies`) into about
        ``anomaly_fraction`` of the sessions; session ``i``, when drawn, gets
        ``anomalies[(i - 1) % len(anomalies)]``. Recorded under ``"anomaly"`` in truth.json
        (``null`` for normal sessions). Default: none.

    Returns
    -------
    Cohort
        The cohort as :func:`read_cohort` reads it back.

    Notes
    -----
    Cost: about 0.6 CPU-seconds per session at 128 x 128 x 48 and 2.5 at 256 x 256 x 64.
    Each worker caches the system matrix of its grid (``size**2 * 240 * 3`` weights of
    8 bytes: 0.1 GB at 128, 0.38 GB at 256, 1.5 GB at 512, 6 GB at 1024) plus up to two
    view subsets, so use few workers for large grids.
    """
    if not isinstance(n_sessions, int) or n_sessions < 1:
        raise SynthesisError(f"n_sessions must be an integer >= 1; got {n_sessions!r}")
    if not isinstance(workers, int) or workers < 1:
        raise SynthesisError(f"workers must be an integer >= 1; got {workers!r}")
    _check_params(seed, 1, slices, size)
    kinds = check_anomaly_kinds(anomalies)
    if not (0.0 <= anomaly_fraction <= 1.0):
        raise SynthesisError(f"anomaly_fraction must lie in [0, 1]; got {anomaly_fraction!r}")
    if anomaly_fraction > 0 and not kinds:
        raise SynthesisError("anomaly_fraction > 0 needs at least one anomaly kind (--anomalies)")
    fraction = float(anomaly_fraction) if kinds else 0.0
    root = Path(out)
    header = _cohort_header(seed, n_sessions, slices, size, kinds, fraction)
    _check_out(root, header)
    root.mkdir(parents=True, exist_ok=True)
    with _CohortLock(root):
        _generate_locked(
            root, header, n_sessions, slices, size, seed, workers, progress, on_session,
            kinds, fraction,
        )
    return read_cohort(root)


def _generate_locked(
    root: Path,
    header: dict[str, Any],
    n_sessions: int,
    slices: int,
    size: int,
    seed: int,
    workers: int,
    progress: bool,
    on_session: Callable[[int], None] | None,
    anomalies: tuple[str, ...] = (),
    anomaly_fraction: float = 0.0,
) -> None:
    """Body of :func:`generate_cohort`, run while holding the folder's lock."""
    sessions_dir = root / "sessions"
    sessions_dir.mkdir(parents=True, exist_ok=True)
    for stale in sessions_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    _write_json(root / "cohort.json", {**header, "complete": False})

    truths: dict[int, dict[str, Any]] = {}
    todo: list[int] = []
    for i in range(1, n_sessions + 1):
        done = sessions_dir / session_label(seed, i) / "truth.json"
        if done.is_file():
            truths[i] = json.loads(done.read_text(encoding="utf-8"))
        else:
            todo.append(i)

    # Sessions sharing a view count share a cached system matrix: run them together.
    todo.sort(key=lambda i: (-sample_settings(_rng(seed, i, _STREAM_SETTINGS)).n_views, i))

    from tqdm import tqdm

    bar = tqdm(
        total=n_sessions,
        initial=n_sessions - len(todo),
        desc="synth",
        unit="session",
        disable=not progress,
    )
    t0 = time.perf_counter()
    try:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                _, truths[i] = _make_session(
                    str(root), seed, i, slices, size, anomalies, anomaly_fraction
                )
                bar.update(1)
                if on_session:
                    on_session(i)
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futs = [
                    pool.submit(
                        _make_session, str(root), seed, i, slices, size, anomalies, anomaly_fraction
                    )
                    for i in todo
                ]
                for fut in as_completed(futs):
                    i, truths[i] = fut.result()
                    bar.update(1)
                    if on_session:
                        on_session(i)
    finally:
        bar.close()

    truth_all = {session_label(seed, i): truths[i] for i in sorted(truths)}
    _write_json(root / "truth.json", truth_all)
    tmp_csv = root / "ratings.csv.tmp"
    with tmp_csv.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["session", "rater", "category", "score", "weight"])
        for label, t in truth_all.items():
            for rater in sorted(t["ratings"]):
                for cat in CATEGORIES:
                    w.writerow([label, rater, cat, t["ratings"][rater][cat], t["weights"][rater]])
    os.replace(tmp_csv, root / "ratings.csv")
    _write_json(
        root / "cohort.json",
        {**header, "complete": True, "seconds": round(time.perf_counter() - t0, 2)},
    )


def read_cohort(path: str | Path) -> Cohort:
    """Read a cohort written by :func:`generate_cohort`.

    Parameters
    ----------
    path:
        The cohort folder.

    Returns
    -------
    Cohort

    Raises
    ------
    SynthesisError
        A file is missing or malformed, or truth.json, ratings.csv and the session folders
        disagree; the message names the file and the fix.
    """
    root = Path(path)
    if not root.is_dir():
        raise SynthesisError(
            f"cohort folder {root} does not exist; generate one with `cbctqa synth --out {root}`"
        )
    meta_p, truth_p, csv_p = root / "cohort.json", root / "truth.json", root / "ratings.csv"
    for p in (meta_p, truth_p, csv_p):
        if not p.is_file():
            raise SynthesisError(
                f"cohort {root} lacks {p.name}; it is incomplete - re-run `cbctqa synth` with the same --out"
            )
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
        truth = json.loads(truth_p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SynthesisError(
            f"cannot parse {exc.__class__.__name__} in cohort {root}: {exc}"
        ) from exc
    for key in ("seed", "slices", "size", "generator"):
        if key not in meta:
            raise SynthesisError(f"{meta_p} lacks the field {key!r}; regenerate the cohort")
    if not isinstance(truth, dict) or not truth:
        raise SynthesisError(f"{truth_p} holds no sessions; regenerate the cohort")
    csv_scores = _read_ratings_csv(csv_p)
    sessions = []
    for label in sorted(truth):
        t = truth[label]
        try:
            cs = CohortSession(
                label=label,
                subject=str(t["subject"]),
                dicom_dir=root / "sessions" / label / "DICOM",
                consensus={c: float(t["consensus"][c]) for c in CATEGORIES},
                latent={c: float(t["latent"][c]) for c in CATEGORIES},
                ratings={r: {c: int(v[c]) for c in CATEGORIES} for r, v in t["ratings"].items()},
                weights={r: float(v) for r, v in t["weights"].items()},
                settings=dict(t["settings"]),
                anomaly=dict(t["anomaly"]) if t.get("anomaly") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SynthesisError(
                f"{truth_p}: session {label} has a missing or bad field ({exc!r}); regenerate the cohort"
            ) from exc
        if not cs.dicom_dir.is_dir():
            raise SynthesisError(
                f"cohort {root}: session {label} has no DICOM folder {cs.dicom_dir}; re-run `cbctqa synth` with the same --out"
            )
        for rater, cats in cs.ratings.items():
            for cat, score in cats.items():
                if csv_scores.get((label, rater, cat)) != (score, cs.weights[rater]):
                    raise SynthesisError(
                        f"{csv_p} disagrees with {truth_p} for session {label}, rater {rater}, {cat}; "
                        "regenerate the cohort"
                    )
        sessions.append(cs)
    return Cohort(
        root=root,
        seed=int(meta["seed"]),
        slices=int(meta["slices"]),
        size=int(meta["size"]),
        generator=str(meta["generator"]),
        raters=tuple(meta.get("raters", ())),
        sessions=tuple(sessions),
    )


def _read_ratings_csv(path: Path) -> dict[tuple[str, str, str], tuple[int, float]]:
    out: dict[tuple[str, str, str], tuple[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        expected = ["session", "rater", "category", "score", "weight"]
        if reader.fieldnames != expected:
            raise SynthesisError(
                f"{path} must have the header {','.join(expected)}; got {reader.fieldnames}"
            )
        for row in reader:
            try:
                out[(row["session"], row["rater"], row["category"])] = (
                    int(row["score"]),
                    float(row["weight"]),
                )
            except (TypeError, ValueError) as exc:
                raise SynthesisError(
                    f"{path}: bad row {row}: {exc}; regenerate the cohort"
                ) from exc
    return out
