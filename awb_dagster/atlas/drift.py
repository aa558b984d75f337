"""Pin drift: how far one model's embeddings of the same plates moved between two of its pins.

For each plate embedded under both pins (same plate bytes), the cosine between its two
L2-normalized vectors; 1.0 means the new weights left that plate where it was. No Dagster here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from awb_dagster.atlas.spaces import Space


@dataclass(frozen=True)
class PinDrift:
    """Per-plate cosines of one model between an older and a newer pin, sorted by plate."""

    model_id: str
    from_pin: str
    to_pin: str
    plate_ids: tuple[str, ...]
    cosines: np.ndarray  # (N,) float64

    @property
    def label(self) -> str:
        return f"{self.from_pin} -> {self.to_pin}"

    def summary(self) -> dict[str, float | int | str]:
        c = self.cosines
        return {
            "model_id": self.model_id,
            "from_pin": self.from_pin,
            "to_pin": self.to_pin,
            "plates": len(c),
            "mean": round(float(c.mean()), 6),
            "median": round(float(np.median(c)), 6),
            "p05": round(float(np.quantile(c, 0.05)), 6),
            "min": round(float(c.min()), 6),
            "max": round(float(c.max()), 6),
        }

    def most_moved(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` plates with the lowest cosine, lowest first (ties by plate id)."""
        order = sorted(range(len(self.cosines)), key=lambda i: (self.cosines[i], self.plate_ids[i]))
        return [(self.plate_ids[i], float(self.cosines[i])) for i in order[:n]]


def pin_drift(model_id: str, before: Space, after: Space) -> PinDrift:
    """Cosines over the plates both spaces hold. Raises ``ValueError`` naming the pins when the
    two share no plate or their vectors differ in dim (no cosine exists between them)."""
    if before.dim != after.dim:
        raise ValueError(
            f"{model_id}: {before.pin_key} gives {before.dim}-d vectors and {after.pin_key} {after.dim}-d; "
            "their embeddings cannot be compared by cosine"
        )
    common = sorted(set(before.nodes) & set(after.nodes))
    if not common:
        raise ValueError(f"{model_id}: {before.pin_key} and {after.pin_key} have no plate embedded under both")
    a, b = before.restrict(common), after.restrict(common)
    cosines = np.clip(np.einsum("ij,ij->i", a.vectors.astype(np.float64), b.vectors.astype(np.float64)), -1.0, 1.0)
    return PinDrift(model_id, before.pin_key, after.pin_key, a.plate_ids, cosines)

