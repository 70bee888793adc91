"""ValidatingAdmissionPolicy (admissionregistration.k8s.io/v1) evaluated the way kube-apiserver does, with a
real CEL implementation (cel-python), for the chart's policy (tests/helm/test_admission_policy.py) and the
emulated API server (tests/k8s/authz.py).

Ported from kubernetes staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating:
- matching (pkg/admission/plugin/policy/matching/matching.go): the policy's ``matchConstraints``
  resourceRules (apiGroups, apiVersions, operations, resources; ``*`` matches any) and the binding's
  ``matchResources.namespaceSelector`` against the namespace's labels (every namespace carries
  ``kubernetes.io/metadata.name``, set by the API server);
- ``matchConditions``: all must be true, else the policy does not apply (matchconditions/matcher.go);
- ``variables`` evaluated in order, each seeing the ones before it as ``variables.<name>``
  (cel/composition.go);
- each validation: false denies with ``messageExpression``'s value when it evaluates to a string,
  else ``message``, else ``failed expression: <expression>`` (validating/validator.go); the request is
  refused with ``ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: <message>``
  (validating/dispatcher.go), HTTP status from the validation's ``reason`` (Forbidden 403, Invalid 422,
  the default). An expression that fails to evaluate applies ``failurePolicy`` (Fail: deny).
The activation holds ``object``, ``oldObject`` (null on CREATE), ``request`` (operation, namespace,
userInfo) and ``variables``; ``params``/``authorizer`` are not used by the chart and not emulated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATUS = {"Forbidden": 403, "Invalid": 422, "Unauthorized": 401, "RequestEntityTooLarge": 413}


@dataclass(frozen=True)
class Request:
    operation: str  # CREATE, UPDATE, DELETE
    group: str
    version: str
    resource: str
    namespace: str
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None = None
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    user: Mapping[str, Any] = field(default_factory=dict)  # userInfo: username, uid, groups
    subresource: str = ""


@dataclass(frozen=True)
class Denial:
    status: int
    reason: str
    message: str


def _cel(value: Any) -> Any:
    import celpy

    return celpy.json_to_cel(value)


def _match_rule(rule: Mapping[str, Any], req: Request) -> bool:
    def any_of(values: Any, v: str) -> bool:
        return "*" in (values or []) or v in (values or [])

    resource = req.resource + (f"/{req.subresource}" if req.subresource else "")
    return (any_of(rule.get("apiGroups"), req.group) and any_of(rule.get("apiVersions"), req.version)
            and any_of(rule.get("operations"), req.operation) and any_of(rule.get("resources"), resource))


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelectorAsSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist)."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": not (key in labels and labels[key] in values),
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


class Policy:
    """One ValidatingAdmissionPolicy and its binding, compiled once."""

    def __init__(self, policy: Mapping[str, Any], binding: Mapping[str, Any]) -> None:
        import celpy

        self.policy, self.binding = policy, binding
        self.env = celpy.Environment()
        spec = policy["spec"]
        self.conditions = [self._program(c["expression"]) for c in spec.get("matchConditions") or []]
        self.variables = [(v["name"], self._program(v["expression"])) for v in spec.get("variables") or []]
        self.validations = [(v, self._program(v["expression"]),
                             self._program(v["messageExpression"]) if v.get("messageExpression") else None)
                            for v in spec.get("validations") or []]

    def _program(self, expression: str) -> Any:
        return self.env.program(self.env.compile(expression))

    def matches(self, req: Request) -> bool:
        rules = self.policy["spec"]["matchConstraints"]["resourceRules"]
        if not any(_match_rule(r, req) for r in rules):
            return False
        match = self.binding["spec"].get("matchResources") or {}
        labels = dict(req.namespace_labels, **{"kubernetes.io/metadata.name": req.namespace})
        return _selector_matches(match.get("namespaceSelector"), labels)

    def admit(self, req: Request) -> Denial | None:
        """None: admitted (or the policy does not apply); else why it is refused."""
        import celpy

        if not self.matches(req):
            return None
        request = {"operation": req.operation, "namespace": req.namespace,
                   "kind": {"group": req.group, "version": req.version, "kind": ""},
                   "resource": {"group": req.group, "version": req.version, "resource": req.resource},
                   "userInfo": dict(req.user)}
        act: dict[str, Any] = {"object": _cel(req.obj), "oldObject": _cel(req.old), "request": _cel(request)}
        for program in self.conditions:
            got = program.evaluate(act)
            if isinstance(got, Exception):
                return self._deny("Invalid", f"matchCondition failed to evaluate: {got}")
            if not bool(got):
                return None
        variables: dict[Any, Any] = {}
        for name, program in self.variables:
            act["variables"] = celpy.celtypes.MapType(variables)
            variables[celpy.celtypes.StringType(name)] = program.evaluate(act)
        act["variables"] = celpy.celtypes.MapType(variables)
        for v, program, message_program in self.validations:
            got = program.evaluate(act)
            if isinstance(got, Exception):  # failurePolicy Fail: an error denies
                if self.policy["spec"].get("failurePolicy", "Fail") == "Fail":
                    return self._deny("Invalid", f"expression '{v['expression']}' resulted in error: {got}")
                continue
            if bool(got):
                continue
            text = v.get("message") or f"failed expression: {v['expression']}"
            if message_program is not None:
                msg = message_program.evaluate(act)
                if isinstance(msg, str) and not isinstance(msg, Exception) and msg.strip():
                    text = str(msg)
            return self._deny(v.get("reason") or "Invalid", text)
        return None

    def _deny(self, reason: str, text: str) -> Denial:
        message = (f"ValidatingAdmissionPolicy '{self.policy['metadata']['name']}' with binding "
                   f"'{self.binding['metadata']['name']}' denied request: {text}")
        return Denial(STATUS.get(reason, 422), reason, message)


def from_objects(objs: list[Mapping[str, Any]]) -> list[Policy]:
    """Each binding of the rendered objects with the policy it names."""
    policies = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ValidatingAdmissionPolicy"}
    return [Policy(policies[b["spec"]["policyName"]], b) for b in objs if b["kind"] == "ValidatingAdmissionPolicyBinding"]


def message_of(denial: Denial) -> str:
    """The policy's own message, without the API server's prefix."""
    return denial.message.split(" denied request: ", 1)[1]
