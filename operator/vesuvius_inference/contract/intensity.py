"""An input whose intensities the model was not trained for: the finding, its words, and its line.

A uint16 scan (or floats in [0, 1]) through a model trained on the uint8 scans runs without an error
and writes garbage: nnU-Net's CTNormalization clips every voxel to the training foreground's
[percentile_00_5, percentile_99_5] (plans.json), so the network sees a constant. normalization.py
measures the input against that range (numpy); this module is what the engine and the operator agree
on, stdlib only (the operator image has no numpy): the finding as a record, the one-line message the
predict parts log (``warning:`` or ``error:``), its short form for summary lines, the dict recorded in
the part markers and the output's ``vesuvius`` attributes, and the parser the operator runs on a
predict pod's log to raise the ``IntensityOutOfRange`` condition.

What ``--intensity_check`` does with a finding (``refuses``):
- ``auto`` (the default): exit 3 when the input is *on another scale* than the training data (its
  values are more than ``SCALE_FACTOR`` times above the trained range, or a float scan more than that
  below it, or an integer type that cannot hold the range at all): such an input is never right, and
  the message says how to rescale it. A finding on the training scale (e.g. a --bbox in the air around
  the scroll, or another contrast window) is only warned about: it can be intended.
- ``error``: exit 3 on any finding; ``warn``: never exit for it; ``off``: no check.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

AUTO, WARN, ERROR, OFF = "auto", "warn", "error", "off"
CHECKS = (AUTO, WARN, ERROR, OFF)
MIN_INSIDE = 0.01  # a finding: fewer than 1% of the sampled voxels lie in the trained range
SCALE_FACTOR = 16.0  # "another scale": the input's magnitude differs from the trained range's by more
HEAD = "the input's intensities do not match the model's training data"
ANOTHER_SCALE = "on another scale"
# the schemes whose arithmetic uses absolute intensities (nnU-Net v2, default_normalization_schemes.py):
# CT clips to the plans' percentiles, None feeds the raw values, RGBTo01 divides by 255. ZScore and
# RescaleTo01 normalise by the volume's own statistics, so any linear rescaling of the input gives the
# same network input: they have no trained range to check.
RANGED_SCHEMES = ("CTNormalization", "NoNormalization", "RGBTo01Normalization")
ATTRIBUTE = "intensity_warning"  # the key in a marker's and an output's ``vesuvius`` attributes
README_SECTION = "Input intensities"


def _num(x: float) -> str:
    return f"{x:g}"


@dataclass(frozen=True)
class IntensityFinding:
    """What the check found for one channel; ``fraction_outside`` of ``sampled_voxels`` lie outside
    ``trained_range`` (the plans' foreground percentiles 0.5-99.5), the input spans ``input_range``."""

    channel: int
    dtype: str
    scheme: str
    input_range: tuple[float, float]
    trained_range: tuple[float, float]
    fraction_outside: float
    sampled_voxels: int
    another_scale: bool
    rescale: str  # how to bring the input onto the training scale, in words
    rescaled_inside: float | None = None  # fraction of the sample inside the range after that rescaling

    def refuses(self, check: str) -> bool:
        """Whether ``--intensity_check check`` makes this finding an error (exit 3)."""
        return check == ERROR or (check == AUTO and self.another_scale)

    def facts(self) -> str:
        lo, hi = self.trained_range
        a, b = self.input_range
        return (f"{1 - self.fraction_outside:.1%} of {self.sampled_voxels:,} sampled voxels of channel {self.channel} "
                f"lie in the model's foreground range [{_num(lo)}, {_num(hi)}] (plans.json, {self.scheme}, "
                f"percentiles 0.5-99.5), while the input spans [{_num(a)}, {_num(b)}] ({self.dtype})")

    def message(self, check: str = AUTO) -> str:
        """The one line a predict part logs (``warning: `` or ``error: `` in front)."""
        scale = f"they are {ANOTHER_SCALE}: " if self.another_scale else ""
        after = f", which puts {self.rescaled_inside:.0%} of the sampled voxels in that range" \
            if self.rescaled_inside is not None else ""
        how = (f"rescale the input to the training intensities: {self.rescale}{after} (README, "
               f"'{README_SECTION}', has the snippet)") if self.another_scale or after else self.rescale
        if self.refuses(check):
            tail = "or pass --intensity_check warn to run anyway (off: no check)"
        else:
            tail = "predictions will be poor" + ("" if check != AUTO else "; --intensity_check error refuses it")
        return f"{HEAD}: {scale}{self.facts()}; {how}; {tail}"

    def brief(self) -> str:
        """The short form repeated in summary lines."""
        lo, hi = self.trained_range
        a, b = self.input_range
        return (f"warning: input intensities {'on another scale than' if self.another_scale else 'outside'} the "
                f"model's training range ({1 - self.fraction_outside:.1%} of sampled voxels in [{_num(lo)}, "
                f"{_num(hi)}], input [{_num(a)}, {_num(b)}] {self.dtype}): {self.rescale}")

    def as_dict(self, check: str = AUTO) -> dict[str, Any]:
        d = asdict(self)
        d["input_range"], d["trained_range"] = list(self.input_range), list(self.trained_range)
        d["fraction_outside"] = round(self.fraction_outside, 6)
        if self.rescaled_inside is not None:
            d["rescaled_inside"] = round(self.rescaled_inside, 4)
        d.update(check=check, message=self.message(check))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IntensityFinding | None:
        if not d:
            return None
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in d.items() if k in names}
        kw["input_range"], kw["trained_range"] = tuple(kw["input_range"]), tuple(kw["trained_range"])
        return cls(**kw)


def notes(finding: dict[str, Any] | None) -> dict[str, Any]:
    """The extra ``vesuvius`` attributes of an output made from parts with this finding ({} if none)."""
    return {ATTRIBUTE: finding} if finding else {}


# ---- the operator's side: the line in a predict pod's log ----------------------------------------

_LINE = re.compile(r"^(?P<level>warning|error): (?P<message>" + re.escape(HEAD) + r".*)$")


@dataclass(frozen=True)
class Reported:
    """A predict pod's word on the input's intensities: ``found`` a finding (``refused``: the part exited 3
    for it), or checked and found nothing."""

    found: bool
    pod: str
    message: str = ""
    refused: bool = False

    @property
    def another_scale(self) -> bool:
        return ANOTHER_SCALE in self.message.split(";", 1)[0]


def is_line(text: str) -> bool:
    """Whether a log line is the check's own (the local pipeline shows it once, from its preflight)."""
    return _LINE.match(text.strip()) is not None


def reported(log_text: str, pod: str, *, progressed: bool, succeeded: bool) -> Reported | None:
    """What a predict pod's log (its first lines) says; None: it has not said yet.

    The check runs before the model is loaded and logs its line then, so a log holding a progress line
    (``progressed``) or a pod that exited 0 (``succeeded``) without the line had no finding."""
    for raw in log_text.splitlines():
        m = _LINE.match(raw.strip())
        if m is not None:
            return Reported(True, pod, m["message"], refused=m["level"] == "error")
    if progressed or succeeded:
        return Reported(False, pod)
    return None
