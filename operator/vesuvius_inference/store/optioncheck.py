"""Storage option keys checked against the filesystem class that receives them, before any work.

fsspec drops a key no filesystem takes (or hands it to aiohttp/botocore, which fail much later), so a
typo like ``endpoint`` for ``endpoint_url`` used to surface as an anonymous request to AWS. Each stage
calls :func:`check_options` right after its configuration's own ``validate`` (which stays free of
fsspec so that the operator can share it).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from vesuvius_inference.contract.errors import BadArguments

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
    accepted = {p: accepted_options(p) for p in outer}
    if all(a is not None for a in accepted.values()):
        problem = _unknown(top, accepted, "an option", flag)  # type: ignore[arg-type]
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


def check_options(cfg: Any) -> None:
    """A stage configuration's ``storage_options`` against the filesystems of its URLs (``storage_urls``)."""
    env = "VESUVIUS_STORAGE_OPTIONS"  # the declaration's env (merged under the command line's)
    check_storage_options(cfg.storage_urls(), cfg.storage_options,
                          f"--storage_options (with ${env})" if os.environ.get(env) else "--storage_options")
