"""Settings of one application instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .auth import SecuritySettings
from .faults import FaultConfig
from .resources import ZipLimits

__all__ = ["AppConfig"]


@dataclass(frozen=True)
class AppConfig:
    """Settings of one server instance (see :class:`xnat_plugin.server.ServerConfig`)."""

    data_dir: Path
    admin_user: str
    admin_password: str
    database_url: str | None = None
    schema_dirs: tuple[Path, ...] = ()
    faults: FaultConfig = field(default_factory=FaultConfig)
    zip_limits: ZipLimits = field(default_factory=ZipLimits)
    max_body_bytes: int = 8 * 1024**3
    max_buffered_body_bytes: int = 1 << 30
    site_id: str = "XNAT"
    strict: bool = False
    security: SecuritySettings = field(default_factory=SecuritySettings)
