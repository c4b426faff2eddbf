"""Training and validation of the quality CNN on a cohort of rated CBCT volumes.

Samples are axial slices; each slice carries its volume's consensus Likert scores (one per
category). Splits are made at volume level, so no volume contributes slices to both the
training and the validation set. Everything random (weight initialisation, the split, the
shuffling, the augmentation) derives from one seed; on CPU the same seed gives bit-identical
weights.

Loss: smooth L1 (Huber, beta = 0.5 Likert points) between the squashed output
``1 + 4 sigmoid(z)`` and the consensus, averaged over the five categories. The consensus is a
weighted mean of raters, hence continuous on [1, 5]: a regression loss uses it as it is, where
an ordinal (CORAL) loss would have to round it to a class and lose the between-rater
information. The Huber form keeps the gradient bounded for slices whose content says little
about their volume's label (e.g. a slice far below the parotids carrying the parotid score).

Validation is reported per category on *volume* means of slice predictions: MAE (Likert points,
lower is better) and Spearman's rho against the consensus (higher is better).
"""

from __future__ import annotations

import csv
import datetime
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import stats
from tqdm.auto import tqdm

from qa_core.categories import CATEGORIES
from qa_core.consensus import weighted_consensus
from qa_core.errors import CbctQaError, TrainingError
from qa_core.model import (
    DEFAULT_HIDDEN,
    DEFAULT_WIDTHS,
    HU_WINDOW,
    INPUT_SIZE,
    LikertCNN,
    save_model,
    select_device,
)
from qa_core.preprocess import preprocess_volume
from qa_core.volume import Volume

__all__ = [
    "CategoryMetrics",
    "CohortEntry",
    "EvaluationReport",
    "TrainingConfig",
    "TrainingResult",
    "VolumeSamples",
    "evaluate_samples",
    "load_cohort_samples",
    "make_samples",
    "read_rated_cohort",
    "split_volumes",
    "train_from_cohort",
    "train_model",
]

#: Huber transition (Likert points) of the smooth L1 loss.
_HUBER_BETA = 0.5


@dataclass(frozen=True, eq=False)
class VolumeSamples:
    """One volume's preprocessed slices and its consensus label.

    Attributes
    ----------
    label:
        Session label (unique within a cohort).
    slices:
        float32 ``(N, 1, 128, 128)`` on CPU, preprocessed (see :mod:`qa_core.preprocess`).
    consensus:
        Consensus Likert score per category, in ``CATEGORIES`` order (1-5 scale).
    """

    label: str
    slices: torch.Tensor
    consensus: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.slices.ndim != 4 or self.slices.shape[0] < 1 or self.slices.shape[1:] != (
            1,
            INPUT_SIZE,
            INPUT_SIZE,
        ):
            raise TrainingError(
                f"session {self.label}: slices must be (N>=1, 1, {INPUT_SIZE}, {INPUT_SIZE}); "
                f"got {tuple(self.slices.shape)}"
            )
        if len(self.consensus) != len(CATEGORIES) or not all(
            math.isfinite(c) and 1.0 <= c <= 5.0 for c in self.consensus
        ):
            raise TrainingError(
                f"session {self.label}: consensus must be {len(CATEGORIES)} finite scores in "
                f"[1, 5] ({', '.join(CATEGORIES)}); got {self.consensus}"
            )


def make_samples(label: str, volume: Volume, consensus: dict[str, float]) -> VolumeSamples:
    """Preprocess a volume into training samples labelled with its consensus.

    Parameters
    ----------
    label:
        Session label.
    volume:
        The CBCT volume (HU).
    consensus:
        Category name -> consensus score; must hold every category of ``CATEGORIES``.
    """
    missing = [c for c in CATEGORIES if c not in consensus]
    if missing:
        raise TrainingError(
            f"session {label}: consensus lacks categories {missing}; expected all of "
            f"{list(CATEGORIES)}. Fix: complete its ratings."
        )
    slices = preprocess_volume(volume, size=INPUT_SIZE, hu_window=HU_WINDOW)
    return VolumeSamples(label, slices, tuple(float(consensus[c]) for c in CATEGORIES))


@dataclass(frozen=True)
class CohortEntry:
    """One session to train on: where its series is and its consensus.

    Attributes
    ----------
    label:
        Session label.
    dicom_dir:
        Folder of the session's CT series.
    consensus:
        Category -> consensus Likert score (1-5).
    """

    label: str
    dicom_dir: Path
    consensus: dict[str, float]


def read_rated_cohort(cohort_dir: str | Path) -> tuple[list[CohortEntry], dict[str, Any]]:
    """List a cohort's sessions with their consensus.

    A simulated cohort (with ``truth.json`` and ``cohort.json``) is read by
    :func:`qa_core.synth.read_cohort`. A user-supplied cohort needs only
    ``sessions/<label>/DICOM/`` and ``ratings.csv`` with the header
    ``session,rater,category,score,weight``; each session's consensus is the weighted mean of
    its raters' scores (:func:`qa_core.consensus.weighted_consensus`).

    Returns
    -------
    entries, description
        Sessions sorted by label, and a JSON-ready description of the data source.

    Raises
    ------
    TrainingError
        The folder is missing, or ``ratings.csv`` is missing or malformed, or a session lacks
        a DICOM folder or a category's ratings.
    """
    root = Path(cohort_dir).expanduser()
    if not root.is_dir():
        raise TrainingError(
            f"cohort folder {root} does not exist or is not a folder. Fix: pass the folder "
            "written by `cbctqa synth --out DIR` (or a cohort with the same layout)."
        )
    if (root / "truth.json").is_file():
        from qa_core.synth import read_cohort

        try:
            cohort = read_cohort(root)
        except CbctQaError as exc:
            raise TrainingError(f"cannot read cohort {root}: {exc}") from exc
        entries = [CohortEntry(str(s.label), Path(s.dicom_dir), dict(s.consensus)) for s in cohort.sessions]
        desc: dict[str, Any] = {
            "kind": "simulated",
            "generator": cohort.generator,
            "seed": cohort.seed,
            "slices": cohort.slices,
            "size": cohort.size,
        }
    else:
        entries = _read_user_cohort(root)
        desc = {"kind": "user-supplied", "consensus": "weighted mean of ratings.csv"}
    if not entries:
        raise TrainingError(f"cohort {root} holds no sessions; generate one with `cbctqa synth`")
    return sorted(entries, key=lambda e: e.label), {"cohort_dir": str(root), **desc}


def _read_user_cohort(root: Path) -> list[CohortEntry]:
    csv_path = root / "ratings.csv"
    if not csv_path.is_file():
        raise TrainingError(
            f"cohort {root} has neither truth.json nor ratings.csv. Fix: add ratings.csv with the "
            "header session,rater,category,score,weight (one row per rater, session and category)."
        )
    expected = ["session", "rater", "category", "score", "weight"]
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != expected:
            raise TrainingError(
                f"{csv_path} must have the header {','.join(expected)}; got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                score, weight = float(row["score"]), float(row["weight"])
            except (TypeError, ValueError) as exc:
                raise TrainingError(f"{csv_path}, line {line}: score and weight must be numbers ({exc})") from exc
            if row["category"] not in CATEGORIES:
                raise TrainingError(
                    f"{csv_path}, line {line}: unknown category {row['category']!r}; expected one of "
                    f"{list(CATEGORIES)}"
                )
            if not 1.0 <= score <= 5.0:
                raise TrainingError(f"{csv_path}, line {line}: score {score} is outside the Likert scale 1-5")
            scores.setdefault(row["session"], {}).setdefault(row["category"], []).append((score, weight))
    entries = []
    for label in sorted(scores):
        missing = [c for c in CATEGORIES if c not in scores[label]]
        if missing:
            raise TrainingError(f"{csv_path}: session {label} has no ratings for {missing}; add them")
        dicom_dir = root / "sessions" / label / "DICOM"
        if not dicom_dir.is_dir():
            raise TrainingError(
                f"{csv_path} rates session {label} but {dicom_dir} does not exist; fix the layout "
                "(sessions/<label>/DICOM) or remove its ratings"
            )
        try:
            consensus = {
                c: weighted_consensus([s for s, _ in scores[label][c]], [w for _, w in scores[label][c]])
                for c in CATEGORIES
            }
        except CbctQaError as exc:
            raise TrainingError(f"{csv_path}: session {label}: {exc}") from exc
        entries.append(CohortEntry(label, dicom_dir, consensus))
    return entries


def load_cohort_samples(
    cohort_dir: str | Path, *, progress: bool = True
) -> tuple[list[VolumeSamples], dict[str, Any]]:
    """Read a cohort folder and preprocess every session's series.

    Sessions and consensus come from :func:`read_rated_cohort`; each series is loaded by
    :func:`qa_core.dicom_series.load_series` and preprocessed (the full-resolution volume is
    not kept).

    Returns
    -------
    samples, description
        One :class:`VolumeSamples` per session (sorted by label) and a JSON-ready description
        of the data (path, kind, generator parameters, sessions, slices).
    """
    from qa_core.dicom_series import load_series

    entries, description = read_rated_cohort(cohort_dir)
    samples: list[VolumeSamples] = []
    for e in tqdm(entries, desc="load cohort", unit="vol", disable=not progress):
        try:
            volume = load_series(e.dicom_dir)
        except CbctQaError as exc:
            raise TrainingError(f"cohort {cohort_dir}, session {e.label}: {exc}") from exc
        samples.append(make_samples(e.label, volume, e.consensus))
    description["n_sessions"] = len(samples)
    description["n_slices"] = int(sum(v.slices.shape[0] for v in samples))
    return samples, description


def split_volumes(
    labels: Sequence[str], *, val_fraction: float, seed: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split volume labels into disjoint training and validation sets.

    Parameters
    ----------
    labels:
        Unique session labels (at least 3).
    val_fraction:
        Fraction of volumes for validation, in (0, 1); at least two volumes go to validation
        (so a volume-level Spearman exists) and at least one to training.
    seed:
        Seed of the ``numpy.random.default_rng`` permutation.

    Returns
    -------
    train, val
        Sorted label tuples; disjoint, and together equal to ``labels``.
    """
    if len(set(labels)) != len(labels):
        raise TrainingError(f"session labels must be unique; got duplicates in {sorted(labels)}")
    if len(labels) < 3:
        raise TrainingError(
            f"need at least 3 volumes (>= 1 for training, >= 2 for validation); got {len(labels)}. "
            "Fix: add sessions to the cohort (e.g. `cbctqa synth --sessions 32`)."
        )
    if not (0.0 < val_fraction < 1.0):
        raise TrainingError(f"val_fraction must be in (0, 1); got {val_fraction}")
    ordered = sorted(labels)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_val = min(max(2, round(val_fraction * len(ordered))), len(ordered) - 1)
    val = tuple(sorted(ordered[i] for i in perm[:n_val]))
    train = tuple(sorted(ordered[i] for i in perm[n_val:]))
    return train, val


@dataclass(frozen=True)
class CategoryMetrics:
    """Volume-level agreement of predictions with consensus for one category.

    Attributes
    ----------
    category:
        Category name.
    n_volumes:
        Number of volumes compared.
    mae:
        Mean absolute error of volume-mean predictions, Likert points (lower is better).
    spearman_rho, spearman_p:
        scipy ``spearmanr`` of volume-mean prediction vs consensus (higher rho is better);
        NaN when either side is constant (then ``warning`` says so).
    warning:
        Empty, or why rho is NaN.
    """

    category: str
    n_volumes: int
    mae: float
    spearman_rho: float
    spearman_p: float
    warning: str = ""


@dataclass(frozen=True)
class EvaluationReport:
    """Per-category volume-level metrics plus each volume's predictions.

    Attributes
    ----------
    metrics:
        One :class:`CategoryMetrics` per category, ``CATEGORIES`` order.
    predictions:
        Session label -> category -> volume-mean predicted score.
    consensus:
        Session label -> category -> consensus score.
    """

    metrics: tuple[CategoryMetrics, ...]
    predictions: dict[str, dict[str, float]]
    consensus: dict[str, dict[str, float]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes ``None``)."""

        def clean(v: float) -> float | None:
            # 6 significant digits: p values of 1e-10 must not round to 0
            return None if math.isnan(v) else float(f"{v:.6g}")

        return {
            "metrics": {
                m.category: {
                    "mae": clean(m.mae),
                    "n_volumes": m.n_volumes,
                    "spearman_p": clean(m.spearman_p),
                    "spearman_rho": clean(m.spearman_rho),
                    "warning": m.warning,
                }
                for m in self.metrics
            },
            "predictions": {
                k: {c: round(v, 4) for c, v in d.items()} for k, d in self.predictions.items()
            },
            "consensus": {
                k: {c: round(v, 4) for c, v in d.items()} for k, d in self.consensus.items()
            },
        }

    def table(self) -> str:
        """Plain-text table: category, n, Spearman rho, p, MAE."""
        lines = [f"{'category':14s} {'n':>3s} {'rho':>7s} {'p':>9s} {'MAE':>6s}"]
        for m in self.metrics:
            lines.append(
                f"{m.category:14s} {m.n_volumes:3d} {m.spearman_rho:7.3f} {m.spearman_p:9.2g} "
                f"{m.mae:6.3f}" + (f"  ({m.warning})" if m.warning else "")
            )
        return "\n".join(lines)


@torch.no_grad()
def _predict(model: LikertCNN, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out)


def evaluate_samples(
    model: LikertCNN,
    samples: Sequence[VolumeSamples],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> EvaluationReport:
    """Volume-level evaluation: mean of slice predictions vs consensus, per category.

    Parameters
    ----------
    model:
        The model (its train/eval mode is restored afterwards; evaluation runs in eval mode).
    samples:
        At least 2 volumes.
    batch_size:
        Slices per forward pass.
    device:
        Where to run; ``None`` uses the model's current device.
    """
    if len(samples) < 2:
        raise TrainingError(f"evaluation needs at least 2 volumes; got {len(samples)}")
    dev = next(model.parameters()).device if device is None else select_device(device)
    was_training = model.training
    model.eval()
    try:
        preds = {s.label: _predict(model, s.slices, batch_size, dev).mean(0).numpy() for s in samples}
    finally:
        model.train(was_training)
    metrics = []
    for k, cat in enumerate(CATEGORIES):
        p = np.array([float(preds[s.label][k]) for s in samples])
        c = np.array([s.consensus[k] for s in samples])
        warning = ""
        if np.ptp(p) == 0 or np.ptp(c) == 0:
            rho, pval = math.nan, math.nan
            warning = "constant " + ("predictions" if np.ptp(p) == 0 else "consensus")
        else:
            res = stats.spearmanr(p, c)
            rho, pval = float(res.statistic), float(res.pvalue)
        metrics.append(CategoryMetrics(cat, len(samples), float(np.abs(p - c).mean()), rho, pval, warning))
    return EvaluationReport(
        metrics=tuple(metrics),
        predictions={s.label: {c: float(preds[s.label][k]) for k, c in enumerate(CATEGORIES)} for s in samples},
        consensus={s.label: dict(zip(CATEGORIES, s.consensus, strict=True)) for s in samples},
    )


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run (all recorded in the model card).

    Attributes
    ----------
    epochs:
        Maximum number of epochs (>= 1).
    seed:
        Seed for initialisation, split, shuffling and augmentation.
    val_fraction:
        Fraction of volumes held out for validation and early stopping.
    batch_size:
        Slices per optimisation step.
    lr, weight_decay:
        AdamW learning rate (cosine-decayed to 5 % over ``epochs``) and weight decay.
    patience:
        Early stopping: stop after this many epochs without a lower validation loss; the
        weights of the best epoch are kept.
    augment:
        Random left-right flips, shifts of up to ``max_shift`` pixels and intensity jitter
        (gain 1 +/- 5 %, offset +/- 0.02 on the [-1, 1] scale).
    max_shift:
        Largest shift, in input pixels.
    slices_per_volume:
        ``None``: every training slice in every epoch. Otherwise each epoch draws this many
        slices (without replacement) from each training volume, a fresh draw per epoch:
        epochs get cheaper and every volume weighs the same whatever its length.
    widths, hidden:
        Architecture widths (see :class:`~qa_core.model.LikertCNN`).
    """

    epochs: int = 30
    seed: int = 0
    val_fraction: float = 0.2
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    augment: bool = True
    max_shift: int = 6
    slices_per_volume: int | None = None
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    hidden: int = DEFAULT_HIDDEN

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in (0, 1) (got {self.val_fraction})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.lr <= 0 or self.weight_decay < 0:
            problems.append(f"lr must be > 0 and weight_decay >= 0 (got {self.lr}, {self.weight_decay})")
        if self.patience < 1 or self.max_shift < 0:
            problems.append(f"patience must be >= 1 and max_shift >= 0 (got {self.patience}, {self.max_shift})")
        if self.slices_per_volume is not None and self.slices_per_volume < 1:
            problems.append(f"slices_per_volume must be >= 1 or None (got {self.slices_per_volume})")
        if problems:
            raise TrainingError("invalid training configuration: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "augment": self.augment,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "hidden": self.hidden,
            "lr": self.lr,
            "max_shift": self.max_shift,
            "patience": self.patience,
            "seed": self.seed,
            "slices_per_volume": self.slices_per_volume,
            "val_fraction": self.val_fraction,
            "weight_decay": self.weight_decay,
            "widths": list(self.widths),
        }


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """Outcome of :func:`train_model`.

    Attributes
    ----------
    model:
        The trained model (best validation epoch), eval mode.
    train_labels, val_labels:
        The volume-level split.
    history:
        One dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``lr``.
    best_epoch:
        Epoch (1-based) whose weights were kept.
    validation:
        Volume-level report on the validation volumes.
    config:
        The configuration used.
    device:
        Device name the run used.
    wall_s:
        Training wall time in seconds.
    """

    model: LikertCNN
    train_labels: tuple[str, ...]
    val_labels: tuple[str, ...]
    history: tuple[dict[str, float], ...]
    best_epoch: int
    validation: EvaluationReport
    config: TrainingConfig
    device: str
    wall_s: float
    card: dict[str, Any] = field(default_factory=dict)


def _stack(samples: Sequence[VolumeSamples]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([s.slices for s in samples])
    y = torch.cat(
        [torch.tensor(s.consensus, dtype=torch.float32).expand(s.slices.shape[0], -1) for s in samples]
    )
    return x, y


def _augment(x: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """Flip left-right, shift (zero-padded with air = -1) and jitter intensity, per sample."""
    b = x.shape[0]
    flips = rng.random(b) < 0.5
    shifts = rng.integers(-max_shift, max_shift + 1, size=(b, 2)) if max_shift else np.zeros((b, 2), int)
    gain = 1.0 + rng.uniform(-0.05, 0.05, size=b)
    offset = rng.uniform(-0.02, 0.02, size=b)
    out = x.clone()
    if flips.any():
        idx = torch.from_numpy(np.flatnonzero(flips))
        out[idx] = out[idx].flip(-1)
    if max_shift:
        p = max_shift
        padded = F.pad(out, (p, p, p, p), value=-1.0)
        h, w = x.shape[-2:]
        out = torch.stack(
            [padded[i, :, p + dy : p + dy + h, p + dx : p + dx + w] for i, (dy, dx) in enumerate(shifts.tolist())]
        )
    g = torch.from_numpy(gain.astype(np.float32)).view(b, 1, 1, 1)
    o = torch.from_numpy(offset.astype(np.float32)).view(b, 1, 1, 1)
    return out * g + o


def _epoch_indices(
    counts: Sequence[int], per_volume: int | None, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """Shuffled slice indices for one epoch; at most ``per_volume`` slices of each volume."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if per_volume is None:
        chosen = np.arange(int(sum(counts)), dtype=np.int64)
    else:
        chosen = np.concatenate(
            [s + np.sort(rng.permutation(c)[:per_volume]) for s, c in zip(starts, counts, strict=True)]
        ).astype(np.int64)
    return chosen[rng.permutation(chosen.size)]


def _batches(order: npt.NDArray[np.int64], batch_size: int) -> Iterator[npt.NDArray[np.int64]]:
    for i in range(0, order.size, batch_size):
        yield order[i : i + batch_size]


def train_model(
    samples: Sequence[VolumeSamples],
    config: TrainingConfig = TrainingConfig(),
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train a :class:`~qa_core.model.LikertCNN` on labelled volumes.

    Parameters
    ----------
    samples:
        At least 3 volumes with unique labels.
    config:
        Hyper-parameters and seed.
    device:
        ``None`` follows ``CBCTQA_DEVICE`` (CUDA when available, else CPU).
    progress:
        Show tqdm progress bars (epochs and batches).

    Returns
    -------
    TrainingResult
        Model with the best validation-loss weights, the split, history and validation report.

    Notes
    -----
    Reproducibility: the torch RNG is forked (the caller's global state is untouched) and seeded
    with ``config.seed`` for weight initialisation; the split, shuffling and augmentation use
    ``numpy.random.default_rng`` streams derived from the same seed. On CPU with a fixed thread
    count, equal seeds give identical weights.
    """
    dev = select_device(device)
    by_label = {s.label: s for s in samples}
    if len(by_label) != len(samples):
        raise TrainingError("session labels in the training samples must be unique")
    train_labels, val_labels = split_volumes(list(by_label), val_fraction=config.val_fraction, seed=config.seed)
    train_set = [by_label[k] for k in train_labels]
    val_set = [by_label[k] for k in val_labels]
    x_train, y_train = _stack(train_set)
    counts = [int(v.slices.shape[0]) for v in train_set]
    x_val, y_val = _stack(val_set)
    seeds = np.random.SeedSequence(config.seed).spawn(2)
    shuffle_rng = np.random.default_rng(seeds[0])
    aug_rng = np.random.default_rng(seeds[1])
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        model = LikertCNN(widths=config.widths, hidden=config.hidden).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs, eta_min=config.lr * 0.05)
        best_loss, best_epoch, stale = math.inf, 0, 0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        epochs = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress)
        for epoch in epochs:
            model.train()
            total, count = 0.0, 0
            order = _epoch_indices(counts, config.slices_per_volume, shuffle_rng)
            n_batches = math.ceil(order.size / config.batch_size)
            for idx in tqdm(
                _batches(order, config.batch_size),
                total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress,
            ):
                t = torch.from_numpy(idx)
                xb = x_train[t]
                if config.augment:
                    xb = _augment(xb, aug_rng, config.max_shift)
                yb = y_train[t].to(dev)
                loss = F.smooth_l1_loss(model(xb.to(dev)), yb, beta=_HUBER_BETA)
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            lr = float(opt.param_groups[0]["lr"])
            sched.step()
            model.eval()
            pred_val = _predict(model, x_val, max(config.batch_size, 64), dev)
            val_loss = float(F.smooth_l1_loss(pred_val, y_val, beta=_HUBER_BETA))
            history.append({"epoch": epoch, "lr": lr, "train_loss": total / count, "val_loss": val_loss})
            epochs.set_postfix(train=f"{total / count:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best_loss:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= config.patience:
                    break
        model.load_state_dict(best_state)
    model.eval()
    validation = evaluate_samples(model, val_set, device=dev)
    return TrainingResult(
        model=model,
        train_labels=train_labels,
        val_labels=val_labels,
        history=tuple(history),
        best_epoch=best_epoch,
        validation=validation,
        config=config,
        device=str(dev),
        wall_s=time.perf_counter() - start,
    )


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for lib in ("cbctqa", "torch", "numpy", "scipy", "pydicom"):
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def train_from_cohort(
    cohort_dir: str | Path,
    out: str | Path,
    config: TrainingConfig = TrainingConfig(),
    *,
    device: str | torch.device | None = None,
    command: str | None = None,
    heldout_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train on a cohort folder and write ``out`` (``.pt``) plus its model card.

    Parameters
    ----------
    cohort_dir:
        Cohort folder (see :func:`load_cohort_samples`).
    out:
        Checkpoint path ending in ``.pt``; the card goes to ``<stem>.card.json``.
    config:
        Hyper-parameters and seed.
    device:
        ``None`` follows ``CBCTQA_DEVICE``.
    command:
        The exact command line, recorded in the card.
    heldout_dir:
        Optional independent cohort evaluated after training; its table goes into the card
        under ``heldout``.
    progress:
        Show progress bars.

    Returns
    -------
    TrainingResult
        With ``card`` holding the card as written.
    """
    out_path = Path(out).expanduser()
    if out_path.suffix != ".pt":
        raise TrainingError(f"--out {out_path} must end in .pt (the card is written to <stem>.card.json)")
    if heldout_dir is not None and not Path(heldout_dir).expanduser().is_dir():
        raise TrainingError(f"held-out cohort folder {heldout_dir} does not exist")
    samples, description = load_cohort_samples(cohort_dir, progress=progress)
    result = train_model(samples, config, device=device, progress=progress)
    card: dict[str, Any] = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "training": {
            **config.as_dict(),
            "best_epoch": result.best_epoch,
            "data": description,
            "device": result.device,
            "epochs_run": len(result.history),
            "history": [{k: round(v, 6) for k, v in h.items()} for h in result.history],
            "loss": f"smooth L1 (beta={_HUBER_BETA}) on the 1-5 scale, output 1 + 4 sigmoid(z)",
            "torch_threads": torch.get_num_threads(),
            "train_sessions": list(result.train_labels),
            "val_sessions": list(result.val_labels),
            "wall_s": round(result.wall_s, 1),
        },
        "validation": result.validation.as_dict(),
        "versions": _versions(),
    }
    if heldout_dir is not None:
        held, held_desc = load_cohort_samples(heldout_dir, progress=progress)
        report = evaluate_samples(result.model, held)
        card["heldout"] = {"data": held_desc, **report.as_dict()}
    written = save_model(result.model, out_path, card)
    return TrainingResult(**{**result.__dict__, "card": written})

