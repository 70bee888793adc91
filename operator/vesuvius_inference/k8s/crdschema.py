"""The InferenceJob CRD's setting fields, generated from the settings' declarations (config.py).

Every stage setting with a spec path (``crd=``) is one field of the CRD: its type (from the field's
annotation), default, enum (``choices``), bounds (``bounds``), description (``crd_help``) and what only
the CRD says (``crd_schema``: string lengths and patterns that bound the API server's CEL cost, a
narrower enum, the spec's item type) all come from that one declaration, so the CLI, the operator
(``spec.DEFAULTS``, ``settings.crd_problems``) and the API server refuse and default alike.

crds/inferencejob.yaml stays hand-written around them (status, printer columns, the CEL rules that span
fields, the object layout): the generated fields sit in marked regions, one per spec object, and
``python -m vesuvius_inference.k8s.crdschema`` (from the repository root) rewrites those regions in
crds/inferencejob.yaml and copies the result to the chart; ``--check`` exits 1 when either differs.
A region holds every setting whose spec path's parent is that object, in declaration order; a
setting whose object has no region is an error (add the region where the field belongs). The pattern is controller-gen's (kubebuilder): the
schema from the types' markers, never by hand.

Pure: imports config.py and settings.py only (no Kubernetes client, no torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import types
import typing
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from vesuvius_inference.contract.config import STAGE_CONFIGS
from vesuvius_inference.contract.settings import options, static_default

REGENERATE = "python -m vesuvius_inference.k8s.crdschema"
CRD_FILE = "crds/inferencejob.yaml"
CRD_COPIES = ("charts/vesuvius-inference/crds/inferencejob.yaml",)  # Helm installs its chart's crds/ folder
BEGIN = re.compile(r"^(?P<indent> *)# generated from config\.py \(" + re.escape(REGENERATE)
                   + r"\): (?P<path>spec(\.\w+)*)$")
END = re.compile(r"^ *# end of generated (?P<path>spec(\.\w+)*)$")
# Fields directly under spec carry their own immutability rule (the objects below carry theirs as a
# whole): the anchor the hand-written part defines at spec.input.
IMMUTABLE = "[*immutable]"
NOT_GENERATED = {"model.uri": "a required URI: its schemes are a CEL rule written with input.uri's and output.uri's"}
KEY_ORDER = ("type", "enum", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "maxLength", "pattern",
             "items", "minItems", "maxItems", "default", "description")


@dataclasses.dataclass(frozen=True)
class SpecField:
    """One setting as a field of the InferenceJob spec."""

    path: str  # below spec, e.g. inference.batchSize
    schema: dict[str, Any]
    default: Any  # None: no default (the setting's default is "decided at run time")


def _json_type(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema type of a setting's annotation (``X | None`` is X: a field left out)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis:
            return {"type": "array", "items": _json_type(items[0], where)}
        if len(set(items)) == 1:
            return {"type": "array", "items": _json_type(items[0], where), "minItems": len(items),
                    "maxItems": len(items)}
    raise TypeError(f"{where}: no JSON type for {hint!r}; give the CRD's type in its crd_schema")


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 4.0 GB is 4 in the schema, as a person writes it
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field(cls: type, f: dataclasses.Field[Any], command: str) -> SpecField:
    opt = f.metadata["opt"]
    path = opt.crd_path(command)
    where = f"{cls.__name__}.{f.name} ({path})"
    schema = _json_type(_hints(cls)[f.name], where)
    if opt.choices is not None:
        schema["enum"] = list(opt.choices)
    if opt.bounds is not None:
        target = schema["items"] if schema["type"] == "array" else schema
        target.update({k: _json_value(v) for k, v in opt.bounds.schema().items()})
    default = static_default(f)
    default = None if default in ((), [], {}) else _json_value(default)
    if default is not None:
        schema["default"] = default
    description = opt.crd_description(command)
    if not description:
        raise ValueError(f"{where}: a CRD field needs a description (crd_help=)")
    schema["description"] = description
    schema.update(opt.crd_schema or {})
    return SpecField(path, {k: schema[k] for k in sorted(schema, key=_key_rank)}, default)


def _key_rank(key: str) -> int:
    return KEY_ORDER.index(key) if key in KEY_ORDER else len(KEY_ORDER)


def spec_fields(configs: dict[str, type] | None = None) -> dict[str, SpecField]:
    """Every setting with a spec path, by path (stage configs in order; a path several stages share is one
    declaration and must give one field)."""
    out: dict[str, SpecField] = {}
    for command, cls in (configs or STAGE_CONFIGS).items():
        for f, opt in options(cls):
            path = opt.crd_path(command)
            if path is None or path in NOT_GENERATED:
                continue
            got = _field(cls, f, command)
            if out.get(path, got) != got:
                raise ValueError(f"spec.{path}: {command}'s declaration gives another field than an earlier stage's")
            out[path] = got
    return out


def defaults(configs: dict[str, type] | None = None) -> dict[str, Any]:
    """The spec's defaults from the settings, nested as in the spec (``{"inference": {"overlap": 0.5}}``):
    what the API server's structural defaulting fills in, for the operator to fill in again."""
    out: dict[str, Any] = {}
    for path, fld in spec_fields(configs).items():
        if fld.default is None:
            continue
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = fld.default
    return out


# ---- the YAML text of a region ------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .()/-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not text.endswith(" "):
        return text
    if "\\" in text and "'" not in text:
        return f"'{text}'"  # a pattern: single quotes keep its backslashes as they are read
    return json.dumps(text, ensure_ascii=False)


def flow(value: Any) -> str:
    """``value`` as one line of YAML flow style, as the hand-written CRD writes its fields."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return _scalar(value)


def region_lines(parent: str, fields: dict[str, SpecField], indent: str) -> list[str]:
    """The properties of spec object ``parent`` (``spec``, ``spec.inference``) that the settings give."""
    below = parent.removeprefix("spec").removeprefix(".")
    lines = []
    for path, fld in fields.items():
        head, _, name = path.rpartition(".")
        if head != below:
            continue
        text = flow(fld.schema)
        if not below:
            text = text[:-1] + f", x-kubernetes-validations: {IMMUTABLE}}}"
        lines.append(f"{indent}{name}: {text}")
    return lines


def generate(text: str, fields: dict[str, SpecField] | None = None) -> str:
    """The CRD ``text`` with every generated region rewritten from the declarations."""
    fields = spec_fields() if fields is None else fields
    out: list[str] = []
    lines = text.splitlines()
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        out.append(lines[i])
        i += 1
        if not m:
            continue
        parent = m["path"]
        while i < len(lines) and not END.match(lines[i]):
            i += 1
        end = END.match(lines[i]) if i < len(lines) else None
        if end is None or end["path"] != parent:
            raise ValueError(f"the generated region {parent} has no '# end of generated {parent}' line")
        out += region_lines(parent, fields, m["indent"])
        out.append(lines[i])
        i += 1
        seen.add(parent)
    for path in fields:
        parent = "spec." + path.rpartition(".")[0] if "." in path else "spec"
        if parent not in seen:
            raise ValueError(f"spec.{path} is declared (config.py, crd=) but the CRD has no generated region for "
                             f"{parent}: add '# generated from config.py ({REGENERATE}): {parent}' and "
                             f"'# end of generated {parent}' lines among its properties")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the generated regions of the CRD and copy it to the chart; ``--check``: exit 1 if stale."""
    ap = argparse.ArgumentParser(prog=REGENERATE, description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file differs")
    ap.add_argument("--root", default=".", help="the repository's root (default: here)")
    args = ap.parse_args(argv)
    root = Path(args.root)
    crd = root / CRD_FILE
    if not crd.is_file():
        print(f"error: {crd} not found: run this from the repository root (or give --root)", file=sys.stderr)
        return 2
    text = crd.read_text()
    try:
        new = generate(text)
    except ValueError as e:
        print(f"error: {crd}: {e}", file=sys.stderr)
        return 2
    stale = [name for name in (CRD_FILE, *CRD_COPIES)
             if not (root / name).is_file() or (root / name).read_text() != new]
    if args.check:
        if stale:
            print(f"error: {', '.join(stale)} differ from config.py's settings: run {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (root / name).write_text(new)
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
