"""Batch latency as a function of rows and padded length, fitted from measurements.

    seconds ≈ c0 + c1·rows + c2·rows·length + c3·rows·length²

The constant is the per-call overhead, the linear terms the per-row and per-token work (embeddings,
projections, feed-forward), the quadratic term attention. Fitted by non-negative least squares from
the warm-up profile and refitted online from real batches, newest observations weighted most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = ("overhead", "per_row", "per_token", "per_token_squared")
#: `efficient_rows` when rows are free: more than any batch limit (callers clip to max_batch_rows).
UNBOUNDED_ROWS = 1 << 20


@dataclass(frozen=True)
class Observation:
    """One measured batch."""

    rows: int
    length: int
    seconds: float


def features(rows: int, length: int) -> tuple[float, float, float, float]:
    return (1.0, float(rows), float(rows * length), float(rows * length * length))


class CostModel:
    """Predicts batch latency; `observe` refines it with real runs."""

    def __init__(self, coefficients: tuple[float, float, float, float] = (1e-3, 0.0, 1e-6, 0.0),
                 *, window: int = 512, refit_every: int = 32) -> None:
        self._coef = coefficients
        self._profile_rows = np.zeros((0, len(FEATURES) + 1))
        # Recent batches as a ring of (features..., seconds) rows: observing one is a row write on the
        # event loop, and a refit reads the ring as it is, without rebuilding arrays from objects.
        self._recent = np.zeros((window, len(FEATURES) + 1))
        self._seen = 0
        self._refit_every = refit_every
        self._since_fit = 0
        # Caches of what follows from the coefficients, emptied by every refit (`per_fit`).
        self._per_fit: list[dict[Any, Any]] = []
        # efficient_rows by (length, efficiency): the scheduler asks it for every waiting row at every
        # decision, and the answer changes only with a refit.
        self._efficient: dict[tuple[int, float], int] = self.per_fit()

    def per_fit(self) -> dict[Any, Any]:
        """An empty cache for values derived from this model's predictions, which it empties whenever it
        is refitted: callers price a shape once per fit instead of on every request or decision."""
        cache: dict[Any, Any] = {}
        self._per_fit.append(cache)
        return cache

    @property
    def coefficients(self) -> dict[str, float]:
        """The fitted coefficients by name (seconds per unit), for inspection."""
        return dict(zip(FEATURES, self._coef, strict=True))

    @property
    def observations(self) -> int:
        return len(self._profile_rows) + min(self._seen, len(self._recent))

    def predict(self, rows: int, length: int) -> float:
        """Expected seconds for a batch of `rows` rows padded to `length` tokens."""
        c0, c1, c2, c3 = self._coef
        tokens = rows * length
        return c0 + c1 * rows + c2 * tokens + c3 * tokens * length

    def efficient_rows(self, length: int, efficiency: float) -> int:
        """Fewest rows for which the per-call overhead is at most (1 - efficiency) of a batch's cost,
        i.e. per-row throughput within `efficiency` of the best this length allows."""
        rows = self._efficient.get((length, efficiency))
        if rows is None:
            rows = self._efficient[(length, efficiency)] = self._efficient_rows(length, efficiency)
        return rows

    def _efficient_rows(self, length: int, efficiency: float) -> int:
        c0, c1, c2, c3 = self._coef
        per_row = c1 + c2 * length + c3 * length * length
        if per_row <= 0:
            # Extra rows cost nothing (a GPU whose batch time is all kernel launches): no batch size
            # reaches the target, so every row is worth adding.
            return UNBOUNDED_ROWS
        return max(1, min(UNBOUNDED_ROWS, math.ceil(c0 * efficiency / ((1.0 - efficiency) * per_row) - 1e-9)))

    def fit_profile(self, observations: list[Observation]) -> None:
        """Replace the start-up profile and refit."""
        self._profile_rows = np.array([(*features(o.rows, o.length), o.seconds) for o in observations],
                                      dtype=float).reshape(-1, len(FEATURES) + 1)
        self._refit()

    def observe(self, rows: int, length: int, seconds: float) -> None:
        """Record a real batch; refits every `refit_every` observations."""
        tokens = rows * length
        self._recent[self._seen % len(self._recent)] = (1.0, rows, tokens, tokens * length, seconds)
        self._seen += 1
        self._since_fit += 1
        if self._since_fit >= self._refit_every:
            self._refit()

    def _refit(self) -> None:
        self._since_fit = 0
        data = np.concatenate([self._profile_rows, self._recent[:min(self._seen, len(self._recent))]])
        if len(data) < len(FEATURES):
            return
        x, y = data[:, :-1], data[:, -1]
        # Fit relative error: small batches matter as much as big ones for deadline decisions.
        weight = 1.0 / np.maximum(y, 1e-6)
        # Recent batches count double: the machine's load changes and the profile ages.
        weight[len(self._profile_rows):] *= 2.0
        self._coef = _nonnegative_least_squares(x * weight[:, None], y * weight)
        for cache in self._per_fit:
            cache.clear()


def _nonnegative_least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Least squares with coefficients clamped at zero by dropping negative ones (tiny active set)."""
    active = list(range(x.shape[1]))
    coef = np.zeros(x.shape[1])
    while active:
        solution, *_ = np.linalg.lstsq(x[:, active], y, rcond=None)
        if (solution >= 0).all():
            coef[active] = solution
            break
        active = [a for a, s in zip(active, solution, strict=True) if s > 0]
    return (float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]))
