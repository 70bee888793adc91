"""Settings that used to fail after the compute, checked before it: pure functions, no torch, no I/O.

- the output's pyramid against the volume and the chunks (``check_pyramid``): a pyramid needs even
  chunk sizes, and a level count past the one that is a single voxel makes no sense;
- a device name (``check_device_name``): not a device at all is a bad argument (exit 2); a device
  type this program does not run on (``mps``, ``xpu``) is runner.resolve_device's exit 69;
- storage option keys (``check_storage_options``) against the filesystem class that receives them.

Each stage calls these before it opens its output or claims work (predict.prepare, the pipeline's
preflight, blend and finalize through output.Output, plan), so the same mistake gets the same words
whichever command makes it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

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


# ---- storage options -----------------------------------------------------------------------------------

# Where a filesystem's **kwargs go when its own __init__ does not name them, read from its code; ``None``
# ends the walk up the class's bases (the kwargs do not reach the base class), ``"super"`` continues it.
#   s3fs S3FileSystem.__init__ keeps **kwargs for ``aiobotocore.session.AioSession(**self.kwargs)``
#     (set_session) and hands only the listing-cache keys to fsspec's base;
#   fsspec HTTPFileSystem.__init__ passes **storage_options to its base *and* to every aiohttp request
#     (``session.get(url, **self.kwargs)``).
FORWARDED: dict[str, tuple[tuple[str, ...], str | None]] = {
    "s3fs.core.S3FileSystem": (("aiobotocore.session:AioSession.__init__", "fsspec.dircache:DirCache.__init__"), None),
    "fsspec.implementations.http.HTTPFileSystem": (("aiohttp:ClientSession._request",), "super"),
}
# Options whose value is a dict of another class's keyword arguments.
# (s3fs: ``AioConfig(**config_kwargs)``, then ``session.create_client("s3", config=conf, **client_kwargs)``;
# fsspec's HTTP filesystem: ``aiohttp.ClientSession(**client_kwargs)``.)
NESTED: dict[str, dict[str, tuple[str, ...]]] = {
    "s3fs.core.S3FileSystem": {
        "client_kwargs": ("botocore.session:Session.create_client",),
        "config_kwargs": ("aiobotocore.config:AioConfig.__init__", "botocore.config:Config.OPTION_DEFAULTS")},
    "fsspec.implementations.http.HTTPFileSystem": {"client_kwargs": ("aiohttp:ClientSession.__init__",)},
}
ALWAYS = ("skip_instance_cache",)  # fsspec's _Cached metaclass takes it for every filesystem


def _resolve(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _named(fn: Callable[..., Any] | Mapping[str, Any], forwarded: bool = False) -> tuple[set[str], bool]:
    """The keyword names a callable takes (or a mapping's keys), and whether it also takes **kwargs.
    Of a call that receives forwarded kwargs, only the parameters with defaults (the others are given
    positionally: aiohttp's ``method`` and ``url``)."""
    if isinstance(fn, Mapping):
        return set(fn), False
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and not (forwarded and p.default is p.empty)} - {"self"}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@cache
def accepted_options(protocol: str) -> frozenset[str] | None:
    """The storage option keys the filesystem class of ``protocol`` takes (None: it takes any, or it
    cannot be told). Walks the class's bases as fsspec's filesystems pass **kwargs up to
    ``AbstractFileSystem``, which keeps them unused: a key no class names is silently ignored there."""
    import fsspec
    from fsspec.spec import AbstractFileSystem

    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return None  # storage.filesystem says what to install
    keys = set(ALWAYS)
    for base in cls.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        if base is AbstractFileSystem:
            keys |= _named(_resolve("fsspec.dircache:DirCache.__init__"))[0]
            return frozenset(keys)
        try:
            names, more = _named(init)
        except (TypeError, ValueError):
            return None
        keys |= names
        if not more:
            return frozenset(keys)
        targets, then = FORWARDED.get(_qualname(base), ((), "super"))
        for ref in targets:
            try:
                names, open_ended = _named(_resolve(ref), forwarded=True)
            except (ImportError, AttributeError, TypeError, ValueError):
                return None
            if open_ended and not ref.startswith("fsspec.dircache"):
                return None
            keys |= names
        if then is None:
            return frozenset(keys)
    return None


@cache
def _nested_keys(protocol: str) -> dict[str, frozenset[str]]:
    import fsspec

    out: dict[str, frozenset[str]] = {}
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return {}
    for base in cls.__mro__:
        for option, refs in NESTED.get(_qualname(base), {}).items():
            keys: set[str] = set()
            try:
                for ref in refs:
                    names, open_ended = _named(_resolve(ref), forwarded=True)
                    keys |= names
                    if open_ended and ref == refs[-1]:
                        raise ValueError(ref)  # takes anything: nothing to check
            except (ImportError, AttributeError, TypeError, ValueError):
                continue
            out.setdefault(option, frozenset(keys - {"service_name", "config"}))
    return out


def _chain(url: str) -> list[str]:
    """The protocols of a URL, outermost first (``zip://::s3://b/x.zip`` -> zip, s3); local parts left out."""
    out = []
    for bit in str(url).split("::"):
        proto = bit.split("://", 1)[0] if "://" in bit else "file"
        if proto != "file":
            out.append(proto)
    return out


def _near(key: str, accepted: Sequence[str]) -> list[str]:
    """The accepted key ``key`` most likely misspells: one it begins (``region`` -> ``region_name``), else
    the closest by difflib's ratio."""
    prefixed = sorted((k for k in accepted if k.startswith(key) or key.startswith(k)), key=len)
    return prefixed[:1] or difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)


def _unknown(given: Iterable[str], accepted: Mapping[str, Iterable[str]], what: str, flag: str) -> str | None:
    """The message for the first key of ``given`` that none of ``accepted`` (protocol -> keys) takes."""
    keys = {p: sorted(set(k) - set(ALWAYS)) for p, k in accepted.items()}
    for key in sorted(given):
        if any(key in k for k in keys.values()):
            continue
        close = {p: _near(key, k) for p, k in keys.items()}
        order = sorted(keys, key=lambda p: not close[p])  # the protocol with a near miss first
        hint = next((f" (did you mean {close[p][0]!r}?)" for p in order if close[p]), "")
        where = " nor ".join(f"{p}://" for p in order)
        takes = "; ".join(f"{p}:// takes {', '.join(keys[p])}" for p in order)
        return f"{flag}: {key!r} is not {what} of {where} URLs{hint}; {takes}"
    return None


def check_storage_options(urls: Iterable[str | None], storage_options: Mapping[str, Any],
                          flag: str = "--storage_options") -> None:
    """Refuse (exit 2) a storage option key that no filesystem of these URLs takes: fsspec would drop it
    unused (the run then fails later, blaming the input) or hand it to a client that raises TypeError.
    Keys are checked against each class's own signature (``accepted_options``) and, for the options
    that hold another class's arguments (s3's ``client_kwargs``, ``config_kwargs``), against that's.

    Options apply to every remote URL, so a key is refused only when none of the protocols in use
    takes it. In a chained URL (``zip://::s3://b/scan.zip``) fsspec gives the top-level keys to the
    outermost filesystem and a key named after a protocol (``{"s3": {...}}``) to that one (fsspec.core's
    ``_un_chain``, which also takes the per-protocol form for a plain URL)."""
    so = dict(storage_options or {})
    chains = [_chain(u) for u in urls if u]
    outer = sorted({c[0] for c in chains if c})
    if not so or not outer:
        return
    inner = {p for c in chains for p in c}  # fsspec's url_to_fs takes {"s3": {...}} for any s3:// in the chain
    top = [k for k, v in so.items() if k not in inner or not isinstance(v, Mapping)]
    maybe = {p: accepted_options(p) for p in outer}
    accepted = {p: a for p, a in maybe.items() if a is not None}
    if len(accepted) == len(maybe):  # every protocol's options are known
        problem = _unknown(top, accepted, "an option", flag)
        chained = [c for c in chains if len(c) > 1]
        if problem and chained:
            problem += (f"; in a chained URL the top-level options are {chained[0][0]}://'s, options of "
                        f"{chained[0][1]}:// go under {{\"{chained[0][1]}\": {{...}}}}")
        if problem:
            raise BadArguments(problem)
    for p in sorted(inner):
        sub, keys = so.get(p), accepted_options(p)
        if isinstance(sub, Mapping) and keys is not None:
            problem = _unknown(sub, {p: keys}, "an option", f"{flag} {p!r}")
            if problem:
                raise BadArguments(problem)
    nested: dict[str, dict[str, frozenset[str]]] = {}
    for p in outer:
        for option, keys in _nested_keys(p).items():
            nested.setdefault(option, {})[p] = keys
    for option, by_protocol in sorted(nested.items()):
        value = so.get(option)
        if isinstance(value, Mapping):
            problem = _unknown(value, by_protocol, f"a key of {option}", f"{flag} {option!r}")
            if problem:
                raise BadArguments(problem)
