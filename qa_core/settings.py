"""Typed settings, read from ``CBCTQA_*`` environment variables.

Each field is documented; a bad value fails loudly with the variable's name.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qa_core.errors import ConfigurationError

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Runtime settings of the CBCT QA monitor (environment prefix ``CBCTQA_``)."""

    model_config = SettingsConfigDict(env_prefix="CBCTQA_", extra="ignore", frozen=True)

    max_slices: int = Field(2048, ge=1)
    """Largest number of slices ``load_series`` accepts (guards memory against hostile input)."""

    max_pixels: int = Field(1024 * 1024, ge=1)
    """Largest rows x columns per slice ``load_series`` accepts."""

    spacing_tolerance: float = Field(0.05, gt=0, lt=1)
    """Relative tolerance on slice spacing before a series counts as non-uniform."""

    data_dir: Path = Path("~/.cbctqa").expanduser()
    """Where the product keeps its state (SQLite databases, downloads, caches)."""

    model_path: Path | None = None
    """Checkpoint to score with; ``None`` uses the shipped default model."""

    device: str = "auto"
    """Torch device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``."""

    batch_size: int | None = Field(None, ge=1, le=4096)
    """Slices per batch for prediction and Grad-CAM; unset: the measured default of the device
    (``qa_core.attribution.default_batch_size``: 32 on CPU, 128 on CUDA)."""

    cam_method: str = "gradcam"
    """Default CAM method: gradcam, gradcam++, xgradcam, hirescam or layercam."""

    roi_aliases: dict[str, str] = Field(default_factory=dict)
    """RTSTRUCT ROI names beyond TG-263 and its common aliases, as JSON: ROI name -> TG-263
    name, category or ``body`` (e.g. ``{"PAROTIDE_SX": "Parotid_L"}``; ``""`` drops a name).
    Names compare case- and punctuation-insensitively (``qa_core.rtstruct.roi_table``)."""

    localisation_min_share: float = Field(0.5, ge=0, le=1)
    """Localisation limit when contours are present: a map that puts less than this share of its
    energy inside the contoured organ (``ae_in_region``, 0-1) falls mostly outside that organ
    (``cbctqa score --rtstruct``: ``qa_core.localisation.localisation_flags``); the product's
    alerts flag it only where the model usually localises on that organ, else maps atypical for
    the model (``qa_core.localisation.cohort_localisation_flags``)."""

    log_level: str = "INFO"
    """Logging level name (DEBUG, INFO, WARNING, ERROR)."""

    database_url: str | None = None
    """Production mode: PostgreSQL URL for the local XNAT-compatible server; ``None`` = SQLite."""

    poll_interval_s: float = Field(60.0, gt=0)
    """Seconds between discovery passes of ``cbctqa serve`` (the safety net behind push events)."""

    prefect_port: int = Field(4200, ge=1, le=65535)
    """Port of the local Prefect server started on 127.0.0.1 when ``PREFECT_API_URL`` is unset."""

    prefect_busy_retry_s: float = Field(5.0, ge=0.0, le=120.0)
    """Seconds the local Prefect server replays a request that its SQLite database answered
    "busy" (``503``) before passing the 503 on (Prefect's clients wait 2 s and more to retry)."""

    max_attempts: int = Field(3, ge=1, le=20)
    """Scoring attempts per session and model version for transient trouble (XNAT 5xx, dropped
    connections, timeouts), counted over runs and discovery passes; then ``failed``."""

    scoring_concurrency: int = Field(2, ge=1, le=1024)
    """Slots of the Prefect global concurrency limit ``cbctqa-scoring``: sessions scored at the
    same time by all workers together (protects the machines and XNAT from a burst)."""

    session_timeout_s: float = Field(1800.0, gt=0)
    """Timeout of one ``score_session`` flow run in seconds; a run past it counts as one
    transient attempt."""

    projects: str = ""
    """Comma-separated XNAT project IDs ``cbctqa serve`` watches when no ``--project`` is given."""

    dashboard_ttl_s: float = Field(300.0, gt=0)
    """Seconds the dashboard reuses a project's bulk read of XNAT before reading it again."""

    dashboard_resamples: int = Field(1999, ge=99, le=100_000)
    """Permutations and bootstrap resamples behind the dashboard's p values and intervals."""

    @field_validator("log_level")
    @classmethod
    def _level_known(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v

    @field_validator("device")
    @classmethod
    def _device_known(cls, v: str) -> str:
        if v not in {"auto", "cpu"} and not v.startswith("cuda"):
            raise ValueError("must be 'auto', 'cpu' or 'cuda[:N]'")
        return v


def get_settings() -> Settings:
    """Read settings from the environment, converting validation failures to
    :class:`~qa_core.errors.ConfigurationError` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            name = "CBCTQA_" + str(err["loc"][0]).upper() if err["loc"] else "CBCTQA_*"
            parts.append(f"{name}: {err['msg']}")
        raise ConfigurationError("invalid setting(s): " + "; ".join(parts)) from exc
