"""Retry policy of the gateway: exponential backoff with bounded jitter.

What is retried: connection failures (refused, reset, dropped without an answer, read
time-outs) and HTTP 5xx answers except 501 and 505 (which will not change on retry).
What is never retried: every 4xx, including 401/403/404/409; and a 2xx answer with an
unreadable body. Every request the gateway sends is idempotent (PUT by label, file PUT
with ``overwrite=true``, GET, search POST), so a retry after a lost answer cannot
duplicate anything.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["NON_RETRYABLE_5XX", "RetryPolicy", "is_retryable_status"]

#: 5xx statuses that mean "this server will never do that"; retrying cannot help.
NON_RETRYABLE_5XX = frozenset({501, 505})


def is_retryable_status(status: int) -> bool:
    """``True`` for 5xx answers worth retrying (all but 501 and 505); ``False`` for the rest."""
    return 500 <= status <= 599 and status not in NON_RETRYABLE_5XX


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failed request.

    Attributes
    ----------
    retries:
        Extra attempts after the first (0 disables retrying). At most ``retries + 1``
        requests are sent for one call.
    backoff:
        Delay before the first retry, seconds. Retry ``k`` (0-based) waits about
        ``backoff * 2**k`` seconds.
    max_backoff:
        Upper bound of any single delay, seconds (also bounds a server's ``Retry-After``).
    jitter:
        Fraction in [0, 1]: each delay is drawn uniformly from
        ``[(1 - jitter) * d, d]`` where ``d`` is the capped exponential delay, so that
        workers that failed together do not retry together.
    """

    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 10.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"RetryPolicy.retries is {self.retries!r}; expected an integer >= 0")
        if not (math.isfinite(self.backoff) and self.backoff >= 0):
            raise ValueError(f"RetryPolicy.backoff is {self.backoff!r}; expected seconds >= 0")
        if not (math.isfinite(self.max_backoff) and self.max_backoff >= self.backoff):
            raise ValueError(
                f"RetryPolicy.max_backoff is {self.max_backoff!r}; expected seconds >= backoff ({self.backoff})"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(
                f"RetryPolicy.jitter is {self.jitter!r}; expected a fraction in [0, 1]"
            )

    @property
    def max_attempts(self) -> int:
        """Total attempts allowed for one call (first try plus retries)."""
        return self.retries + 1

    def delay(
        self, retry_index: int, rng: random.Random, retry_after: float | None = None
    ) -> float:
        """Seconds to wait before retry ``retry_index`` (0-based).

        Parameters
        ----------
        retry_index:
            0 before the first retry, 1 before the second, ...
        rng:
            Source of jitter (one per gateway; seed it for reproducible tests).
        retry_after:
            The server's ``Retry-After`` in seconds, if it sent one; honoured up to
            ``max_backoff``.
        """
        base = min(self.max_backoff, self.backoff * (2.0**retry_index))
        wait = base * (1.0 - self.jitter * rng.random())
        if retry_after is not None and math.isfinite(retry_after) and retry_after > wait:
            wait = min(self.max_backoff, retry_after)
        return max(0.0, wait)
