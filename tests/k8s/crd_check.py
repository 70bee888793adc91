"""Validate custom resources against the CRD the way an API server would: structural schema
(jsonschema after applying defaults) and CEL rules (cel-python), including transition rules, rules on
list items, and messageExpression (used in place of message when it evaluates, as the API server does:
apiextensions-apiserver pkg/apiserver/schema/cel/validation.go)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "inferencejob.yaml"


def load_crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def schema(crd: dict[str, Any] | None = None) -> dict[str, Any]:
    return (crd or load_crd())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _strip(node: Any) -> Any:
    """openAPIV3Schema -> plain JSON schema (drop Kubernetes extensions). OpenAPI 3.0's exclusiveMinimum and
    exclusiveMaximum are booleans beside minimum/maximum; JSON schema draft 7's are the bound itself (a
    boolean there would read as the number 0 or 1)."""
    if isinstance(node, dict):
        out = {k: _strip(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
        for end, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(out.get(exclusive), bool):
                if out.pop(exclusive) and end in out:
                    out[exclusive] = out.pop(end)
        return out
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting, as the API server does before validation."""
    if not isinstance(value, dict) or node.get("type") != "object":
        return value
    for key, sub in (node.get("properties") or {}).items():
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value:
            value[key] = apply_defaults(sub, value[key])
    return value


def _rules(node: dict[str, Any], path: tuple = (), items: bool = False) -> list[tuple[tuple, str, str, str | None, bool]]:
    """(path, rule, message, messageExpression, applies to each list item) of every CEL rule."""
    out = [(path, r["rule"], r.get("message", r["rule"]), r.get("messageExpression"), items)
           for r in node.get("x-kubernetes-validations", [])]
    for key, sub in (node.get("properties") or {}).items():
        out += _rules(sub, path + (key,))
    if node.get("type") == "array" and isinstance(node.get("items"), dict) and not items:
        out += _rules(node["items"], path, items=True)
    return out


def _at(obj: Any, path: tuple) -> Any:
    for p in path:
        if not isinstance(obj, dict) or p not in obj:
            return None
        obj = obj[p]
    return obj


class CompiledSchema:
    """An openAPIV3Schema with its CEL rules compiled once (the API-server emulation validates every write)."""

    def __init__(self, sch: dict[str, Any]) -> None:
        import celpy
        import jsonschema

        self.schema = sch
        self.validator = jsonschema.Draft7Validator(_strip(sch))
        env = celpy.Environment()
        self.programs = [(path, rule, message, env.program(env.compile(rule)),
                          env.program(env.compile(expr)) if expr else None, items)
                         for path, rule, message, expr, items in _rules(sch)]

    def errors(self, obj: dict[str, Any], old: dict[str, Any] | None = None, with_paths: bool = False) -> list[str]:
        """Messages for an already defaulted ``obj`` (an update from ``old`` when given); empty when valid."""
        import celpy

        errors = [e.message for e in self.validator.iter_errors({k: v for k, v in obj.items() if k != "status"})]
        for path, rule, message, program, message_program, items in self.programs:
            value = _at(obj, path)
            if value is None:
                continue
            transition = "oldSelf" in rule
            if transition and (old is None or _at(old, path) is None):
                continue
            for v in (value if items and isinstance(value, list) else [value]):
                act = {"self": celpy.json_to_cel(v)}
                if transition:
                    act["oldSelf"] = celpy.json_to_cel(_at(old, path))
                result = program.evaluate(act)
                if isinstance(result, Exception) or not bool(result):
                    text = message
                    if message_program is not None:  # like the API server: messageExpression wins if it evaluates
                        got = message_program.evaluate(act)
                        if not isinstance(got, Exception):
                            text = str(got)
                    errors.append(f"{'.'.join(path) or '<root>'}: {text}" if with_paths else text)
        return errors


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Error messages for ``obj`` (an update from ``old`` when given), after defaulting; empty when valid."""
    sch = schema()
    obj = apply_defaults(sch, copy.deepcopy(obj))
    old = apply_defaults(sch, copy.deepcopy(old)) if old is not None else None
    return CompiledSchema(sch).errors(obj, old)
