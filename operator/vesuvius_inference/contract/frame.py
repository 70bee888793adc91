"""Where voxels sit in the world: axis names, units, scale and translation of the spatial axes.

Outputs must lie on their input in napari and neuroglancer, so their level 0 takes the input's
frame at the ``--level`` that was predicted (OME-Zarr 0.4 or 0.5 ``multiscales``: the dataset's
transforms, then the multiscale's own), and each pyramid level below it averages 2 voxels per axis:
its scale doubles and its first voxel's centre moves by (2**k - 1) / 2 level-0 voxels, the
convention of ngff-zarr's and ome-zarr-py's pyramids, so every level covers the same world box.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

SPATIAL = ("z", "y", "x")
T = TypeVar("T")


def triple(values: Iterable[T]) -> tuple[T, T, T]:
    """The three values of one per spatial axis (z, y, x), as the fixed-length tuple the annotations name:
    ``tuple(v for v in ...)`` is typed ``tuple[T, ...]``. ValueError when there are not exactly three."""
    z, y, x = values
    return z, y, x


def _compose(transforms: Sequence[dict[str, Any]] | None, n: int, scale: list[float], translation: list[float]
             ) -> tuple[list[float], list[float]]:
    """Apply NGFF coordinateTransformations (scale, translation, identity; in order) after (scale, translation)."""
    for t in transforms or []:
        kind = t.get("type")
        if kind == "scale" and "scale" in t:
            s = [float(v) for v in t["scale"]][-n:]
            scale = [a * b for a, b in zip(scale, s)]
            translation = [a * b for a, b in zip(translation, s)]
        elif kind == "translation" and "translation" in t:
            d = [float(v) for v in t["translation"]][-n:]
            translation = [a + b for a, b in zip(translation, d)]
    return scale, translation


@dataclass(frozen=True)
class Frame:
    names: tuple[str, str, str] = SPATIAL
    units: tuple[str | None, str | None, str | None] = (None, None, None)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_multiscales(cls, ms: dict[str, Any], level: int) -> Frame:
        """The frame of dataset ``level`` of one OME-Zarr ``multiscales`` entry (0.4 or 0.5)."""
        axes = ms.get("axes") or [{"name": a, "type": "space"} for a in SPATIAL]
        axes = [a if isinstance(a, dict) else {"name": str(a), "type": "space"} for a in axes]  # 0.3 names
        space = [a for a in axes if a.get("type") == "space"][-3:] or axes[-3:]
        if len(space) != 3:
            return cls()
        scale, translation = _compose(ms["datasets"][level].get("coordinateTransformations"), 3, [1.0] * 3, [0.0] * 3)
        scale, translation = _compose(ms.get("coordinateTransformations"), 3, scale, translation)
        return cls(triple(str(a.get("name", d)) for a, d in zip(space, SPATIAL)),
                   triple(a.get("unit") for a in space), triple(scale), triple(translation))

    def level(self, k: int, factors: Sequence[int] = (2, 2, 2)) -> Frame:
        """The frame of pyramid level ``k`` (level 0 is this frame)."""
        f = [int(x) ** k for x in factors]
        return Frame(self.names, self.units, triple(s * a for s, a in zip(self.scale, f)),
                     triple(t + (a - 1) / 2 * s for t, s, a in zip(self.translation, self.scale, f)))

    def axes(self, channel: bool) -> list[dict[str, Any]]:
        out = [{"name": n, "type": "space", **({"unit": u} if u else {})} for n, u in zip(self.names, self.units)]
        return ([{"name": "c", "type": "channel"}] if channel else []) + out

    def transforms(self, channel: bool) -> list[dict[str, Any]]:
        c = [1.0] if channel else []
        z = [0.0] if channel else []
        return [{"type": "scale", "scale": c + [float(s) for s in self.scale]},
                {"type": "translation", "translation": z + [float(t) for t in self.translation]}]

    def dimension_names(self, channel: bool) -> tuple[str, ...]:
        return (("c",) if channel else ()) + tuple(self.names)

    def as_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "units": list(self.units), "scale": list(self.scale),
                "translation": list(self.translation)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Frame:
        if not d:
            return cls()
        return cls(triple(d["names"]), triple(d["units"]), triple(float(v) for v in d["scale"]),
                   triple(float(v) for v in d["translation"]))
