"""RBAC: the chart grants exactly what the operator uses, derived from its code and kopf's registry.

Two sources, unioned:
1. The operator's own calls: operator/vesuvius_inference/k8s/*.py is scanned (AST) for kubernetes
   client method calls; each must be in CLIENT_CALLS / CUSTOM_CALLS (an unmapped call fails the test,
   so a new API call cannot slip past without a matching rule in the chart). The same scan finds the
   ownerReferences the operator writes with ``blockOwnerDeletion: true``: under the
   OwnerReferencesPermissionEnforcement admission plugin (on by default in OpenShift) creating such an
   object needs ``update`` on the owner's ``finalizers`` subresource (kubernetes
   plugin/pkg/admission/gc/gc_admission.go, ownerRefToDeleteAttributeRecords: Verb "update",
   Subresource "finalizers").
2. kopf's own requests, derived from the handlers registered in kopf's registry plus what kopf does
   regardless of handlers (verified against kopf's source in test_kopf_assumptions):
   - every watched resource (on.create/resume/update/event/...): list + watch
     (kopf/_cogs/clients/watching.py continuous_watch -> fetching.fetch_objs + watch_objs);
   - resources with state-keeping handlers (on.create/update/resume, daemons, timers): patch, for the
     progress annotations (kopf/_cogs/clients/patching.py patch_obj; AnnotationsProgressStorage) and, through
     the status subresource, the diff-base in status.kopf (StatusDiffBaseStorage: patch_obj sends the status
     part of its patch to /status, which the operator may patch anyway for its own status);
   - core v1 events: create (kopf/_core/engines/posting.py poster -> kopf/_cogs/clients/events.py);
   - cluster-scoped: customresourcedefinitions list + watch (kopf/_core/reactor/observation.py
     resource_observer), namespaces list + watch only when serving named namespaces
     (observation.namespace_observer skips them with clusterwide=True). Both only when scanning is
     on: the operator disables kopf's scanning unless --cluster-discovery (the chart's
     rbac.clusterDiscovery, default off) is given.
   Discovery (/api, /apis) is allowed to every authenticated user (system:discovery), and peering
   resources are not used in --standalone mode.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm.helmtool import REPO
from helm.scenarios import NAMESPACE, SCENARIOS, by_kind, get, watched_namespaces

K8S_DIR = REPO / "operator" / "vesuvius_inference" / "k8s"
Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

# kubernetes client methods -> the rule they need.
CLIENT_CALLS: dict[str, Rule] = {
    "list_namespaced_job": ("batch", "jobs", "list"),
    "read_namespaced_job": ("batch", "jobs", "get"),
    "create_namespaced_job": ("batch", "jobs", "create"),
    "patch_namespaced_job": ("batch", "jobs", "patch"),
    "delete_namespaced_job": ("batch", "jobs", "delete"),
    "list_namespaced_pod": ("", "pods", "list"),
    "read_namespaced_pod": ("", "pods", "get"),
    "read_namespaced_pod_log": ("", "pods/log", "get"),
    "create_namespaced_event": ("", "events", "create"),
    "list_namespaced_event": ("", "events", "list"),
    "read_namespaced_secret": ("", "secrets", "get"),  # policy.SecretLabels: metadata of a named Secret
    "create_token_review": ("authentication.k8s.io", "tokenreviews", "create"),  # metricsauth.py
    "create_subject_access_review": ("authorization.k8s.io", "subjectaccessreviews", "create"),  # metricsauth.py
}
# Cluster-scoped reviews of /metrics' callers (--metrics-auth=kubernetes): the chart's metrics-auth ClusterRole.
METRICS_AUTH: set[Rule] = {("authentication.k8s.io", "tokenreviews", "create"),
                           ("authorization.k8s.io", "subjectaccessreviews", "create")}
# Granted only when the policy checks Secrets' labels (policy.secrets.label, on by default).
SECRET_LABELS: Rule = ("", "secrets", "get")
# CustomObjectsApi methods: (subresource suffix, verb, position of the plural argument); group (the first
# argument) and plural come from the call's arguments.
CUSTOM_CALLS: dict[str, tuple[str, str, int]] = {
    "get_namespaced_custom_object": ("", "get", 3),
    "list_namespaced_custom_object": ("", "list", 3),
    "list_cluster_custom_object": ("", "list", 2),
    "create_namespaced_custom_object": ("", "create", 3),
    "patch_namespaced_custom_object": ("", "patch", 3),
    "delete_namespaced_custom_object": ("", "delete", 3),
    "get_namespaced_custom_object_status": ("/status", "get", 3),
    "patch_namespaced_custom_object_status": ("/status", "patch", 3),
    "replace_namespaced_custom_object_status": ("/status", "update", 3),
}
CLUSTER_SCOPED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}


@functools.cache
def _client_method_names() -> frozenset[str]:
    """Every public method of the kubernetes client's API classes (CoreV1Api, BatchV1Api, ...)."""
    import kubernetes.client

    names = {"call_api"}  # ApiClient.call_api: a raw request would bypass the table
    for attr in [a for a in dir(kubernetes.client) if a.endswith("Api")]:  # getattr loads lazily: filter first
        cls = getattr(kubernetes.client, attr)
        if inspect.isclass(cls):
            names |= {m for m in dir(cls) if not m.startswith("_")}
    return frozenset(names)


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    consts: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = (zip(target.elts, value.elts) if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple)
                     else [(target, value)])
            for t, v in pairs:
                if isinstance(t, ast.Name) and isinstance(v, ast.Constant):
                    consts[t.id] = v.value
    return consts


def scan_source(source: str, filename: str = "<src>", methods: frozenset[str] | None = None) -> set[Rule]:
    """Rules needed by the kubernetes client calls in ``source``; AssertionError on an unmapped call."""
    methods = methods if methods is not None else _client_method_names()
    tree = ast.parse(source, filename)
    consts = _module_constants(tree)
    rules: set[Rule] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        name = node.func.attr.removesuffix("_with_http_info")
        if name not in methods:
            continue
        where = f"{filename}:{node.lineno} {node.func.attr}()"
        if name in CLIENT_CALLS:
            rules.add(CLIENT_CALLS[name])
        elif name in CUSTOM_CALLS:
            def arg(pos: int, kw: str, node: ast.Call = node, where: str = where) -> str:
                expr = next((k.value for k in node.keywords if k.arg == kw), None)
                if expr is None and len(node.args) > pos:
                    expr = node.args[pos]
                if isinstance(expr, ast.Constant):
                    return expr.value
                if isinstance(expr, ast.Name) and expr.id in consts:
                    return consts[expr.id]
                raise AssertionError(f"{where}: cannot resolve its `{kw}` argument statically")
            suffix, verb, plural_at = CUSTOM_CALLS[name]
            rules.add((arg(0, "group"), arg(plural_at, "plural") + suffix, verb))
        else:
            raise AssertionError(f"{where}: kubernetes client call not in the RBAC table of tests/helm/test_rbac.py; "
                                 "add it there and grant the rule in the chart (templates/_helpers.tpl)")
    return rules


def owner_reference_rules(source: str, filename: str = "<src>") -> set[Rule]:
    """``update`` on ``<plural>/finalizers`` for each ownerReference literal with blockOwnerDeletion True."""
    tree = ast.parse(source, filename)
    consts = _module_constants(tree)
    crd = _crd_names()
    rules: set[Rule] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Dict):
            continue
        keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
        blocking = keys.get("blockOwnerDeletion")
        if not (isinstance(blocking, ast.Constant) and blocking.value is True):
            continue
        where = f"{filename}:{node.lineno}"

        def value(key: str, where: str = where, keys: dict[str, Any] = keys) -> str:
            expr = keys.get(key)
            if isinstance(expr, ast.Constant):
                return expr.value
            if isinstance(expr, ast.Name) and expr.id in consts:
                return consts[expr.id]
            raise AssertionError(f"{where}: cannot resolve the ownerReference's {key} statically")
        group = value("apiVersion").rpartition("/")[0]
        kind = value("kind")
        assert group == crd["group"] and kind == crd["names"]["kind"], (
            f"{where}: ownerReference to {group}/{kind}: map it to its plural here")
        rules.add((group, crd["names"]["plural"] + "/finalizers", "update"))
    return rules


@functools.cache
def operator_code_rules() -> frozenset[Rule]:
    """Once per session: the scan walks every call in the operator's package (seconds), and each scenario below
    compares its chart with the same code."""
    files = sorted(K8S_DIR.glob("*.py"))
    assert files, K8S_DIR
    methods = _client_method_names()
    rules: set[Rule] = set()
    for path in files:
        rules |= scan_source(path.read_text(), str(path.relative_to(REPO)), methods)
        rules |= owner_reference_rules(path.read_text(), str(path.relative_to(REPO)))
    return frozenset(rules)


def _crd_names() -> dict[str, Any]:
    return yaml.safe_load((REPO / "crds" / "inferencejob.yaml").read_text())["spec"]


def _resource(selector: Any) -> tuple[str, str]:
    """(apiGroup, plural) of a kopf selector."""
    assert selector.group is not None, f"{selector}: give handlers an explicit API group"
    name = selector.plural or selector.any_name or selector.kind
    crd = _crd_names()
    if selector.group == crd["group"]:
        names = crd["names"]
        aliases = {names["kind"], names["singular"], names["plural"], *names.get("shortNames", [])}
        assert name in aliases, selector
        name = names["plural"]
    assert isinstance(name, str) and name.islower(), f"{selector}: expected a resource plural, got {name!r}"
    return selector.group, name


def kopf_rules(all_namespaces: bool) -> tuple[set[Rule], set[Rule]]:
    """(namespaced rules, cluster-scoped rules) kopf needs to serve the operator's handlers."""
    import kopf
    import vesuvius_inference.k8s.handlers  # noqa: F401 - registers the handlers
    from kopf._cogs.structs import references

    registry = kopf.get_default_registry()

    def selectors(*kinds: Any) -> set[Any]:  # the operator's handlers only (not ones a test may register)
        return {h.selector for reg in kinds for h in reg.get_all_handlers()
                if h.selector is not None and h.fn.__module__.startswith("vesuvius_inference.")}

    watched = selectors(registry._changing, registry._watching, registry._spawning, registry._indexing)
    stateful = selectors(registry._changing, registry._spawning)
    assert watched, "no kopf handlers registered by vesuvius_inference.k8s.handlers"
    assert not selectors(registry._webhooks), "admission webhooks need more RBAC than the chart grants"
    namespaced: set[Rule] = set()
    for sel in watched:
        group, plural = _resource(sel)
        namespaced |= {(group, plural, "list"), (group, plural, "watch")}
    for sel in stateful:
        group, plural = _resource(sel)
        namespaced.add((group, plural, "patch"))
    namespaced.add((references.EVENTS.group, references.EVENTS.any_name, "create"))
    cluster = {(references.CRDS.group, references.CRDS.any_name, v) for v in ("list", "watch")}
    if not all_namespaces:
        cluster |= {(references.NAMESPACES.group, references.NAMESPACES.any_name, v) for v in ("list", "watch")}
    return namespaced, cluster


def rules_of(role: dict[str, Any]) -> set[Rule]:
    out: set[Rule] = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {role['kind']}/{role['metadata']['name']}: {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


# ---- the sources of truth -----------------------------------------------------------------------

def test_operator_code_calls_are_found():
    rules = operator_code_rules()
    # what the operator does today; a change here is fine as long as the chart follows (the tests below)
    assert rules == {
        ("batch", "jobs", "list"), ("batch", "jobs", "create"), ("batch", "jobs", "patch"), ("batch", "jobs", "get"),
        ("", "pods", "list"), ("", "events", "create"),
        ("", "pods/log", "get"), ("", "events", "list"),  # progress from pod logs; FailedCreate Events of a stall
        ("vesuvius.dev", "inferencejobs", "get"), ("vesuvius.dev", "inferencejobs", "list"),
        ("vesuvius.dev", "inferencejobs/status", "patch"),
        ("vesuvius.dev", "inferencejobs", "patch"),  # the vesuvius.dev/finished label the resync selects on
        ("vesuvius.dev", "inferencejobs/finalizers", "update"),  # blockOwnerDeletion on the child Jobs
        ("kueue.x-k8s.io", "workloads", "list"), ("kueue.x-k8s.io", "workloads", "patch"),  # suspend with Kueue
        SECRET_LABELS,  # the policy's label check of a named Secret
    } | METRICS_AUTH


def test_scanner_rejects_unmapped_and_unresolvable_calls():
    with pytest.raises(AssertionError, match="delete_collection_namespaced_job"):
        scan_source("def f(batch):\n    batch.delete_collection_namespaced_job('ns')\n")
    with pytest.raises(AssertionError, match="list_namespaced_secret"):
        scan_source("def f(core):\n    core.list_namespaced_secret('ns')\n")
    with pytest.raises(AssertionError, match="cannot resolve"):
        scan_source("def f(c, g):\n    c.get_namespaced_custom_object(g, 'v1', 'ns', 'things', 'x')\n")
    assert scan_source("G, P = 'x.io', 'things'\ndef f(c):\n    c.patch_namespaced_custom_object_status("
                       "G, 'v1', 'ns', P, 'n', {})\n    c.list_namespaced_job_with_http_info('ns')\n") == {
        ("x.io", "things/status", "patch"), ("batch", "jobs", "list")}


def test_owner_reference_scan():
    src = ("K = 'InferenceJob'\ndef f(uid):\n    return [{'apiVersion': 'vesuvius.dev/v1alpha1', 'kind': K,"
           " 'uid': uid, 'controller': True, 'blockOwnerDeletion': True}]\n")
    assert owner_reference_rules(src) == {("vesuvius.dev", "inferencejobs/finalizers", "update")}
    assert owner_reference_rules(src.replace("'blockOwnerDeletion': True", "'blockOwnerDeletion': False")) == set()
    with pytest.raises(AssertionError, match="map it to its plural"):
        owner_reference_rules("x = {'apiVersion': 'batch/v1', 'kind': 'Job', 'blockOwnerDeletion': True}\n")


def test_kopf_assumptions():
    """The kopf behaviour the rules above rely on (kopf's source, so an upgrade that changes it fails here)."""
    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines import peering, posting
    from kopf._core.reactor import observation
    from vesuvius_inference.k8s import handlers

    assert (references.EVENTS.group, references.EVENTS.version, references.EVENTS.any_name) == ("", "v1", "events")
    assert "references.EVENTS" in inspect.getsource(posting.poster)
    ns_observer = inspect.getsource(observation.namespace_observer)
    assert "references.NAMESPACES" in ns_observer and "not clusterwide" in ns_observer
    assert "references.CRDS" in inspect.getsource(observation.resource_observer)
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    assert list(peering.guess_selectors(settings=settings)) == []
    # kopf's progress in annotations, its diff-base in status.kopf (patched through /status: patch_obj)
    handlers._configure(settings=settings)
    assert type(settings.persistence.progress_storage) is kopf.AnnotationsProgressStorage
    # handlers.DigestDiffBaseStorage keeps a digest, still in status.kopf through StatusDiffBaseStorage's own store
    assert isinstance(settings.persistence.diffbase_storage, kopf.StatusDiffBaseStorage)
    from kopf._cogs.clients import patching
    assert "'status' in resource.subresources" in inspect.getsource(patching.patch_obj)


# ---- the rendered RBAC ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rendered(helm):
    return {name: helm.template(values) for name, values in SCENARIOS.items()}


def _sa(objs: list[dict[str, Any]]) -> dict[str, str]:
    pod = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]
    return {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NAMESPACE}


@pytest.mark.parametrize("scenario", [s for s, v in SCENARIOS.items() if get(v, "rbac.create", True)])
def test_rbac_grants_exactly_what_is_used(rendered, scenario):
    values, objs = SCENARIOS[scenario], rendered[scenario]
    all_ns = bool(values.get("allNamespaces"))
    discovery = get(values, "rbac.clusterDiscovery", False)
    kopf_namespaced, kopf_cluster = kopf_rules(all_ns)
    namespaced = (operator_code_rules() - METRICS_AUTH) | kopf_namespaced
    if not get(values, "policy.secrets.label", "vesuvius.dev/inference-credentials=true"):
        namespaced.discard(SECRET_LABELS)
    assert not {(g, r) for g, r, _ in namespaced} & CLUSTER_SCOPED
    assert kopf_cluster <= {(g, r, v) for g, r in CLUSTER_SCOPED for v in ("list", "watch")}
    roles, role_bindings = by_kind(objs, "Role"), by_kind(objs, "RoleBinding")
    metrics_objs = [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")
                    and o["metadata"]["name"].endswith(("-metrics-auth", "-metrics-reader"))]
    cluster_roles = [o for o in by_kind(objs, "ClusterRole") if o not in metrics_objs]
    cluster_bindings = [o for o in by_kind(objs, "ClusterRoleBinding") if o not in metrics_objs]
    if get(values, "metrics.port", 8081) and get(values, "metrics.auth", "kubernetes") == "kubernetes":
        auth = next(o for o in metrics_objs if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("-auth"))
        assert rules_of(auth) == METRICS_AUTH  # exactly the reviews metricsauth.py makes, cluster-scoped
    else:
        assert not metrics_objs
    sa = _sa(objs)

    if all_ns:
        assert not roles and not role_bindings
        assert len(cluster_roles) == len(cluster_bindings) == 1
        granted = rules_of(cluster_roles[0])
        expected = namespaced | (kopf_cluster if discovery else set())
        assert granted == expected, f"missing {sorted(expected - granted)}, extra {sorted(granted - expected)}"
    else:
        namespaces = watched_namespaces(values)
        assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
        assert sorted(b["metadata"]["namespace"] for b in role_bindings) == sorted(namespaces)
        for role in roles:
            granted = rules_of(role)
            assert granted == namespaced, f"missing {sorted(namespaced - granted)}, extra {sorted(granted - namespaced)}"
        for binding in role_bindings:
            ns = binding["metadata"]["namespace"]
            role = next(r for r in roles if r["metadata"]["namespace"] == ns)
            assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                          "name": role["metadata"]["name"]}
            assert binding["subjects"] == [sa]
        # nothing namespaced is granted cluster-wide; only kopf's cluster-scoped reads, if enabled
        assert len(cluster_roles) == len(cluster_bindings) == (1 if discovery else 0)
        for cluster_role in cluster_roles:
            granted = rules_of(cluster_role)
            assert {(g, r) for g, r, _ in granted} <= CLUSTER_SCOPED
            assert granted == kopf_cluster
    for binding in cluster_bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": cluster_roles[0]["metadata"]["name"]}
        assert binding["subjects"] == [sa]
        assert NAMESPACE in binding["metadata"]["name"], "cluster-wide names carry the release namespace"


def test_rbac_can_be_left_to_the_user(rendered):
    objs = rendered["external-rbac"]
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                                                  "ServiceAccount")
                and (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component") != "worker"]
    assert _sa(objs)["name"] == "ops-vesuvius"


def test_rbac_comments_name_every_rule():
    """Each rule in the template carries a comment saying who needs it."""
    text = Path(REPO / "charts" / "vesuvius-inference" / "templates" / "_helpers.tpl").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip().startswith("- apiGroups:"):
            assert lines[i - 1].lstrip().startswith("#"), f"rule without a comment at _helpers.tpl:{i + 1}"
