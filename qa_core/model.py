"""The quality CNN: axial CBCT slice -> five Likert scores, plus checked loading and saving.

Architecture (``likert-cnn-attnpool-v1``)
-----------------------------------------
Input ``(B, 1, 128, 128)``: one axial slice, HU window ``(-500, 1500)`` mapped to ``[-1, 1]``
(see :mod:`qa_core.preprocess`). The window keeps what raters judge: the soft-tissue display
window (-160, 240) HU of the gland, larynx and overall categories and the bone window up to
about 1500 HU for the mandible; air below -500 HU carries no quality information for these
categories and is clipped. 128 x 128 (2x below the usual 256 x 256 CBCT matrix over a 280 mm
field, about 2.2 mm pixels) keeps noise texture, streaks, blur and the organs visible while a
CPU can train on a 100-volume cohort in minutes.

``features`` (four conv blocks, 3 x 3 conv -> BatchNorm -> ReLU)::

    features.0   1 -> w0   128 x 128, then 2 x 2 max-pool -> 64 x 64
    features.1  w0 -> w1    64 x 64,  then max-pool        -> 32 x 32
    features.2  w1 -> w2    32 x 32,  then max-pool        -> 16 x 16
    features.3  w2 -> w3    16 x 16   (no pool)            <- Grad-CAM target layer

``head``: per-category spatial attention pooling, then a per-category MLP::

    logits_k(i, j) = <v_k, A(i, j)> + P_k(i, j)        (1 x 1 conv + learned positional prior)
    a_k = softmax_ij(logits_k)                           (where category k looks)
    g_k = sum_ij a_k(i, j) A(i, j)                       (w3 features pooled for category k)
    z_k = u_k . ReLU(W_k g_k + b_k) + c_k                (small MLP per category)
    y_k = 1 + 4 sigmoid(z_k)                             (Likert score in (1, 5))

Why this head: with global-average-pool -> linear, the Grad-CAM weights are the linear weights
divided by h*w and the pre-ReLU map sums exactly to ``y_k - bias_k``, so Attribution Energy
(AE) would restate the prediction. Here the pooling weights depend on the image and on a
learned per-category positional prior (the parotids, submandibular glands, larynx and mandible
sit in different parts of the axial slice), the MLP is non-linear and the sigmoid squashes the
output, so ``sum_ij`` of the map is no longer an affine function of ``y_k``. How much AE still
tracks the prediction is measured and reported in ``qa_core/models/MODEL_CARD.md``.

Checkpoints
-----------
A checkpoint ``NAME.pt`` is a ``torch.save`` of plain data (``weights_only=True`` loadable): the
state dict plus its ``contract`` (categories, input size, channels, HU window, target layer,
architecture). Next to it, ``NAME.card.json`` is the model card: the same contract, the
checkpoint's sha256, training data and seed, the exact command, validation metrics and
versions. :func:`load_model` refuses a checkpoint whose card, contract or checksum disagree.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from qa_core.categories import CATEGORIES, LIKERT_MAX, LIKERT_MIN
from qa_core.errors import ConfigurationError, ModelContractError, ModelNotFoundError
from qa_core.preprocess import preprocess_volume
from qa_core.settings import get_settings
from qa_core.volume import Volume

__all__ = [
    "ARCHITECTURE",
    "CHECKPOINT_FORMAT",
    "DEFAULT_MODEL_PATH",
    "HU_WINDOW",
    "INPUT_SIZE",
    "IN_CHANNELS",
    "TARGET_LAYER_NAME",
    "LikertCNN",
    "card_path_for",
    "load_model",
    "predict_volume",
    "save_model",
    "select_device",
    "sha256_file",
]

#: Name of the architecture this module implements (recorded in every card).
ARCHITECTURE: Final[str] = "likert-cnn-attnpool-v1"
#: Format tag of the checkpoint dictionary.
CHECKPOINT_FORMAT: Final[str] = "cbctqa-likert-cnn/1"
#: Pixels per side of the model input.
INPUT_SIZE: Final[int] = 128
#: Input channels (one HU-windowed axial slice).
IN_CHANNELS: Final[int] = 1
#: HU window (low, high) applied before normalising to [-1, 1].
HU_WINDOW: Final[tuple[float, float]] = (-500.0, 1500.0)
#: Dotted name of the Grad-CAM target layer (output of the last conv block, 16 x 16).
TARGET_LAYER_NAME: Final[str] = "features.3"
#: Default channel widths of the four conv blocks.
DEFAULT_WIDTHS: Final[tuple[int, int, int, int]] = (16, 32, 64, 64)
#: Default hidden width of each category's MLP.
DEFAULT_HIDDEN: Final[int] = 32
#: The shipped default checkpoint.
DEFAULT_MODEL_PATH: Final[Path] = Path(__file__).resolve().parent / "models" / "default.pt"

#: Spatial size of the target layer's output for INPUT_SIZE (three 2 x 2 pools).
_FEATURE_SIZE: Final[int] = INPUT_SIZE // 8


def _conv_block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class AttentionPoolHead(nn.Module):
    """Per-category spatial attention pooling followed by a per-category MLP.

    Parameters
    ----------
    channels:
        Channels ``C`` of the feature map.
    spatial:
        Side ``h = w`` of the feature map (size of the learned positional prior).
    n_outputs:
        Number of categories ``K``.
    hidden:
        Hidden units of each category's MLP.
    """

    def __init__(self, channels: int, spatial: int, n_outputs: int, hidden: int) -> None:
        super().__init__()
        self.attn = nn.Conv2d(channels, n_outputs, kernel_size=1)
        self.pos_prior = nn.Parameter(torch.zeros(n_outputs, spatial, spatial))
        bound1 = 1.0 / math.sqrt(channels)
        bound2 = 1.0 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(n_outputs, channels, hidden).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.empty(n_outputs, hidden).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(n_outputs, hidden).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.zeros(n_outputs))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """Map features ``(B, C, h, w)`` to raw logits ``(B, K)``."""
        logits = self.attn(a) + self.pos_prior  # (B, K, h, w)
        weights = torch.softmax(logits.flatten(2), dim=-1)  # (B, K, h*w)
        pooled = torch.einsum("bkn,bcn->bkc", weights, a.flatten(2))  # (B, K, C)
        hidden = torch.relu(torch.einsum("bkc,kch->bkh", pooled, self.w1) + self.b1)
        return (hidden * self.w2).sum(-1) + self.b2


class LikertCNN(nn.Module):
    """Small CNN mapping preprocessed axial slices to five Likert scores.

    Parameters
    ----------
    widths:
        Output channels of the four conv blocks ``features.0 .. features.3``.
    hidden:
        Hidden units of each category's MLP in the head.

    Attributes
    ----------
    input_size:
        ``H = W`` of the input, 128.
    hu_window:
        ``(low, high)`` HU window used by :meth:`preprocess`.
    target_layer:
        ``features.3``: the last conv block; its output ``(B, w3, 16, 16)`` is what Grad-CAM reads.
    target_layer_name:
        ``"features.3"``.
    categories:
        Output order, equal to :data:`qa_core.categories.CATEGORIES`.
    card:
        The model card loaded with the checkpoint (empty for a freshly built model).
    """

    def __init__(
        self, widths: Sequence[int] = DEFAULT_WIDTHS, hidden: int = DEFAULT_HIDDEN
    ) -> None:
        super().__init__()
        w = tuple(int(c) for c in widths)
        if len(w) != 4 or min(w) < 1 or hidden < 1:
            raise ModelContractError(
                f"LikertCNN needs four positive block widths and hidden >= 1; got widths={widths!r}, "
                f"hidden={hidden!r}"
            )
        self.widths: tuple[int, ...] = w
        self.hidden: int = int(hidden)
        self.input_size: int = INPUT_SIZE
        self.in_channels: int = IN_CHANNELS
        self.hu_window: tuple[float, float] = HU_WINDOW
        self.categories: tuple[str, ...] = tuple(CATEGORIES)
        self.target_layer_name: str = TARGET_LAYER_NAME
        self.card: dict[str, Any] = {}
        self.features = nn.Sequential(
            _conv_block(IN_CHANNELS, w[0], pool=True),
            _conv_block(w[0], w[1], pool=True),
            _conv_block(w[1], w[2], pool=True),
            _conv_block(w[2], w[3], pool=False),
        )
        self.head = AttentionPoolHead(w[3], _FEATURE_SIZE, len(CATEGORIES), self.hidden)

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output Grad-CAM reads (``features.3``)."""
        return self.get_submodule(self.target_layer_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score slices.

        Parameters
        ----------
        x:
            float32 ``(B, 1, 128, 128)``, preprocessed (see :meth:`preprocess`).

        Returns
        -------
        torch.Tensor
            float32 ``(B, 5)``: Likert scores in ``(1, 5)``, columns in ``CATEGORIES`` order.
        """
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS or x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ModelContractError(
                f"LikertCNN expects input (B, {IN_CHANNELS}, {INPUT_SIZE}, {INPUT_SIZE}); got "
                f"{tuple(x.shape)}. Fix: run model.preprocess(volume) first."
            )
        z = self.head(self.features(x))
        return LIKERT_MIN + (LIKERT_MAX - LIKERT_MIN) * torch.sigmoid(z)

    def preprocess(self, volume: Volume) -> torch.Tensor:
        """HU-window, square-pad, resample to 128 x 128 and normalise every axial slice.

        Returns
        -------
        torch.Tensor
            float32 ``(N, 1, 128, 128)`` on CPU, values in ``[-1, 1]``.
        """
        return preprocess_volume(volume, size=self.input_size, hu_window=self.hu_window)

    def contract(self) -> dict[str, Any]:
        """The fields a checkpoint and its card must agree on (JSON-serialisable)."""
        return {
            "architecture": {"name": ARCHITECTURE, "widths": list(self.widths), "hidden": self.hidden},
            "categories": list(self.categories),
            "hu_window": [float(v) for v in self.hu_window],
            "in_channels": self.in_channels,
            "input_size": self.input_size,
            "target_layer": self.target_layer_name,
        }


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Choose the torch device.

    Parameters
    ----------
    device:
        ``None`` uses the ``CBCTQA_DEVICE`` setting; ``"auto"`` means CUDA when available,
        else CPU; otherwise ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``).

    Raises
    ------
    ConfigurationError
        The name is not a device, or CUDA was asked for and is not available.
    """
    if device is None:
        device = get_settings().device
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(
            f"unknown torch device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'"
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"device {device!r} requested but CUDA is not available here; use 'cpu' or 'auto' "
                "(CBCTQA_DEVICE or --device)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif dev.type != "cpu":
        raise ConfigurationError(f"unsupported torch device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'")
    return dev


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path_for(checkpoint: str | Path) -> Path:
    """The model card next to a checkpoint: ``<dir>/<stem>.card.json``."""
    p = Path(checkpoint)
    return p.with_name(p.stem + ".card.json")


def _expected_contract(architecture: Any, where: str) -> dict[str, Any]:
    """The contract of this code's architecture, with the widths the card declares."""
    if not isinstance(architecture, dict) or architecture.get("name") != ARCHITECTURE:
        found = architecture.get("name") if isinstance(architecture, dict) else architecture
        raise ModelContractError(
            f"{where}: field 'architecture.name' is {found!r}, expected {ARCHITECTURE!r}. "
            "Fix: load it with the cbctqa version that trained it, or retrain with `cbctqa train`."
        )
    try:
        model = LikertCNN(
            widths=[int(c) for c in architecture.get("widths", DEFAULT_WIDTHS)],
            hidden=int(architecture.get("hidden", DEFAULT_HIDDEN)),
        )
    except (TypeError, ValueError) as exc:
        raise ModelContractError(
            f"{where}: field 'architecture' {architecture!r} does not describe a valid "
            f"{ARCHITECTURE} ({exc}). Fix: retrain with `cbctqa train`."
        ) from exc
    return model.contract()


def _compare(found: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    fixes = {
        "categories": "the checkpoint was trained for other categories or another order; "
        f"retrain with `cbctqa train` so the outputs follow {list(CATEGORIES)}",
    }
    for key in ("categories", "input_size", "in_channels", "hu_window", "target_layer", "architecture"):
        if key not in found:
            raise ModelContractError(
                f"{where}: field {key!r} is missing (expected {expected[key]!r}). "
                "Fix: write the card with qa_core.model.save_model or `cbctqa train`."
            )
        got = found[key]
        if key == "hu_window" and isinstance(got, list | tuple):
            got = [float(v) for v in got]
        if got != expected[key]:
            fix = fixes.get(
                key,
                f"this architecture ({ARCHITECTURE}) is fixed to {key}={expected[key]!r}; "
                "retrain with `cbctqa train` or use the code version that wrote this checkpoint",
            )
            raise ModelContractError(
                f"{where}: field {key!r} is {got!r}, expected {expected[key]!r}. Fix: {fix}."
            )


def read_card(checkpoint: str | Path) -> dict[str, Any]:
    """Read and parse the model card next to ``checkpoint``."""
    card_path = card_path_for(checkpoint)
    if not card_path.is_file():
        raise ModelContractError(
            f"model card {card_path} not found for checkpoint {checkpoint}. Fix: keep "
            f"'{card_path.name}' next to the checkpoint (written by `cbctqa train`)."
        )
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelContractError(
            f"model card {card_path} is not readable JSON ({exc}). Fix: restore it from the "
            "training output."
        ) from exc
    if not isinstance(card, dict):
        raise ModelContractError(f"model card {card_path} must hold a JSON object; got {type(card).__name__}")
    return card


def load_model(
    path: str | Path | None = None, *, device: str | torch.device | None = None
) -> LikertCNN:
    """Load a checked quality CNN.

    Parameters
    ----------
    path:
        Checkpoint (``.pt``). ``None`` uses ``CBCTQA_MODEL_PATH`` when set, else the shipped
        default ``qa_core/models/default.pt``.
    device:
        Where to put the model; ``None`` follows ``CBCTQA_DEVICE`` (default ``auto``: CUDA when
        available, else CPU). See :func:`select_device`.

    Returns
    -------
    LikertCNN
        In eval mode, on the chosen device, with ``.card`` holding the model card.

    Raises
    ------
    ModelNotFoundError
        The checkpoint file does not exist.
    ModelContractError
        The card is missing or unreadable, the checkpoint's sha256 differs from the card's, or
        the card or checkpoint disagree with the architecture's contract (categories and their
        order, input size, channels, HU window, target layer, architecture), or the weights do
        not fit the architecture.
    """
    if path is None:
        configured = get_settings().model_path
        path = configured if configured is not None else DEFAULT_MODEL_PATH
    ckpt = Path(path).expanduser()
    if not ckpt.is_file():
        raise ModelNotFoundError(
            f"checkpoint {ckpt} not found. Fix: pass an existing .pt file, unset CBCTQA_MODEL_PATH "
            "to use the shipped default, or train one with `cbctqa train`."
        )
    card = read_card(ckpt)
    card_file = card_path_for(ckpt)
    digest = sha256_file(ckpt)
    if card.get("sha256") != digest:
        raise ModelContractError(
            f"checkpoint {ckpt}: field 'sha256' in {card_file.name} is {card.get('sha256')!r}, "
            f"but the file's sha256 is {digest!r}. The checkpoint or its card was replaced or "
            "corrupted. Fix: restore the matching pair, or retrain with `cbctqa train`."
        )
    expected = _expected_contract(card.get("architecture"), f"model card {card_file}")
    _compare(card, expected, f"model card {card_file}")
    try:
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise ModelContractError(
            f"checkpoint {ckpt} cannot be read as a weights-only torch file ({exc}). "
            "Fix: restore it or retrain with `cbctqa train`."
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        fmt = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ModelContractError(
            f"checkpoint {ckpt}: field 'format' is {fmt!r}, expected {CHECKPOINT_FORMAT!r}. "
            "Fix: save checkpoints with qa_core.model.save_model or `cbctqa train`."
        )
    contract = blob.get("contract")
    if not isinstance(contract, dict):
        raise ModelContractError(f"checkpoint {ckpt}: 'contract' is missing; retrain with `cbctqa train`")
    _compare(contract, expected, f"checkpoint {ckpt}")
    arch = card["architecture"]
    model = LikertCNN(widths=arch["widths"], hidden=arch["hidden"])
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelContractError(
            f"checkpoint {ckpt}: weights do not fit {ARCHITECTURE} with widths {arch['widths']} "
            f"({exc}). Fix: retrain with `cbctqa train`."
        ) from exc
    model.card = card
    model.eval()
    return model.to(select_device(device))


def save_model(model: LikertCNN, path: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``path`` (weights + contract) and ``<stem>.card.json`` next to it.

    Parameters
    ----------
    model:
        The trained model (any device; weights are saved on CPU).
    path:
        Destination ``.pt`` file; parent folders are created.
    card:
        Extra card fields (training data, seed, command, metrics, ...). The contract fields and
        ``sha256`` are filled in here and override same-named entries.

    Returns
    -------
    dict
        The card as written (JSON with sorted keys).
    """
    out = Path(path)
    if out.suffix != ".pt":
        raise ModelContractError(f"checkpoint path {out} must end in .pt (the card goes to <stem>.card.json)")
    out.parent.mkdir(parents=True, exist_ok=True)
    contract = model.contract()
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    # Saved through a buffer: torch names the archive after the file, so equal weights written
    # to different file names would otherwise differ in bytes (and sha256).
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "contract": contract, "state_dict": state}, buf)
    out.write_bytes(buf.getvalue())
    full = {**card, **contract, "sha256": sha256_file(out), "checkpoint": out.name}
    card_path_for(out).write_text(json.dumps(full, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return full


@torch.no_grad()
def predict_volume(
    model: LikertCNN, volume: Volume, *, batch_size: int | None = None
) -> npt.NDArray[np.float32]:
    """Per-slice Likert predictions for a volume.

    Parameters
    ----------
    model:
        A :class:`LikertCNN` (its train/eval state is restored afterwards; prediction runs in
        eval mode).
    volume:
        The CBCT volume.
    batch_size:
        Slices per forward pass; ``None`` uses ``CBCTQA_BATCH_SIZE``, else the device's
        measured default (``qa_core.attribution.default_batch_size``).

    Returns
    -------
    numpy.ndarray
        float32 ``(N, 5)``: one row per slice, columns in ``CATEGORIES`` order, values in (1, 5).
    """
    dev = next(model.parameters()).device
    setting = get_settings().batch_size if batch_size is None else int(batch_size)
    if setting is None:
        from qa_core.attribution import default_batch_size  # lazy: attribution imports model

        setting = default_batch_size(dev)
    bs = setting
    if bs < 1:
        raise ModelContractError(f"batch_size must be >= 1; got {batch_size!r}")
    x = model.preprocess(volume)
    was_training = model.training
    model.eval()
    try:
        parts = [model(x[i : i + bs].to(dev)).float().cpu() for i in range(0, x.shape[0], bs)]
    finally:
        model.train(was_training)
    return torch.cat(parts).numpy().astype(np.float32)
