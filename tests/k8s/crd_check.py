"""Validate custom resources against the CRD the way an API server would: structural schema
(jsonschema after applying defaults) and CEL rules (cel-python), including transition rules."""

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
    """openAPIV3Schema -> plain JSON schema (drop Kubernetes extensions)."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
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


def _rules(node: dict[str, Any], path: tuple = ()) -> list[tuple[tuple, str, str]]:
    out = [(path, r["rule"], r.get("message", r["rule"])) for r in node.get("x-kubernetes-validations", [])]
    for key, sub in (node.get("properties") or {}).items():
        out += _rules(sub, path + (key,))
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
        self.programs = [(path, rule, message, env.program(env.compile(rule))) for path, rule, message in _rules(sch)]

    def errors(self, obj: dict[str, Any], old: dict[str, Any] | None = None, with_paths: bool = False) -> list[str]:
        """Messages for an already defaulted ``obj`` (an update from ``old`` when given); empty when valid."""
        import celpy

        errors = [e.message for e in self.validator.iter_errors({k: v for k, v in obj.items() if k != "status"})]
        for path, rule, message, program in self.programs:
            value = _at(obj, path)
            if value is None:
                continue
            transition = "oldSelf" in rule
            if transition and (old is None or _at(old, path) is None):
                continue
            act = {"self": celpy.json_to_cel(value)}
            if transition:
                act["oldSelf"] = celpy.json_to_cel(_at(old, path))
            result = program.evaluate(act)
            if isinstance(result, Exception) or not bool(result):
                errors.append(f"{'.'.join(path) or '<root>'}: {message}" if with_paths else message)
        return errors


def validate(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Error messages for ``obj`` (an update from ``old`` when given), after defaulting; empty when valid."""
    sch = schema()
    obj = apply_defaults(sch, copy.deepcopy(obj))
    old = apply_defaults(sch, copy.deepcopy(old)) if old is not None else None
    return CompiledSchema(sch).errors(obj, old)
