"""Who is asking, and may they: authentication, RBAC and ValidatingAdmissionPolicy for the emulated API server.

:class:`SecureKubeAPI` is tests/k8s/kmock_api.KubeAPI plus what kube-apiserver does before and around
storage, for the parts the security tests need:

- Authentication by bearer token (a token table; ``kmock-token``, the fixtures' kubeconfig, is the
  cluster admin in ``system:masters``); an unknown or missing token is 401 (apiserver
  pkg/endpoints/filters/authentication.go, Unauthorized).
- Authorisation of every request by RBAC, from the Roles, ClusterRoles and bindings stored in it
  (a port of kubernetes plugin/pkg/auth/authorizer/rbac/rbac.go, RBACAuthorizer.Authorize and
  VisitRulesFor, with pkg/apis/rbac/v1/evaluation_helpers.go: VerbMatches, APIGroupMatches,
  ResourceMatches with ``*`` and ``*/subresource``, ResourceNameMatches, NonResourceURLMatches with a
  trailing ``*``); ``system:masters`` is allowed everything (the API server's privileged-group
  authorizer). A refusal is 403 with the API server's message (apiserver
  pkg/endpoints/handlers/responsewriters/errors.go, forbiddenMessage). Discovery is open to every
  authenticated user (system:discovery).
- ``authentication.k8s.io/v1`` TokenReview (pkg/registry/authentication/tokenreview/storage.go: the
  token's user in ``status.user``, ``authenticated`` false for an unknown one) and
  ``authorization.k8s.io/v1`` SubjectAccessReview (pkg/registry/authorization/subjectaccessreview/rest.go:
  exactly one of resourceAttributes / nonResourceAttributes, a user or a group, answered by the same
  RBAC authorizer, ``status.allowed`` and ``reason``). Both are create-only and stored nowhere.
- ValidatingAdmissionPolicies and their bindings, stored like any object and evaluated on every create
  and update of the resources they match, with the requesting user as ``request.userInfo``
  (tests/k8s/vap.py, cel-python).
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp.web
import attrs
import kmock
import vap
from kmock_api import KubeAPI, Route, _err

TOKENREVIEWS = kmock.resource("authentication.k8s.io/v1/tokenreviews")
SARS = kmock.resource("authorization.k8s.io/v1/subjectaccessreviews")
VAPS = kmock.resource("admissionregistration.k8s.io/v1/validatingadmissionpolicies")
VAP_BINDINGS = kmock.resource("admissionregistration.k8s.io/v1/validatingadmissionpolicybindings")
ROLES = kmock.resource("rbac.authorization.k8s.io/v1/roles")
ROLE_BINDINGS = kmock.resource("rbac.authorization.k8s.io/v1/rolebindings")
CLUSTER_ROLES = kmock.resource("rbac.authorization.k8s.io/v1/clusterroles")
CLUSTER_ROLE_BINDINGS = kmock.resource("rbac.authorization.k8s.io/v1/clusterrolebindings")
MASTERS = "system:masters"


@dataclass(frozen=True)
class Identity:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ("system:authenticated",)

    def info(self) -> dict[str, Any]:
        return {"username": self.username, "uid": self.uid, "groups": list(self.groups)}


ADMIN = Identity("kubernetes-admin", "admin-uid", (MASTERS, "system:authenticated"))


def service_account(namespace: str, name: str) -> Identity:
    """A ServiceAccount's identity as the API server authenticates its tokens (serviceaccount/util.go)."""
    return Identity(f"system:serviceaccount:{namespace}:{name}", f"uid-{namespace}-{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


@dataclass(frozen=True)
class Attributes:
    """authorizer.AttributesRecord: a resource request or a non-resource one (``path`` set)."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""


_CURRENT: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("kmock_user", default=None)


def _verb_matches(rule: Mapping[str, Any], verb: str) -> bool:
    verbs = rule.get("verbs") or []
    return "*" in verbs or verb in verbs


def _rule_allows(rule: Mapping[str, Any], a: Attributes) -> bool:
    """evaluation_helpers.go, RuleAllows."""
    if a.path:
        if not _verb_matches(rule, a.verb):
            return False
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == a.path or (url.endswith("*") and a.path.startswith(url[:-1])):
                return True
        return False
    if not _verb_matches(rule, a.verb):
        return False
    groups = rule.get("apiGroups") or []
    if not ("*" in groups or a.group in groups):
        return False
    combined = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    resources = rule.get("resources") or []
    if not ("*" in resources or combined in resources or (a.subresource and f"*/{a.subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    return not names or a.name in names


def _subject_matches(subject: Mapping[str, Any], who: Identity, binding_namespace: str) -> bool:
    """rbac.go, appliesToUser."""
    kind = subject.get("kind")
    if kind == "User":
        return subject.get("name") == who.username
    if kind == "Group":
        return subject.get("name") in who.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_namespace
        return who.username == f"system:serviceaccount:{ns}:{subject.get('name')}"
    return False


@dataclass
class Decision:
    allowed: bool
    reason: str = ""


@dataclass
class RBAC:
    """The authorizer over the Roles/ClusterRoles and bindings an API server stores."""

    api: KubeAPI
    checked: list[tuple[str, Attributes, bool]] = field(default_factory=list)

    def _objects(self, res: kmock.resource, namespace: str | None = None) -> Iterable[dict[str, Any]]:
        for _, obj in self.api._live_items(res, namespace):
            yield obj

    def authorize(self, who: Identity, a: Attributes) -> Decision:
        if MASTERS in who.groups:
            return Decision(True, "system:masters")
        for binding in self._objects(CLUSTER_ROLE_BINDINGS):
            if any(_subject_matches(s, who, "") for s in binding.get("subjects") or []):
                role = self.api._live((CLUSTER_ROLES, None, binding["roleRef"]["name"]))
                if role and any(_rule_allows(r, a) for r in role.get("rules") or []):
                    return Decision(True, f'RBAC: allowed by ClusterRoleBinding "{binding["metadata"]["name"]}" of '
                                          f'ClusterRole "{role["metadata"]["name"]}" to {who.username}')
        if a.namespace and not a.path:
            for binding in self._objects(ROLE_BINDINGS, a.namespace):
                if any(_subject_matches(s, who, a.namespace) for s in binding.get("subjects") or []):
                    ref = binding["roleRef"]
                    role = (self.api._live((ROLES, a.namespace, ref["name"])) if ref["kind"] == "Role"
                            else self.api._live((CLUSTER_ROLES, None, ref["name"])))
                    if role and any(_rule_allows(r, a) for r in role.get("rules") or []):
                        return Decision(True, f'RBAC: allowed by RoleBinding "{binding["metadata"]["name"]}/'
                                              f'{a.namespace}" of {ref["kind"]} "{ref["name"]}" to {who.username}')
        return Decision(False, "")


def forbidden_message(who: Identity, a: Attributes) -> str:
    """responsewriters/errors.go, forbiddenMessage."""
    if a.path:
        return f'forbidden: User "{who.username}" cannot {a.verb} path "{a.path}"'
    res = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    qualified = f"{res}.{a.group}" if a.group else res
    named = f' "{a.name}"' if a.name else ""
    scope = f' in the namespace "{a.namespace}"' if a.namespace else " at the cluster scope"
    return (f'{qualified}{named} is forbidden: User "{who.username}" cannot {a.verb} resource "{res}" in API group '
            f'"{a.group}"{scope}')


def _verb(method: str, route: Route, params: Mapping[str, str]) -> str:
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if route.name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method) or (
        "delete" if route.name else "deletecollection")


@attrs.define(kw_only=True)
class SecureKubeAPI(KubeAPI):
    """KubeAPI with authentication, RBAC, TokenReview/SubjectAccessReview and ValidatingAdmissionPolicy."""

    tokens: dict[str, Identity] = attrs.field(factory=dict)
    rbac: RBAC = attrs.field(init=False)
    answered: list[tuple[str, dict[str, Any], dict[str, Any]]] = attrs.field(factory=list, init=False)
    _vap_cache: dict[tuple[str, str], vap.Policy] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.tokens.setdefault("kmock-token", ADMIN)
        self.rbac = RBAC(self)
        for key, kind, namespaced in (
                (ROLES, "Role", True), (ROLE_BINDINGS, "RoleBinding", True), (CLUSTER_ROLES, "ClusterRole", False),
                (CLUSTER_ROLE_BINDINGS, "ClusterRoleBinding", False), (VAPS, "ValidatingAdmissionPolicy", False),
                (VAP_BINDINGS, "ValidatingAdmissionPolicyBinding", False), (TOKENREVIEWS, "TokenReview", False),
                (SARS, "SubjectAccessReview", False)):
            self.declare(f"{key.group}/{key.version}/{key.plural}", kind, namespaced=namespaced)
        self.admission.append(self._admit_create)

    # ---- authentication and authorisation of every request -------------------------------------------

    def _who(self, request: kmock.Request) -> Identity | None:
        header = (request.headers.get("Authorization") or "").strip()
        scheme, _, token = header.partition(" ")
        return self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        who = self._who(request)
        if who is None:
            raise _err(401, "Unauthorized", "Unauthorized")
        route = self._route(request)
        method = str(request.method.value).upper()
        if route is not None:
            a = Attributes(_verb(method, route, request.params), route.resource.group, route.resource.plural,
                           route.subresource or "", route.namespace or "", route.name or "")
            decision = self.rbac.authorize(who, a)
            self.rbac.checked.append((who.username, a, decision.allowed))
            if not decision.allowed:
                raise _err(403, "Forbidden", forbidden_message(who, a))
            if method == "POST" and route.resource in (TOKENREVIEWS, SARS):
                review = self._token_review if route.resource == TOKENREVIEWS else self._access_review
                return aiohttp.web.json_response(review(request.data), status=201)
        reset = _CURRENT.set(who)
        try:
            return await super()._handle(request)
        finally:
            _CURRENT.reset(reset)

    # ---- the review APIs ------------------------------------------------------------------------------

    def _token_review(self, body: Any) -> dict[str, Any]:
        spec = (body or {}).get("spec") or {}
        who = self.tokens.get(spec.get("token") or "")
        status: dict[str, Any] = {"authenticated": who is not None, "user": who.info() if who else {}}
        if who is None:
            status["error"] = "[invalid bearer token, token lookup failed]"
        out = {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {"creationTimestamp": None},
               "spec": spec, "status": status}
        self.answered.append(("TokenReview", spec, status))
        return out

    def _access_review(self, body: Any) -> dict[str, Any]:
        spec = (body or {}).get("spec") or {}
        res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if (res is None) == (non is None):
            raise _err(422, "Invalid", 'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
                                       'Invalid value: "null": exactly one of nonResourceAttributes or '
                                       "resourceAttributes must be specified")
        if not spec.get("user") and not spec.get("groups"):
            raise _err(422, "Invalid", 'SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: Invalid '
                                       'value: "": at least one of user or group must be specified')
        who = Identity(spec.get("user") or "", spec.get("uid") or "", tuple(spec.get("groups") or []))
        if non is not None:
            a = Attributes(non.get("verb") or "", path=non.get("path") or "")
        else:
            a = Attributes(res.get("verb") or "", res.get("group") or "", res.get("resource") or "",
                           res.get("subresource") or "", res.get("namespace") or "", res.get("name") or "")
        decision = self.rbac.authorize(who, a)
        status = {"allowed": decision.allowed, "reason": decision.reason}
        self.answered.append(("SubjectAccessReview", spec, status))
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}

    # ---- ValidatingAdmissionPolicy --------------------------------------------------------------------

    def _policies(self) -> list[vap.Policy]:
        out = []
        for _, binding in self._live_items(VAP_BINDINGS, None):
            policy = self._live((VAPS, None, binding["spec"]["policyName"]))
            if policy is None:
                continue
            key = (policy["metadata"]["resourceVersion"], binding["metadata"]["resourceVersion"])
            if key not in self._vap_cache:
                self._vap_cache[key] = vap.Policy(policy, binding)
            out.append(self._vap_cache[key])
        return out

    def _run_policies(self, route: Route, operation: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        if route.resource in (VAPS, VAP_BINDINGS) or not route.info.namespaced:
            return
        ns_obj = self._live((kmock.resource("v1/namespaces"), None, route.namespace or "")) or {}
        who = _CURRENT.get() or ADMIN
        req = vap.Request(operation, route.resource.group, route.resource.version, route.resource.plural,
                          route.namespace or "", obj, old, (ns_obj.get("metadata") or {}).get("labels") or {},
                          who.info(), route.subresource or "")
        for policy in self._policies():
            denial = policy.admit(req)
            if denial is not None:
                raise _err(denial.status, denial.reason, denial.message, causes=[{"message": denial.message}])

    def _admit_create(self, route: Route, obj: dict[str, Any]) -> None:
        self._run_policies(route, "CREATE", obj, None)

    def _update(self, route: Route, key: tuple, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        if not route.subresource:
            crd = self._crds.get(route.resource)
            view = copy.deepcopy(new)
            if crd is not None:
                from crd_check import apply_defaults

                apply_defaults(crd.schema, view)
            self._run_policies(route, "UPDATE", view, current)
        return super()._update(route, key, current, new)


def kubeconfig(url: str, path: Any, namespace: str, token: str) -> str:
    """A kubeconfig for the server at ``url`` that presents ``token``."""
    import yaml

    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
           "clusters": [{"name": "kmock", "cluster": {"server": url}}],
           "users": [{"name": "u", "user": {"token": token}}],
           "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u", "namespace": namespace}}]}
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    return str(path)
