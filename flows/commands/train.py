"""``cbctqa train``: train the quality CNN on a cohort and write a checkpoint with its card."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

__all__ = ["command_line", "register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train the Likert quality CNN on a (simulated or user-supplied) cohort",
        description=(
            "Train on the axial slices of every session in COHORT (layout of `cbctqa synth`: "
            "sessions/<label>/DICOM + ratings.csv), each slice labelled with its volume's "
            "consensus; volume-level train/validation split, early stopping on validation loss. "
            "Writes OUT (.pt) and OUT's <stem>.card.json (model card)."
        ),
    )
    p.add_argument("--cohort", required=True, type=Path, help="cohort folder")
    p.add_argument("--out", required=True, type=Path, help="checkpoint to write (.pt)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for init, split, shuffle, augmentation (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="fraction of volumes for validation (default 0.2)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per step (default 32)")
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience in epochs (default 6)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument(
        "--slices-per-volume", type=int, default=None,
        help="slices drawn per training volume per epoch (default: all)",
    )
    p.add_argument("--no-augment", action="store_true", help="disable flips, shifts and intensity jitter")
    p.add_argument(
        "--device", default=None, help="auto, cpu or cuda[:N] (default: CBCTQA_DEVICE, else auto)"
    )
    p.add_argument(
        "--heldout", type=Path, default=None,
        help="independent cohort to evaluate after training; its table goes into the card",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def command_line(args: argparse.Namespace) -> str:
    """The canonical, complete command line equivalent to ``args`` (recorded in the card)."""
    parts = [
        "cbctqa", "train",
        "--cohort", str(args.cohort), "--out", str(args.out),
        "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--val-fraction", str(args.val_fraction), "--batch-size", str(args.batch_size),
        "--patience", str(args.patience), "--lr", str(args.lr), "--threads", str(args.threads),
    ]
    if args.slices_per_volume is not None:
        parts += ["--slices-per-volume", str(args.slices_per_volume)]
    if args.no_augment:
        parts.append("--no-augment")
    if args.device is not None:
        parts += ["--device", str(args.device)]
    if args.heldout is not None:
        parts += ["--heldout", str(args.heldout)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from qa_core.errors import TrainingError
    from qa_core.model import select_device
    from qa_core.training import TrainingConfig, train_from_cohort

    if not args.cohort.is_dir():
        raise TrainingError(
            f"cohort folder {args.cohort} does not exist. Fix: create one with "
            "`cbctqa synth --out DIR` or pass a folder with sessions/<label>/DICOM and ratings.csv."
        )
    device = select_device(args.device)
    if device.type == "cpu":
        if args.threads < 1:
            raise TrainingError(f"--threads must be >= 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    config = TrainingConfig(
        epochs=args.epochs,
        seed=args.seed,
        val_fraction=args.val_fraction,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        augment=not args.no_augment,
        slices_per_volume=args.slices_per_volume,
    )
    result = train_from_cohort(
        args.cohort,
        args.out,
        config,
        device=device,
        command=command_line(args),
        heldout_dir=args.heldout,
        progress=not args.quiet,
    )
    print(
        f"trained {len(result.train_labels)} volumes, validated on {len(result.val_labels)}; "
        f"best epoch {result.best_epoch}/{len(result.history)} on {result.device} in {result.wall_s:.0f} s"
    )
    print("validation (volume means of slice predictions vs consensus):")
    print(result.validation.table())
    if "heldout" in result.card:
        print(f"held-out cohort {args.heldout}:")
        for cat, m in result.card["heldout"]["metrics"].items():
            print(f"  {cat:14s} rho={m['spearman_rho']}  p={m['spearman_p']}  MAE={m['mae']}")
    print(f"wrote {args.out} (sha256 {result.card['sha256']}) and its model card")
    return 0
