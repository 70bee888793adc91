"""Settings that used to fail after the compute, checked before it: pure functions, no torch, no I/O.

- the output's pyramid against the volume and the chunks (``check_pyramid``): a pyramid needs even
  chunk sizes, and a level count past the one that is a single voxel makes no sense;
- a device name (``check_device_name``): not a device at all is a bad argument (exit 2); a device
  type this program does not run on (``mps``, ``xpu``) is runner.resolve_device's exit 69;

Each stage calls these before it opens its output or claims work (predict.prepare, the pipeline's
preflight, blend and finalize through output.Output, plan), so the same mistake gets the same words
whichever command makes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.ngff import auto_levels, level_shapes

# ---- the output's pyramid ------------------------------------------------------------------------------


def max_levels(shape: Sequence[int]) -> int:
    """The most pyramid levels that make sense: down to the first level that is one voxel on every axis.
    Every level after it is that same voxel again, twice as large each time, centred ever further
    outside the volume (its NGFF translation is (2^k - 1) / 2 voxels of level 0)."""
    n, s = 1, [int(a) for a in shape]
    while max(s) > 1:
        s = [-(-a // 2) for a in s]
        n += 1
    return n


def _dims(v: Sequence[int]) -> str:
    return "x".join(str(int(a)) for a in v)


def chunks_source(chunk_size: Sequence[int] | None, patch_size: Sequence[int] | None, chunks: Sequence[int]) -> str:
    """Where a run's output chunks come from, as the user set them (predict and plan: the chunks default
    to the patch size, which defaults to the model's)."""
    text = ",".join(str(int(c)) for c in chunks)
    if chunk_size:
        return f"--chunk_size {text}"
    if patch_size:
        return f"--patch_size {text} (the chunks default to the patch size)"
    return f"the model's patch size {text} (the chunks default to it)"


def check_pyramid(shape: Sequence[int], chunks: Sequence[int], levels: int | None, chunks_from: str, *,
                  predicted: bool = False) -> int:
    """The output's level count (``levels``, else down to one chunk), or BadArguments (exit 2) when the
    pyramid cannot be built: odd chunks (each level's chunk is built from 2x2x2 half-chunk blocks of the
    level below: output.Output, pyramid.Pyramid) or more levels than ``max_levels``. ``chunks_from`` says
    where the chunks came from (``--chunk_size 63,64,64``), for the message; ``predicted``: they are the
    chunks of data predict already wrote (blend, finalize), so only a new predict changes them.

    Refused, not clamped: ``--levels`` is recorded with the output (its settings, the settings diff of a
    rerun, spec.output.levels on Kubernetes), so a clamped output would not be the one its record
    describes; the refusal costs a second and names the number to pass."""
    top = max_levels(shape)
    if levels is not None and levels > top:
        last = level_shapes(shape, top)[-1]
        raise BadArguments(
            f"--levels {levels} is more than this output's pyramid can hold: the {_dims(shape)} volume halves to "
            f"a single voxel ({_dims(last)}) at level {top - 1}, so pass at most --levels {top} (levels past it "
            f"repeat that voxel, larger each time and centred outside the volume); without --levels the pyramid "
            f"goes down to one chunk: {auto_levels(shape, chunks)} levels here")
    n = levels or auto_levels(shape, chunks)
    if n > 1 and any(int(c) % 2 for c in chunks):
        even = ",".join(str(int(c) + int(c) % 2) for c in chunks)
        raise BadArguments(
            f"the output's pyramid ({n} levels) needs even chunk sizes on every axis, but {chunks_from} gives "
            f"{_dims(chunks)}: {'predict again with' if predicted else 'pass'} even ones (e.g. --chunk_size "
            f"{even}), or --levels 1 for an output without a pyramid")
    return n


def check_channels(model_channels: int, volume_channels: int, input_url: str) -> None:
    """The input's channels against the model's (its dataset.json ``channel_names``; no torch): BadInput
    (exit 3), from predict before its claim and from plan, instead of from the part run after it."""
    if model_channels != volume_channels:
        from vesuvius_inference.contract.errors import BadInput

        raise BadInput(f"the model expects {model_channels} input channel(s), but {input_url} has {volume_channels} "
                       "(a (C,Z,Y,X) array has C channels, a (Z,Y,X) one has 1): give the input the model was "
                       "trained on")


# ---- device names --------------------------------------------------------------------------------------

# torch's device types (c10/core/DeviceType.cpp, parse_type): what ``torch.device`` accepts before ":N".
TORCH_DEVICE_TYPES = ("cpu", "cuda", "ipu", "xpu", "mkldnn", "opengl", "opencl", "ideep", "hip", "ve", "fpga",
                      "maia", "xla", "lazy", "vulkan", "mps", "meta", "hpu", "mtia", "privateuseone")
RUNS_ON = ("cpu", "cuda")  # the device types this program runs the model on
_DEVICE = re.compile(r"^([a-z]+)(?::(\d+))?$")


def runs_on(name: str) -> bool:
    """Whether ``name`` is a device this program runs the model on (auto, cpu, cuda, cuda:N), by name only:
    what a Kubernetes pod will be given, checked where no torch is (the operator, k8s/spec.py)."""
    m = _DEVICE.match(name)
    return name == "auto" or (m is not None and m.group(1) in RUNS_ON)


def check_device_name(name: str, flag: str = "--device", allow_auto: bool = True) -> None:
    """Refuse (exit 2) a name that is no torch device at all (``banana``, ``cuda:x``). A real device type
    this program does not run on (``mps``) passes here: whether this process can use it is a question for
    the installed torch (runner.resolve_device, exit 69, naming what it can use)."""
    if allow_auto and name == "auto":
        return
    m = _DEVICE.match(name)
    if m is None or m.group(1) not in TORCH_DEVICE_TYPES:
        forms = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise BadArguments(f"{flag} {name!r} is not a device: use {forms}")
