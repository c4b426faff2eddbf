"""Fault injection for the local XNAT server (tests of retries and timeouts); off by default.

Per request whose path matches ``path_regex`` (all paths when None): first wait
``latency_ms``; then, with probability ``drop_rate``, close the connection without an answer;
else, with probability ``error_rate``, answer ``503 Service Unavailable``. Draws come from one
``numpy``-free seeded :class:`random.Random` behind a lock, so a run with the same seed and the
same request order injects the same faults.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum

from qa_core.errors import ConfigurationError

__all__ = ["FaultConfig", "FaultDecision", "FaultInjector"]


class FaultDecision(Enum):
    """What to do with one request."""

    PASS = "pass"
    DROP = "drop"
    ERROR = "error"


@dataclass(frozen=True)
class FaultConfig:
    """Fault-injection settings (all off by default).

    Attributes
    ----------
    latency_ms : float
        Delay added before each matching request is handled, in milliseconds.
    error_rate : float
        Share (0..1) of matching requests answered 503.
    drop_rate : float
        Share (0..1) of matching requests whose connection is closed without an answer.
    path_regex : str or None
        Only request paths matching this regular expression (``re.search``) are affected.
    seed : int
        Seed of the random draws.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    path_regex: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ConfigurationError(f"--fault-latency-ms must be >= 0, got {self.latency_ms}")
        for name, value in (("--fault-error-rate", self.error_rate),
                            ("--fault-drop-rate", self.drop_rate)):
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"{name} must be between 0 and 1, got {value}")
        if self.path_regex is not None:
            try:
                re.compile(self.path_regex)
            except re.error as exc:
                raise ConfigurationError(
                    f"--fault-path {self.path_regex!r} is not a valid regular expression: {exc}"
                ) from exc

    @property
    def active(self) -> bool:
        """True when any fault is configured."""
        return self.latency_ms > 0 or self.error_rate > 0 or self.drop_rate > 0


class FaultInjector:
    """Applies a :class:`FaultConfig` to requests; thread-safe."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._pattern = re.compile(config.path_regex) if config.path_regex else None
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.counts = {d: 0 for d in FaultDecision}

    def decide(self, path: str) -> FaultDecision:
        """Sleep the configured latency and decide the fate of a request to ``path``."""
        cfg = self.config
        if not cfg.active or (self._pattern is not None and not self._pattern.search(path)):
            return FaultDecision.PASS
        if cfg.latency_ms > 0:
            time.sleep(cfg.latency_ms / 1000.0)
        with self._lock:
            draw_drop = self._rng.random()
            draw_error = self._rng.random()
            if draw_drop < cfg.drop_rate:
                decision = FaultDecision.DROP
            elif draw_error < cfg.error_rate:
                decision = FaultDecision.ERROR
            else:
                decision = FaultDecision.PASS
            self.counts[decision] += 1
        return decision
