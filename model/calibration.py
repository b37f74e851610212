"""Temperature scaling over the catalog, the blend of head and lexical model, the abstain rule."""

from __future__ import annotations

import numpy as np

from radproto.model.errors import ModelError

_LOG_T_RANGE = (-4.0, 4.0)  # temperatures between e^-4 and e^4


def catalog_probabilities(log_probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(log_probs / T) over the catalog (last axis)."""
    if temperature <= 0:
        raise ModelError(f"temperature must be positive, not {temperature}")
    scaled = np.asarray(log_probs, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def nll(log_probs: np.ndarray, label_indices: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under temperature T."""
    scaled = np.asarray(log_probs, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(scaled - top).sum(axis=1)) + top[:, 0]
    picked = scaled[np.arange(scaled.shape[0]), np.asarray(label_indices)]
    return float(np.mean(log_norm - picked))


def fit_temperature(log_probs: np.ndarray, label_indices: np.ndarray) -> float:
    """The temperature minimizing validation NLL (golden-section search over log T).

    NLL is convex in 1/T, so a 1-D bracketed search finds the optimum; a coarse grid first
    guards the bracket.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(label_indices, dtype=np.int64)
    if log_probs.ndim != 2 or labels.shape != (log_probs.shape[0],) or len(labels) == 0:
        raise ModelError("fit_temperature needs [n, n_protocols] log-probs and n labels")
    if labels.min() < 0 or labels.max() >= log_probs.shape[1]:
        raise ModelError("a label index is outside the catalog")
    if not np.isfinite(log_probs).all():
        raise ModelError("log-probs must be finite to fit a temperature")

    def loss(log_t: float) -> float:
        return nll(log_probs, labels, float(np.exp(log_t)))

    grid = np.linspace(*_LOG_T_RANGE, 33)
    values = [loss(x) for x in grid]
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def blend_log_probs(head: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """log_softmax(head + weight * lexical) over the catalog (last axis)."""
    from scipy.special import log_softmax

    combined = np.asarray(head, dtype=np.float64) + weight * np.asarray(lexical, np.float64)
    return log_softmax(combined, axis=-1)


#: Lexical weights tried by fit_blend: the NLL surface is smooth and flat near its minimum,
#: so a grid of 0.05 loses nothing that matters.
BLEND_WEIGHTS = tuple(np.round(np.arange(0.0, 3.0001, 0.05), 2))


def fit_blend(head: np.ndarray, lexical: np.ndarray, label_indices: np.ndarray
              ) -> tuple[float, float]:
    """(lexical weight, temperature) minimizing the NLL of softmax((head + w * lexical) / T)
    on labelled orders: a temperature fitted for each weight of BLEND_WEIGHTS."""
    best: tuple[float, float, float] | None = None
    for weight in BLEND_WEIGHTS:
        blended = blend_log_probs(head, lexical, float(weight))
        temperature = fit_temperature(blended, label_indices)
        loss = nll(blended, label_indices, temperature)
        if best is None or loss < best[0] - 1e-9:
            best = (loss, float(weight), temperature)
    assert best is not None
    return best[1], best[2]


def abstain_reason(confidence: float, threshold: float) -> str:
    """Why a suggestion goes to the radiologist, or "" when it does not."""
    if confidence >= threshold:
        return ""
    return f"confidence {confidence:.2f} below threshold {threshold:.2f}"
