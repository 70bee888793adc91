"""How a setting is declared once and reaches every route: parser, config object, argv, environment.

A setting is a dataclass field of a stage configuration (``config.py``) carrying an ``Opt``: its
command-line spellings, help, how to parse and render it, the environment variable that gives its
default, and where the InferenceJob spec sets it. From these fields alone:

- ``build_parser(Config)`` makes the command's argparse parser (every ``--a_b`` also as ``--a-b``);
- ``from_args(Config, namespace)`` makes the config object (absent options keep the field's default);
- ``to_argv(config)`` gives the argv that parses back to an equal object (the local pipeline's worker
  processes, the Kubernetes manifests), and ``to_env(config)`` the settings that must not appear in
  a process list (credentials in storage options).

The model is Kubernetes' ``JobControllerOptions.AddFlags``: options declared once, with their flags.
Environment variables are read here, when a configuration is made (at the edge), never deep inside
a stage. Torch-free: the operator derives its Jobs' args from the same declarations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from vesuvius_inference.contract.errors import BadArguments

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # typeshed's protocol of a dataclass (type checkers only)

T = TypeVar("T", bound="DataclassInstance")
REQUIRED: Any = MISSING
NEGATIVE_VALUE = re.compile(r"^-[\d.:]")  # a value such as -5:10,0:20,0:20 or -1; never an option's spelling


@dataclass(frozen=True)
class Bounds:
    """The interval a number setting (or each number of a tuple setting) must lie in; both ends
    inclusive unless ``low_open``/``high_open``. Declared once on the setting, it is what the CLI refuses
    (``check_values``, exit 2), what the operator refuses in a spec (``crd_problems``) and the generated
    CRD's ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum`` (k8s/crdschema.py)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        """``[0, 1)``, ``[1, 256]``; one-sided: ``> 0``, ``>= 1``."""
        lo, hi = _end(self.low), _end(self.high)
        if lo is None or hi is None:
            return (f"{'>' if self.low_open else '>='} {lo}" if lo is not None
                    else f"{'<' if self.high_open else '<='} {hi}")
        return f"{'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}"

    def schema(self) -> dict[str, Any]:
        """The OpenAPI v3.0 keywords of a Kubernetes structural schema (exclusive* are booleans there)."""
        out: dict[str, Any] = {}
        if self.low is not None:
            out["minimum"] = self.low
            if self.low_open:
                out["exclusiveMinimum"] = True
        if self.high is not None:
            out["maximum"] = self.high
            if self.high_open:
                out["exclusiveMaximum"] = True
        return out


def _end(value: float | None) -> str | None:
    return None if value is None else str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Opt:
    """The command-line and spec side of one setting."""

    names: tuple[str, ...]  # "--a_b" spellings (the first is how argv writes it); () = API only
    help: str
    parse: Callable[[str], Any] | None = None  # str -> value (argparse ``type``)
    render: Callable[[Any], str] = str  # value -> str, for argv
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    off: tuple[str, ...] = ()  # for booleans: spellings that set False (``names`` set True)
    positional: bool = False
    repeat: bool = False  # may be given several times (a tuple of values)
    env: str | None = None  # environment variable that gives the default
    merge: bool = False  # a dict given on the command line updates the environment's
    secret: bool = False  # to worker processes through the environment (``env``), never argv
    crd: str | Mapping[str, str] | None = None  # InferenceJob spec path (per command when a mapping)
    fallback: Any = None  # the default when ``env`` is unset (also what ``to_argv`` leaves out)
    group: str | None = None  # its --help section; None: its declaring group's ``help_group`` (``help_group_of``)
    bounds: Bounds | None = None  # the number's interval (each item's, for a tuple): every route refuses others
    crd_help: str | Mapping[str, str] | None = None  # the CRD field's description (per command, like ``crd``)
    crd_schema: Mapping[str, Any] | None = None  # schema keys only the CRD has (maxLength, pattern, a narrower
    # enum, the spec's item type): they update the ones generated from the type, default, choices and bounds

    def crd_path(self, command: str) -> str | None:
        if isinstance(self.crd, Mapping):
            return self.crd.get(command)
        return self.crd

    def crd_description(self, command: str) -> str | None:
        return self.crd_help.get(command) if isinstance(self.crd_help, Mapping) else self.crd_help

    def flag(self, name: str) -> str:
        """How an error names the setting: its first spelling, else (a positional or API-only one) its name."""
        return self.names[0] if self.names else name.upper() if self.positional else name


def setting(default: Any = REQUIRED, *names: str, help: str, **kw: Any) -> Any:
    """A dataclass field declaring one setting; ``default`` may be a factory (``dict``, ``list``)."""
    factory = callable(default)
    opt = Opt(tuple(names), help, fallback=default() if factory else None if default is REQUIRED else default, **kw)
    if opt.env:
        return dataclasses.field(default_factory=lambda: env_default(opt), metadata={"opt": opt})
    if factory:
        return dataclasses.field(default_factory=default, metadata={"opt": opt})
    return dataclasses.field(default=default, metadata={"opt": opt})


def variant(base: dataclasses.Field[Any], **changes: Any) -> Any:
    """The setting ``base`` (a field of another config) with another ``default``, help or spec path."""
    opt: Opt = base.metadata["opt"]
    default = changes.pop("default", opt.fallback)
    return dataclasses.field(default=default, metadata={"opt": dataclasses.replace(opt, fallback=default, **changes)})


def field_of(cls: type[DataclassInstance], name: str) -> dataclasses.Field[Any]:
    return cls.__dataclass_fields__[name]


def env_default(opt: Opt, environ: Mapping[str, str] | None = None) -> Any:
    """The setting's default from its environment variable, parsed like the option; else its fallback."""
    raw = (os.environ if environ is None else environ).get(opt.env or "")
    if not raw:
        return _copy(opt.fallback)
    try:
        return opt.parse(raw) if opt.parse else raw
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        raise BadArguments(f"${opt.env}: {e}") from None


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value


def options(cls: type) -> list[tuple[dataclasses.Field[Any], Opt]]:
    """The settings of a config class, in declaration order (positionals first)."""
    out = [(f, f.metadata["opt"]) for f in dataclasses.fields(cls) if "opt" in f.metadata]
    return sorted(out, key=lambda fo: not fo[1].positional)


def static_default(f: dataclasses.Field[Any]) -> Any:
    """The declared default (for settings read from the environment: the value when it is unset)."""
    return f.metadata["opt"].fallback


def spellings(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        for s in (n, n.replace("_", "-"), "--" + n[2:].replace("-", "_")):
            if s not in out:
                out.append(s)
    return out


def _help(f: dataclasses.Field[Any], opt: Opt) -> str:
    d = static_default(f)
    text = opt.help
    if opt.env:
        text += f" (default: ${opt.env}" + (f" or {d}" if d not in (None, {}, []) else "") + ")"
    elif d not in (None, False, REQUIRED, {}, []) and not opt.off and "default" not in text:
        text += f" (default: {opt.render(d) if not isinstance(d, str) else d})"
    return text


# The --help sections, in this order; a setting's section is its ``group=``, else the ``help_group`` of the
# settings dataclass that declares it (config.py), else argparse's general "options".
HELP_GROUPS = ("input/output", "model", "performance", "storage", "Kubernetes")


def help_group_of(cls: type, name: str, opt: Opt) -> str | None:
    """The --help section of setting ``name`` of ``cls``: declared once, on the setting or on its group."""
    if opt.group is not None:
        return opt.group
    for klass in reversed(cls.__mro__):  # the group that declared it first (a variant keeps its base's)
        if name in klass.__dict__.get("__annotations__", {}) and "help_group" in klass.__dict__:
            return klass.__dict__["help_group"]
    return None


class Parser(argparse.ArgumentParser):
    """argparse, with a bad command line as one ``error:`` line like every other failure (exit 2)."""

    def error(self, message: str) -> Any:
        from vesuvius_inference.contract.failure import write_termination_message

        line = f"error: {self.prog}: {message} (see {self.prog} --help)\n"
        write_termination_message(line)  # for Kubernetes, as every failure's line
        self.exit(2, line)

    def parse_known_args(self, args: Iterable[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        return super().parse_known_args(self.values_attached(args), namespace)

    def values_attached(self, args: Iterable[str] | None) -> list[str] | None:
        """``--bbox -5:10,0:20,0:20`` as ``--bbox=-5:10,...``: argparse takes a word that starts with '-'
        for an option unless it is a plain negative number (``_negative_number_matcher``), so a value like
        ``-5:10,...`` or ``-1,2,3`` reached it as "expected one argument" instead of reaching the setting's
        own check. A word after an option that takes a value, starting with '-' and then a digit, '.' or
        ':' (no option is spelt so), is that option's value."""
        if args is None:
            return None
        out = list(args)
        for i in range(len(out) - 1, 0, -1):
            action = self._option_string_actions.get(out[i - 1])
            if action is not None and action.nargs != 0 and NEGATIVE_VALUE.match(out[i]):
                out[i - 1:i + 1] = [f"{out[i - 1]}={out[i]}"]
        return out


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """The command's parser, from the config class's settings. Absent options stay absent
    (``SUPPRESS``) so that the config's own defaults and environment apply."""
    top = Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    top._optionals.title = "general"  # the settings of no section: how the command behaves (--quiet, --debug...)
    used = {help_group_of(cls, f.name, opt) for f, opt in options(cls)}
    sections = {g: top.add_argument_group(g) for g in HELP_GROUPS if g in used}
    for f, opt in options(cls):
        if not opt.names and not opt.positional:
            continue
        if opt.positional:
            top.add_argument(f.name, help=opt.help, type=opt.parse or str, metavar=opt.metavar)
            continue
        p: Any = sections.get(help_group_of(cls, f.name, opt) or "", top)
        kw: dict[str, Any] = {"dest": f.name, "help": _help(f, opt)}
        if opt.off or isinstance(static_default(f), bool):
            if opt.names:
                p.add_argument(*spellings(opt.names), action="store_true", **kw)
            if opt.off:
                p.add_argument(*spellings(opt.off), action="store_false", dest=f.name,
                               help=argparse.SUPPRESS if opt.names else kw["help"])
            continue
        kw.update(type=opt.parse, choices=opt.choices, metavar=opt.metavar)
        if opt.repeat:
            kw["action"] = "append"
        if f.default is MISSING and f.default_factory is MISSING:
            kw["required"] = True
        p.add_argument(*spellings(opt.names), **kw)
    return top


def from_args(cls: type[T], ns: argparse.Namespace | Mapping[str, Any], **extra: Any) -> T:
    """The config object of a parsed command line (or a mapping of setting names to values)."""
    given = dict(vars(ns) if isinstance(ns, argparse.Namespace) else ns)
    for f, opt in options(cls):
        if opt.merge and f.name in given and isinstance(given[f.name], dict):
            given[f.name] = {**env_default(opt), **given[f.name]}
        if opt.repeat and isinstance(given.get(f.name), list):
            given[f.name] = tuple(given[f.name])
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in given.items() if k in names}, **extra)


def derive(cls: type[T], source: Any, **overrides: Any) -> T:
    """A config of ``cls`` taking every setting ``source`` shares with it (same field name), then
    ``overrides``: how the pipeline hands its settings to predict, blend and finalize unchanged."""
    names = {f.name for f in dataclasses.fields(cls)}
    shared = {f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name in names}
    return cls(**{**shared, **overrides})


def to_argv(cfg: Any, overrides: Mapping[str, str] | None = None) -> list[str]:
    """The command line that parses back to ``cfg`` (secret settings excluded: see ``to_env``).

    Settings at their declared default are left out, so the argv stays short and a worker's own
    environment supplies what it should. ``overrides`` put literal text for a setting (e.g.
    ``$(JOB_COMPLETION_INDEX)`` for the part id of an Indexed Job).
    """
    overrides = dict(overrides or {})
    head: list[str] = []
    tail: list[str] = []
    for f, opt in options(type(cfg)):
        if opt.secret or (not opt.names and not opt.positional):
            continue
        if f.name in overrides:
            text = overrides.pop(f.name)
            (head if opt.positional else tail).extend([text] if opt.positional else [opt.names[0], text])
            continue
        value = getattr(cfg, f.name)
        if opt.positional:
            head.append(opt.render(value))
            continue
        if value == static_default(f):
            continue
        if opt.off or isinstance(static_default(f), bool):
            tail.append(opt.names[0] if value else opt.off[0])
        elif opt.repeat:
            for item in value:
                tail.extend([opt.names[0], opt.render(item)])
        elif value is None:
            raise ValueError(f"{type(cfg).__name__}.{f.name}=None differs from its default and has no spelling")
        else:
            tail.extend([opt.names[0], opt.render(value)])
    if overrides:
        raise ValueError(f"no such settings in {type(cfg).__name__}: {sorted(overrides)}")
    return head + tail


def to_env(cfg: Any) -> dict[str, str]:
    """Secret settings as the environment variables that carry them to a worker process."""
    out = {}
    for f, opt in options(type(cfg)):
        value = getattr(cfg, f.name)
        if opt.secret and opt.env and value not in (None, {}, [], opt.fallback):
            out[opt.env] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def _at_path(spec: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted spec path (``inference.batchSize``), None where any step is missing."""
    node: Any = spec
    for key in path.split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def crd_values(cls: type, command: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The settings an InferenceJob spec (defaults applied) gives for ``command``, by each one's spec path."""
    out = {}
    for f, opt in options(cls):
        path = opt.crd_path(command)
        if path is None:
            continue
        node = _at_path(spec, path)
        if node is not None:  # through the option's own text form: the value a parsed argv would give
            value = tuple(node) if isinstance(node, list) else node
            out[f.name] = opt.parse(opt.render(value)) if opt.parse else value
    return out


def value_problem(opt: Opt, value: Any, name: str) -> str | None:
    """What is wrong with ``value`` against the setting's declared bounds and choices (None: nothing);
    ``name`` is how the message names it (a flag, or a spec path). None values are "not given"."""
    if value is None:
        return None
    if opt.choices is not None and not isinstance(value, (tuple, list)) and value not in opt.choices:
        return f"{name} must be one of {', '.join(opt.choices)}; got {value!r}"
    if opt.bounds is not None:
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue  # not a number: the parser's (or the schema's type) refusal, not a bound's
            if item not in opt.bounds:
                shown = join_commas(value) if isinstance(value, (tuple, list)) else number(value)
                each = "each value of " if isinstance(value, (tuple, list)) else ""
                return f"{each}{name} must be in {opt.bounds}, got {shown}"
    return None


def check_values(cfg: Any) -> None:
    """Every setting of ``cfg`` within its declared bounds and choices, whichever route made it (command
    line, environment default, Python API, a worker's argv): BadArguments (exit 2) naming the first that
    is not. The bounds are the declarations' (config.py), the same the CRD is generated with."""
    for f, opt in options(type(cfg)):
        problem = value_problem(opt, getattr(cfg, f.name), opt.flag(f.name))
        if problem:
            raise BadArguments(problem)


def crd_problems(cls: type, command: str, spec: Mapping[str, Any]) -> list[str]:
    """Spec values outside their settings' declared bounds and choices, named by their spec path: what the
    CRD's schema refuses, checked again for objects an API server let through (stored before a bound
    existed, or a server that does not validate)."""
    out = []
    for _, opt in options(cls):
        path = opt.crd_path(command)
        if path is None:
            continue
        node = _at_path(spec, path)
        problem = value_problem(opt, node, path)
        if problem:
            out.append(problem)
    return out


# ---- parsers and renderers shared by the declarations ----------------------------------------------

def ints3(text: str) -> tuple[int, int, int]:
    """``z,y,x`` as three integers (how large each may be is the setting's ``bounds``)."""
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,128,128, got {text!r}") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three integers z,y,x, got {text!r}")
    return vals  # the length check above makes it three


def names_list(text: str) -> tuple[str, ...] | None:
    """``0,1`` -> ("0", "1"); ``auto`` or empty -> None (every one present)."""
    if text.strip().lower() in ("", "auto"):
        return None
    return tuple(f.strip() for f in text.split(",") if f.strip())


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}); pass e.g. '{{\"anon\": true}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(value).__name__}")
    return value


def join_commas(values: Sequence[Any]) -> str:
    return ",".join(str(v) for v in values)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def number(value: float) -> str:
    """Floats as Python writes them (``0.5``, ``4.0``), ints without a point."""
    return repr(value) if isinstance(value, float) else str(value)
