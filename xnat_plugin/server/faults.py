"""Fault injection for the local XNAT server (tests of retries and timeouts); off by default.

Random faults: per request whose path matches ``path_regex`` (all paths when None): first wait
``latency_ms``; then, with probability ``drop_rate``, close the connection without an answer;
else, with probability ``error_rate``, answer ``503 Service Unavailable``. Draws come from one
``numpy``-free seeded :class:`random.Random` behind a lock, so a run with the same seed and the
same request order injects the same faults.

Scripted faults (:class:`ScriptedFault`, ``FaultConfig.scripted``): deterministic misbehaviour
for the first ``times`` requests matching a method and a path, for what the server otherwise
never does but a real XNAT (or what stands in front of it) can:

* answer a given status, body, content type and headers instead of handling the request: a 409
  from a racing create, any other 4xx, a 503 with ``Retry-After``, an HTML login page from a
  single-sign-on proxy with status 200, a truncated or malformed JSON document;
* handle the request, then damage the body of the answer (``corrupt``): a truncated download,
  flipped bytes (a CRC error), or the zip re-packed with deflate as XNAT sends it and then
  flipped (a broken deflate stream);
* handle the request and, when it created an object (201), create a second one with the same
  label, as a server that loses a create race does (``duplicate``).
"""

from __future__ import annotations

import io
import random
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from qa_core.errors import ConfigurationError

if TYPE_CHECKING:
    from .wire import Response

__all__ = ["CORRUPTIONS", "FaultConfig", "FaultDecision", "FaultInjector", "ScriptedFault"]

#: Ways :class:`ScriptedFault` can damage an answer's body.
CORRUPTIONS = ("truncate", "flip", "deflate-flip")


class FaultDecision(Enum):
    """What to do with one request."""

    PASS = "pass"
    DROP = "drop"
    ERROR = "error"


@dataclass(frozen=True)
class ScriptedFault:
    """One deterministic fault for requests matching ``method`` and ``path_regex``.

    Attributes
    ----------
    path_regex : str
        Request paths it applies to (``re.search`` on the path, no query string).
    method : str or None
        HTTP method it applies to; None for every method.
    times : int or None
        How many matching requests it affects (the first ones); None for all of them.
    status : int or None
        Answer this status (with ``body``, ``content_type`` and ``headers``) instead of
        handling the request. None: the request is handled normally.
    body, content_type, headers
        The answer's body, content type and extra headers when ``status`` is set.
    corrupt : str or None
        Handle the request, then damage the body of its answer: ``"truncate"`` (keep the
        first half), ``"flip"`` (invert 64 bytes in the middle) or ``"deflate-flip"`` (re-pack
        a zip with deflate compression, then flip bytes inside the first member's data).
    duplicate : bool
        Handle the request; if it created an object (status 201), store a second object with
        the same label, type, parent and fields under a new accession number.
    """

    path_regex: str
    method: str | None = None
    times: int | None = 1
    status: int | None = None
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    corrupt: str | None = None
    duplicate: bool = False

    def __post_init__(self) -> None:
        try:
            re.compile(self.path_regex)
        except re.error as exc:
            raise ConfigurationError(
                f"scripted fault path {self.path_regex!r} is not a valid regular expression: {exc}"
            ) from exc
        if self.times is not None and self.times < 1:
            raise ConfigurationError(f"scripted fault times must be >= 1 or None, got {self.times}")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ConfigurationError(f"scripted fault status {self.status} is not an HTTP status")
        if self.corrupt is not None and self.corrupt not in CORRUPTIONS:
            raise ConfigurationError(
                f"scripted fault corrupt={self.corrupt!r}; expected one of {', '.join(CORRUPTIONS)}"
            )
        if sum((self.status is not None, self.corrupt is not None, self.duplicate)) != 1:
            raise ConfigurationError(
                "a scripted fault does exactly one thing: set status, corrupt or duplicate"
            )

    def matches(self, method: str, path: str) -> bool:
        """Whether a request is one this fault is for (ignoring ``times``)."""
        return (self.method is None or self.method == method) and re.search(
            self.path_regex, path
        ) is not None


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
    scripted : tuple of ScriptedFault
        Deterministic faults, tried in order; the first that matches a request (and has
        uses left) applies to it.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    path_regex: str | None = None
    seed: int = 0
    scripted: tuple[ScriptedFault, ...] = field(default_factory=tuple)

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
        return (self.latency_ms > 0 or self.error_rate > 0 or self.drop_rate > 0
                or bool(self.scripted))


class FaultInjector:
    """Applies a :class:`FaultConfig` to requests; thread-safe."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._pattern = re.compile(config.path_regex) if config.path_regex else None
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.counts = {d: 0 for d in FaultDecision}
        self._uses = [0] * len(config.scripted)
        #: How many requests each scripted fault has affected, in ``config.scripted`` order.
        self.scripted_counts = self._uses

    def scripted(self, method: str, path: str) -> ScriptedFault | None:
        """The scripted fault that applies to this request, if any (and count its use)."""
        with self._lock:
            for index, fault in enumerate(self.config.scripted):
                if fault.matches(method, path) and (
                    fault.times is None or self._uses[index] < fault.times
                ):
                    self._uses[index] += 1
                    return fault
        return None

    def decide(self, path: str) -> FaultDecision:
        """Sleep the configured latency and decide the fate of a request to ``path``."""
        cfg = self.config
        random_faults = cfg.latency_ms > 0 or cfg.error_rate > 0 or cfg.drop_rate > 0
        if not random_faults or (self._pattern is not None and not self._pattern.search(path)):
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


def scripted_answer(fault: ScriptedFault) -> Response:
    """The answer a status-setting :class:`ScriptedFault` gives instead of the real one."""
    from .wire import Response

    assert fault.status is not None
    return Response(status=fault.status, body=fault.body, content_type=fault.content_type,
                    headers=list(fault.headers))


def damage(fault: ScriptedFault, response: Response) -> Response:
    """Apply a ``corrupt`` :class:`ScriptedFault` to a real answer (read whole into memory)."""
    if response.file is not None:
        body = response.file.read_bytes()
        if response.delete_file:
            response.file.unlink(missing_ok=True)
        response = replace(response, body=body, file=None, delete_file=False)
    body = response.body
    if fault.corrupt == "truncate":
        body = body[: len(body) // 2]
    elif fault.corrupt == "flip":
        body = _flip(body, len(body) // 2)
    elif fault.corrupt == "deflate-flip":
        packed = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(body)) as source, zipfile.ZipFile(
            packed, "w", compression=zipfile.ZIP_DEFLATED
        ) as target:
            for info in source.infolist():
                target.writestr(info.filename, source.read(info))
        body = packed.getvalue()
        with zipfile.ZipFile(io.BytesIO(body)) as repacked:
            first = repacked.infolist()[0]
        # the start of the first member's compressed data (its first deflate block header)
        start = first.header_offset + 30 + len(first.filename.encode()) + len(first.extra)
        body = _flip(body, start, n=min(64, max(1, first.compress_size // 2)))
    return replace(response, body=body)


def _flip(body: bytes, at: int, n: int = 64) -> bytes:
    lo = max(0, min(at, len(body) - n))
    return body[:lo] + bytes(b ^ 0xFF for b in body[lo : lo + n]) + body[lo + n :]


def duplicate_created(app: object, response: Response) -> None:
    """After a create (201, body = the new accession number), store a same-label twin."""
    if response.status != 201:
        return
    from .store import now_text

    new_id = response.body.decode("utf-8", "replace").strip()
    store = app.store  # type: ignore[attr-defined]
    site = app.config.site_id  # type: ignore[attr-defined]
    with store.transaction() as tx:
        matches = [o for o in tx.objects(ref=new_id) if o.id == new_id]
        if not matches:
            return
        original = matches[0]
        twin = replace(original, pk=0, id=f"{site}_E{tx.next_id('experiment'):05d}",
                       insert_date=now_text(), last_modified=now_text())
        tx.insert_object(twin)
