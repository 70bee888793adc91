"""A Kubernetes API server for end-to-end tests: KMock (``kmock==0.8``) plus what kopf and our operator need.

KMock 0.8 alone is "a database over HTTP": no resourceVersion, uid, generation, generateName, no status
subresource isolation, no label selectors, watches that ignore ``?resourceVersion=`` and race with the
snapshot, JSON-patch ``test`` failures as HTTP 500, no garbage collector. :class:`KubeAPI` subclasses
``kmock.KubernetesEmulator`` and serves every request for a declared resource itself, the way
kube-apiserver does for the parts we use:

- ``metadata.resourceVersion`` from one global counter, bumped on every create, update and delete;
  ``uid``, ``generation`` (bumped only when something outside metadata and status changes),
  ``creationTimestamp``, ``generateName``; no-op patches change nothing and emit no watch event.
- Watches honour ``?resourceVersion=`` by replaying an append-only event log (so a watch started
  from a LIST's resourceVersion misses nothing), ``timeoutSeconds``, ``labelSelector`` and
  ``fieldSelector`` (the fields each kind registers: see SELECTABLE).
- LIST responses carry ``kind``/``apiVersion``/``metadata.resourceVersion`` and honour
  ``labelSelector`` (=, ==, !=, in, notin, exists, !exists), ``fieldSelector``, and ``limit`` with
  ``continue`` tokens (chunked lists).
- ``pods/log`` with ``tailLines`` and ``limitBytes``, from the output of the Job controller fixture's
  pods (``pod_logs``); a container that has not started is a 400, as the kubelet answers.
- Several versions of one resource from one storage (:meth:`KubeAPI.alias`), as for a CRD served in
  v1beta2 and v1beta1 (Kueue's Workloads).
- Admission plugins that refuse (``admission``: ResourceQuota, ServiceAccount, Priority in
  tests/k8s/admission.py): their 403 is what the Job controller fixture reports as FailedCreate.
- The status subresource: PATCH/PUT to ``/status`` change only ``status``; PATCH/PUT to the main
  resource keep the stored ``status``; ``status`` is dropped on create.
- Merge patch (RFC 7386) and JSON patch (RFC 6902; a failed ``test`` op is 422, as in Kubernetes);
  a dict sent as JSON patch is a 400; strategic merge patch is served as a merge patch for built-in
  kinds (our clients only send lists they replace whole) and refused (415) for custom resources.
- CRDs installed with :meth:`KubeAPI.install_crd` get structural defaulting (crd_check.apply_defaults)
  and validation (openAPIV3Schema + CEL rules, incl. transition rules) on create and update.
- ``batch/v1`` Job defaulting (completions, parallelism, backoffLimit, completionMode, suspend,
  podReplacementPolicy, selector and template labels) and Secret ``stringData`` -> ``data``.
- Finalizers and ``deletionTimestamp``; a namespaced create in a missing namespace is a 404.
- ``batch/v1`` Job validation on every create and update (tests/k8s/job_validation.py, ported from
  kubernetes' ValidateJob/ValidateJobUpdate and the pod rules they call): an invalid Job is a 422.
- Mutating admission hooks (``KubeAPI.mutators``, e.g. Kueue's Job webhook in tests/k8s/kueue.py).
- :class:`GarbageCollector` emulates kube-controller-manager's garbage collector: when an object is
  gone, its dependents (objects whose ``ownerReferences`` name its uid) are deleted in the
  background ``gc.delay`` seconds later (the real collector works from its informers' graph,
  asynchronously: pkg/controller/garbagecollector/garbagecollector.go attemptToDeleteItem), and so
  are objects created with an owner that no longer exists. ``propagationPolicy: Foreground``: the
  API server keeps the object with a deletionTimestamp and the ``foregroundDeletion`` finalizer, the
  collector deletes the dependents, then removes the finalizer (processDeletingDependentsItem);
  ``Orphan`` leaves the dependents.
- :class:`TTLController` emulates the TTL-after-finished controller
  (pkg/controller/ttlafterfinished/ttlafterfinished_controller.go, processJob/processTTL/jobFinishTime):
  a finished Job with ``ttlSecondsAfterFinished`` is deleted, Foreground, with a uid precondition,
  that many seconds after its Complete/Failed condition's lastTransitionTime.
- Fault injection: :meth:`KubeAPI.fail_requests` answers matching requests (after ``hang_s`` of silence) with an error status a
  given number of times; :meth:`KubeAPI.drop_watch_events` loses matching watch events (every watch
  stream skips them, as if the connection had broken and resumed after them).

Not emulated: RBAC, validating webhooks, server-side apply, watch bookmarks; later pages of a chunked list
are read from the current state rather than the first page's snapshot.
Everything runs on the server's event loop; :class:`ServerThread` runs it in a thread of its own so
synchronous tests, the kubernetes client and subprocesses (operator, pods) can all talk to it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import random
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, parsing  # KMock internals: the project pins kmock==0.8

ALL_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
_REASONS = {400: "BadRequest", 403: "Forbidden", 404: "NotFound", 409: "Conflict", 422: "Invalid",
            429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
JOBS = kmock.resource("batch/v1/jobs")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what the API server uses for generateName
MAX_INT32 = 2**31 - 1


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _err(status: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details=details or {})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# ---- selectors ---------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_label_selector(text: str | None) -> list[Callable[[dict[str, str]], bool]]:
    """``a=b,c!=d,e,!f,g in (x,y),h notin (z)`` -> predicates over a labels dict (all must hold)."""
    if not text:
        return []
    terms, depth, cur = [], 0, ""
    for ch in text:  # split on commas outside parentheses
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    preds: list[Callable[[dict[str, str]], bool]] = []
    for raw in (t.strip() for t in terms):
        if not raw:
            continue
        m = _SET_RE.match(raw)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                preds.append(lambda lb, k=key, vs=values: k in lb and lb[k] in vs)
            else:
                preds.append(lambda lb, k=key, vs=values: k not in lb or lb[k] not in vs)
        elif "!=" in raw:
            key, value = (s.strip() for s in raw.split("!=", 1))
            preds.append(lambda lb, k=key, v=value: lb.get(k) != v)
        elif "=" in raw:
            key, value = (s.strip() for s in raw.replace("==", "=").split("=", 1))
            preds.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif raw.startswith("!"):
            absent = raw[1:].strip()
            preds.append(lambda lb, k=absent: k not in lb)
        else:
            preds.append(lambda lb, k=raw: k in lb)
    return preds


# Fields each kind can be selected by, as the API server registers them: every kind metadata.name and
# metadata.namespace (apimachinery generic.ObjectMetaFieldsSet); pods also spec.nodeName, spec.restartPolicy,
# spec.schedulerName, spec.serviceAccountName, status.phase, status.podIP, status.nominatedNodeName
# (pkg/registry/core/pod/strategy.go, ToSelectableFields); events involvedObject.*, reason, reportingComponent,
# source and type (pkg/registry/core/event/strategy.go, ToSelectableFields). Anything else is a 400.
SELECTABLE: dict[str, set[str]] = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase",
             "status.podIP", "status.nominatedNodeName"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
               "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
               "reportingComponent", "source", "type"},
}


def _field(obj: dict[str, Any], path: str) -> str:
    if path == "source":
        return str(((obj.get("source") or {}).get("component")) or "")
    node: Any = obj
    for key in path.split("."):
        node = (node or {}).get(key) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def parse_field_selector(text: str | None, plural: str = "") -> list[Callable[[dict[str, Any]], bool]]:
    preds: list[Callable[[dict[str, Any]], bool]] = []
    allowed = {"metadata.name", "metadata.namespace"} | SELECTABLE.get(plural, set())
    for raw in (t.strip() for t in (text or "").split(",")):
        if not raw:
            continue
        neg = "!=" in raw
        field_path, value = (s.strip() for s in raw.replace("!=", "=").replace("==", "=").split("=", 1))
        if field_path not in allowed:
            raise _err(400, "BadRequest", f'"{field_path}" is not a known field selector: only '
                                          f'"{", ".join(sorted(allowed))}"')
        preds.append(lambda obj, f=field_path, v=value, n=neg: (_field(obj, f) == v) != n)
    return preds


def encode_continue(rv: int, after: tuple[str, str]) -> str:
    """A continue token: the list's resourceVersion and the last key returned (apiserver
    staging/src/k8s.io/apiserver/pkg/storage/continue.go, EncodeContinue: base64 of {"v", "rv", "start"})."""
    doc = {"v": "meta.k8s.io/v1", "rv": rv, "start": "/".join(after) + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ns, _, name = doc["start"].rstrip("\x00").partition("/")
        return int(doc["rv"]), (ns, name)
    except (ValueError, KeyError, TypeError):
        raise _err(400, "BadRequest", "continue key is not valid: incorrect encoded start resourceVersion "
                                      "(version meta.k8s.io/v1)") from None


# ---- the server ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    resource: kmock.resource  # where the objects are stored
    info: kmock.ResourceInfo
    namespace: str | None
    name: str | None
    subresource: str | None
    served: kmock.resource | None = None  # the version asked for, when another version stores the objects

    @property
    def api_version(self) -> str:
        res = self.served or self.resource
        return f"{res.group}/{res.version}" if res.group else res.version


@dataclass(frozen=True)
class LogEntry:
    """One watch event, serialised when it happened (later changes cannot leak into it)."""

    rv: int
    resource: kmock.resource
    namespace: str | None
    name: str
    obj: dict[str, Any]
    line: bytes
    dropped: bool = False  # lost by fault injection: no watch stream sends it


@dataclass
class Fault:
    """Answer requests matching ``method`` and the ``path`` regex (and ``when(body)``) with ``status``."""

    method: str
    path: str
    status: int
    message: str
    times: int = 1
    when: Callable[[Any], bool] | None = None
    hits: int = 0
    hang_s: float = 0.0  # first answer nothing for this long (a server or connection that went silent;
    # set to 0, the requests it holds are answered at once)


@dataclass
class DropRule:
    """Lose the watch events for which ``when(event_type, object)`` holds, ``times`` of them."""

    when: Callable[[str, dict[str, Any]], bool]
    times: int = 1
    hits: int = 0


@dataclass
class CrdSchema:
    schema: dict[str, Any]
    validator: Any = None  # crd_check.CompiledSchema, built on first use
    columns: list[dict[str, Any]] | None = None  # the version's additionalPrinterColumns


def human_duration(seconds: float) -> str:
    """apimachinery pkg/util/duration/duration.go, HumanDuration (what kubectl shows as an age)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def _json_path(obj: Any, path: str) -> Any:
    for key in path.strip(".").split("."):
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def to_table(columns: list[dict[str, Any]], objs: list[dict[str, Any]], rv: str) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table of custom resources, as the API server answers ``Accept: ...;as=Table``:
    a Name column, then the CRD's additionalPrinterColumns by simple JSONPath, dates as ages
    (apiextensions-apiserver pkg/registry/customresource/tableconvertor/tableconvertor.go, ConvertToTable,
    rowFn, cellForJSONValue)."""
    import time as _time

    defs = [{"name": "Name", "type": "string", "format": "name", "description": "name", "priority": 0}]
    defs += [{"name": c["name"], "type": c["type"], "format": c.get("format", ""),
              "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in columns]
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        for c in columns:
            value = _json_path(obj, c["jsonPath"])
            if value is not None and c["type"] == "date":
                value = human_duration(_time.time() - parse_time(value))
            cells.append(value)
        meta = {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                               "labels") if k in obj["metadata"]}
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                "metadata": meta}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": defs, "rows": rows}


@attrs.define(kw_only=True)
class KubeAPI(kmock.KubernetesEmulator):
    """kube-apiserver for the resources the operator touches (see the module docstring)."""

    validate_crds: bool = True
    _rv: int = attrs.field(default=0, init=False)
    _log: list[LogEntry] = attrs.field(factory=list, init=False)
    _waiters: set[asyncio.Future[None]] = attrs.field(factory=set, init=False)
    _crds: dict[kmock.resource, CrdSchema] = attrs.field(factory=dict, init=False)
    gc: GarbageCollector = attrs.field(init=False)
    ttl: TTLController = attrs.field(init=False)
    mutators: list[Callable[[Route, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    drops: list[DropRule] = attrs.field(factory=list, init=False)
    rejected: list[tuple[str, str]] = attrs.field(factory=list, init=False)  # (path, message) of 422 Job writes
    aliases: dict[kmock.resource, kmock.resource] = attrs.field(factory=dict, init=False)  # served -> stored
    admission: list[Callable[[Route, dict[str, Any]], None]] = attrs.field(factory=list, init=False)
    pod_logs: dict[tuple[str, str], Callable[[], str]] = attrs.field(factory=dict, init=False)
    after_create: list[Callable[[], Any]] = attrs.field(factory=list, init=False)  # controllers' follow-ups

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.gc = GarbageCollector(self)
        self.ttl = TTLController(self)
        declare = self.declare
        declare("v1/namespaces", "Namespace", namespaced=False, subresources={"status"})
        declare("v1/nodes", "Node", namespaced=False, subresources={"status"}, singular="node")
        declare("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", namespaced=False,
                subresources={"status"})
        declare("v1/events", "Event")
        declare("v1/secrets", "Secret")
        declare("v1/configmaps", "ConfigMap")
        declare("v1/pods", "Pod", subresources={"status", "log"})
        declare("v1/serviceaccounts", "ServiceAccount")
        declare("v1/resourcequotas", "ResourceQuota", subresources={"status"})
        declare("scheduling.k8s.io/v1/priorityclasses", "PriorityClass", namespaced=False)
        declare("batch/v1/jobs", "Job", subresources={"status"})

    def declare(self, key: str, kind: str, namespaced: bool = True, subresources: set[str] | None = None,
                singular: str | None = None, shortnames: set[str] | None = None,
                categories: set[str] | None = None) -> None:
        self.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, singular=singular or kind.lower(), verbs=ALL_VERBS,
            subresources=subresources or set(), shortnames=shortnames or set(), categories=categories or set())

    def install_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition: discovery, defaulting and validation, and store the CRD object."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            key = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.declare(key, names["kind"], namespaced=spec["scope"] == "Namespaced",
                         subresources=set((version.get("subresources") or {}).keys()),
                         singular=names.get("singular"), shortnames=set(names.get("shortNames") or []),
                         categories=set(names.get("categories") or []))
            self._crds[kmock.resource(key)] = CrdSchema(schema=version["schema"]["openAPIV3Schema"],
                                                        columns=version.get("additionalPrinterColumns") or [])
        crd_res = kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions")
        self._create(Route(crd_res, self.resources[crd_res], None, None, None), copy.deepcopy(crd))

    # ---- plumbing -------------------------------------------------------------------------------

    def _route(self, request: kmock.Request) -> Route | None:
        parts = [p for p in request.url.path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return None
        res = kmock.resource(group, version, rest[0])
        if res not in self.resources:
            return None
        stored = self.aliases.get(res, res)
        return Route(stored, self.resources[stored], namespace, rest[1] if len(rest) > 1 else None,
                     "/".join(rest[2:]) or None, served=res if stored != res else None)

    def alias(self, served: str, stored: str) -> None:
        """Serve ``served`` (e.g. a deprecated API version) from the objects of ``stored``, as the API server
        serves every version of a CRD from one storage version (no conversion: the same fields)."""
        self.aliases[kmock.resource(served)] = kmock.resource(stored)

    @staticmethod
    def _as_served(route: Route, out: Any) -> Any:
        if route.served is None or not isinstance(out, dict):
            return out
        out = dict(out, apiVersion=route.api_version) if "apiVersion" in out else out
        if isinstance(out.get("items"), list):
            out["items"] = [dict(i, apiVersion=route.api_version) for i in out["items"]]
        return out

    def _key(self, route: Route, name: str) -> tuple[kmock.resource, str | None, str]:
        return route.resource, route.namespace if route.info.namespaced else None, name

    def _live(self, key: tuple) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def _live_items(self, res: kmock.resource, namespace: str | None,
                    match: Callable[[dict[str, Any]], bool] | None = None):
        """Live objects of a resource (copies), those ``match`` accepts (tested on the stored object: the API
        server filters before it serialises, so a selective list costs the matches, not the resource)."""
        for (r, ns, name), obj in list(self._objects.items()):
            if r == res and not obj.deleted and (namespace is None or ns == namespace) and (
                    match is None or match(obj.raw)):
                yield (r, ns, name), copy.deepcopy(obj.raw)

    def find_by_uid(self, uid: str) -> tuple[tuple, dict[str, Any]] | None:
        for key, obj in list(self._objects.items()):
            if not obj.deleted and obj.raw.get("metadata", {}).get("uid") == uid:
                return key, copy.deepcopy(obj.raw)
        return None

    def _commit(self, key: tuple, obj: dict[str, Any] | None, event: str, last: dict[str, Any] | None = None) -> int:
        """Store a new version (None: gone), bump the resourceVersion, log and wake the watchers."""
        self._rv += 1
        body = obj if obj is not None else copy.deepcopy(last or {})
        body.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        if obj is None:
            self._objects[key].delete()
        elif key in self._objects:
            self._objects[key].history.append(copy.deepcopy(obj))
        else:
            self._objects[key] = copy.deepcopy(obj)
        line = json.dumps({"type": event, "object": body}).encode() + b"\n"
        dropped = False
        for rule in self.drops:
            if rule.hits < rule.times and rule.when(event, body):
                rule.hits += 1
                dropped = True
                break
        self._log.append(LogEntry(self._rv, key[0], key[1], key[2], copy.deepcopy(body), line, dropped))
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        return self._rv

    # ---- request handling -----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            parsing.parse_path(raw_request.path)
        except ValueError:
            # KMock 0.8's URL parser fails on /api/v1/namespaces (it takes "namespaces" for the start of
            # /namespaces/{ns}/...): build the request here; _handle routes it with its own parser.
            body = await raw_request.read()
            try:
                data = json.loads(body) if body else None
            except ValueError:
                data = None
            request = kmock.Request(id=len(self._requests), raw_request=raw_request, url=raw_request.url,
                                    method=raw_request.method, params=dict(raw_request.query),
                                    headers=dict(raw_request.headers), body=body, text=body.decode(errors="replace"),
                                    data=data)
            self._requests.append(request)
            try:
                return await self._handle(request)
            except Exception as e:  # noqa: BLE001 - rendered as a Kubernetes Status, like KMock does
                if self._errors:
                    self._errors[-1].append(e)
                return await self._render_error(e)
        return await super().__call__(raw_request)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        route = self._route(request)
        if route is None and request.url.path.rstrip("/") == "/api/v1":
            return aiohttp.web.json_response(self._core_discovery())
        if route is None:  # discovery, /version, unknown resources: KMock's own reactions
            return await apps.RawHandler._handle(self, request)
        method = str(request.method.value).upper()
        params = dict(request.params)
        for fault in self.faults:
            if fault.hits < fault.times and fault.method == method and re.search(fault.path, request.url.path) and (
                    fault.when is None or fault.when(request.data)):
                fault.hits += 1
                if fault.hang_s:  # silence, until hang_s passes or is set to 0 (the server answers again)
                    end = asyncio.get_running_loop().time() + fault.hang_s
                    while fault.hang_s and asyncio.get_running_loop().time() < end:
                        await asyncio.sleep(0.1)
                raise _err(fault.status, _REASONS.get(fault.status, "InternalError"), fault.message)
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, route, params)
        if route.info.namespaced and route.namespace is None and method != "GET":
            raise _err(404, "NotFound", f"the server could not find the requested resource ({route.resource.plural})")
        if method == "GET" and route.subresource == "log":
            return aiohttp.web.Response(text=self._pod_log(route, params), content_type="text/plain")
        crd = self._crds.get(route.resource)
        table = method == "GET" and crd is not None and "as=Table" in (request.headers.get("Accept") or "")
        if method == "GET" and route.name is None:
            listed = self._list(route, params)
            if table:
                return aiohttp.web.json_response(to_table(crd.columns or [], listed["items"],
                                                          listed["metadata"]["resourceVersion"]))
            return aiohttp.web.json_response(self._as_served(route, listed))
        if method == "GET":
            got = self._get(route)
            if table:
                return aiohttp.web.json_response(to_table(crd.columns or [], [got], got["metadata"]["resourceVersion"]))
            return aiohttp.web.json_response(self._as_served(route, got))
        if method == "POST" and route.name is None:
            return aiohttp.web.json_response(self._as_served(route, self._create(route, request.data)), status=201)
        if method == "PATCH" and route.name is not None:
            ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
            return aiohttp.web.json_response(self._as_served(route, self._patch(route, request.data, ctype)))
        if method == "PUT" and route.name is not None:
            return aiohttp.web.json_response(self._as_served(route, self._replace(route, request.data)))
        if method == "DELETE" and route.name is not None:
            opts = dict(request.data) if isinstance(request.data, dict) else {}
            opts.update(params)
            return aiohttp.web.json_response(self._delete(self._key(route, route.name), opts))
        if method == "DELETE":
            for key, _ in list(self._select(route, params)):
                self._delete(key, params)
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "status": "Success"})
        raise _err(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    def _core_discovery(self) -> dict[str, Any]:
        """/api/v1 as the API server lists it (KMock 0.8 writes groupVersion "/v1", which kubectl rejects)."""
        resources = []
        for res, info in self.resources.items():
            if res.group or res.version != "v1":
                continue
            entry = {"name": res.plural, "singularName": info.singular or "", "namespaced": info.namespaced,
                     "kind": info.kind, "verbs": sorted(info.verbs or ALL_VERBS),
                     "shortNames": sorted(info.shortnames or [])}
            resources.append(entry)
            resources += [{"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": info.namespaced,
                           "kind": info.kind, "verbs": ["get", "patch", "update"] if sub != "log" else ["get"]}
                          for sub in sorted(info.subresources or [])]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1", "resources": resources}

    def _select(self, route: Route, params: dict[str, str]):
        labels = parse_label_selector(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"), route.resource.plural)

        def match(obj: dict[str, Any]) -> bool:
            lb = (obj.get("metadata") or {}).get("labels") or {}
            return all(p(lb) for p in labels) and all(p(obj) for p in fields)

        yield from self._live_items(route.resource, route.namespace if route.info.namespaced else None, match)

    def _list(self, route: Route, params: dict[str, str]) -> dict[str, Any]:
        """LIST, in key order, one page of ``limit`` items with a ``continue`` token when more remain (the API
        server's chunking, apiserver pkg/storage/etcd3/store.go GetList). Unlike etcd, later pages are read
        from the current state, not from the first page's resourceVersion (no compaction to emulate either)."""
        items = sorted(self._select(route, params), key=lambda kv: (kv[0][1] or "", kv[0][2]))
        rv = self._rv
        if params.get("continue"):
            rv, after = decode_continue(params["continue"])
            items = [kv for kv in items if (kv[0][1] or "", kv[0][2]) > after]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        limit = int(params.get("limit") or 0)
        if 0 < limit < len(items):
            last = items[limit - 1][0]
            meta.update({"continue": encode_continue(rv, (last[1] or "", last[2])),
                         "remainingItemCount": len(items) - limit})
            items = items[:limit]
        return {"apiVersion": route.api_version, "kind": f"{route.info.kind}List", "metadata": meta,
                "items": [obj for _, obj in items]}

    def _pod_log(self, route: Route, params: dict[str, str]) -> str:
        """GET pods/NAME/log with tailLines and limitBytes; the text comes from ``pod_logs`` (the Job controller
        fixture's pod output). A pod whose container has not started answers 400, as the kubelet makes it
        ("container ... is waiting to start": pkg/kubelet/kubelet_pods.go, validateContainerLogStatus)."""
        pod = self._get(Route(route.resource, route.info, route.namespace, route.name, None))
        waiting = next(((cs.get("state") or {}).get("waiting") for cs in (pod.get("status") or {}).get(
            "containerStatuses") or [] if (cs.get("state") or {}).get("waiting")), None)
        if waiting is not None or not (pod.get("status") or {}).get("containerStatuses"):
            raise _err(400, "BadRequest", f'container "{params.get("container", "")}" in pod "{route.name}" is '
                                          "waiting to start: " + ((waiting or {}).get("reason") or "ContainerCreating"))
        source = self.pod_logs.get((route.namespace or "", route.name or ""))
        text = source() if source else ""
        if params.get("tailLines"):
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(params["tailLines"]):]) if int(params["tailLines"]) else ""
        if params.get("limitBytes"):
            text = text.encode()[:int(params["limitBytes"])].decode(errors="ignore")
        return text

    def _get(self, route: Route) -> dict[str, Any]:
        obj = self._live(self._key(route, route.name))
        if obj is None:
            raise _err(404, "NotFound", f'{route.resource.plural} "{route.name}" not found', name=route.name,
                       kind=route.resource.plural)
        return obj

    async def _watch(self, request: kmock.Request, route: Route, params: dict[str, str]) -> aiohttp.web.StreamResponse:
        labels = parse_label_selector(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"), route.resource.plural)
        if route.name:
            fields.append(lambda o, n=route.name: (o.get("metadata") or {}).get("name") == n)
        namespace = route.namespace if route.info.namespaced else None

        def wanted(e: LogEntry) -> bool:
            lb = (e.obj.get("metadata") or {}).get("labels") or {}
            return (not e.dropped and e.resource == route.resource and (namespace is None or e.namespace == namespace)
                    and all(p(lb) for p in labels) and all(p(e.obj) for p in fields))

        # Snapshot and position are taken with no await in between: no event can fall in a gap.
        since = params.get("resourceVersion")
        pending: list[bytes] = []
        if since in (None, "", "0"):
            for _key, obj in sorted(self._select(Route(route.resource, route.info, namespace, None, None), params),
                                   key=lambda kv: (kv[0][1] or "", kv[0][2])):
                if all(p(obj) for p in fields):
                    pending.append(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            position = len(self._log)
        else:
            position = next((i for i, e in enumerate(self._log) if e.rv > int(since)), len(self._log))
        loop = asyncio.get_running_loop()
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        deadline = loop.time() + timeout if timeout else None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        try:
            for line in pending:
                await response.write(line)
            while deadline is None or loop.time() < deadline:
                while position < len(self._log):
                    entry = self._log[position]
                    position += 1
                    if wanted(entry):
                        await response.write(entry.line)
                if position < len(self._log):
                    continue
                fut: asyncio.Future[None] = loop.create_future()
                self._waiters.add(fut)
                try:
                    await asyncio.wait_for(fut, None if deadline is None else max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
            await response.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        return response

    # ---- writes -------------------------------------------------------------------------------

    def _require_namespace(self, route: Route) -> None:
        if not route.info.namespaced:
            return
        ns_res = kmock.resource("v1/namespaces")
        if self._live((ns_res, None, route.namespace)) is None:
            raise _err(404, "NotFound", f'namespaces "{route.namespace}" not found', name=route.namespace,
                       kind="namespaces")

    def _create(self, route: Route, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _err(400, "BadRequest", "the body of a create must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if route.info.namespaced:
            if meta.get("namespace") not in (None, route.namespace):
                raise _err(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                              "sent on the request")
            meta["namespace"] = route.namespace
            self._require_namespace(route)
        generated = not meta.get("name")
        if generated:
            if not meta.get("generateName"):
                raise _err(422, "Invalid", "name or generateName is required")
            meta["name"] = meta["generateName"] + "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(5))
        key = self._key(route, meta["name"])
        if self._live(key) is not None:
            raise _err(409, "AlreadyExists", f'{route.resource.plural} "{meta["name"]}" already exists',
                       name=meta["name"], kind=route.resource.plural)
        obj.setdefault("apiVersion", route.api_version)
        obj.setdefault("kind", route.info.kind)
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), generation=1, creationTimestamp=now_iso())
        if "status" in route.info.subresources:
            obj.pop("status", None)
        self._default(route, obj, None)
        for mutate in self.mutators:  # mutating admission runs after defaulting, before validation
            mutate(route, obj)
        # admission plugins that may refuse (ResourceQuota, ServiceAccount, ...) see the object before its name
        # is generated (apiserver pkg/admission/errors.go, extractResourceName: "name generation has not
        # occurred yet", so a refusal names the generateName)
        view = copy.deepcopy(obj)
        if generated:
            view["metadata"].pop("name", None)
        for admit in self.admission:
            admit(route, view)
        self._validate_builtin(route, obj, None)
        self._commit(key, obj, "ADDED")
        self.gc.check_owners(key, obj)
        follow, self.after_create = self.after_create, []
        for fn in follow:
            fn()
        return self._live(key)

    def _default(self, route: Route, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Defaulting and validation, as the API server does before storing."""
        crd = self._crds.get(route.resource)
        if crd is not None:
            from k8s.crd_check import apply_defaults

            apply_defaults(crd.schema, obj)
            if self.validate_crds:
                errors = self._validate_crd(crd, obj, old)
                if errors:
                    raise _err(422, "Invalid", f"{route.info.kind}.{route.resource.group} "
                                               f"\"{obj['metadata']['name']}\" is invalid: " + "; ".join(errors),
                               causes=[{"message": e} for e in errors])
        if route.resource == kmock.resource("batch/v1/jobs") and old is None:
            default_job(obj)
        if route.resource == kmock.resource("v1/secrets") and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()

    def _validate_builtin(self, route: Route, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """kube-apiserver's own validation of built-in kinds (Jobs: tests/k8s/job_validation.py)."""
        if route.resource != JOBS:
            return
        from k8s.job_validation import status_message, validate_job, validate_job_update

        errors = validate_job(obj) if old is None else validate_job_update(obj, old)
        if errors:
            message = status_message("Job.batch", obj["metadata"].get("name", ""), errors)
            self.rejected.append((f"{route.namespace}/{obj['metadata'].get('name')}", message))
            raise _err(422, "Invalid", message, causes=[{"message": e} for e in errors], kind="Job", group="batch",
                       name=obj["metadata"].get("name"))

    def _validate_crd(self, crd: CrdSchema, obj: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
        from k8s.crd_check import CompiledSchema

        if crd.validator is None:
            crd.validator = CompiledSchema(crd.schema)
        return crd.validator.errors(obj, old, with_paths=True)

    def _update(self, route: Route, key: tuple, current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Common tail of PATCH and PUT: subresource isolation, immutable metadata, generation, no-ops."""
        has_status = "status" in route.info.subresources
        if route.subresource == "status":
            new = dict(copy.deepcopy(current), status=new.get("status"))
            if new["status"] is None:
                new.pop("status")
        elif route.subresource:
            raise _err(404, "NotFound", f"subresource {route.subresource} is not served")
        elif has_status:
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        meta, cur_meta = new.setdefault("metadata", {}), current["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if k in cur_meta:
                meta[k] = cur_meta[k]
            else:
                meta.pop(k, None)
        sent_rv = meta.get("resourceVersion")
        if sent_rv not in (None, "", cur_meta.get("resourceVersion")):
            raise _err(409, "Conflict", f'Operation cannot be fulfilled on {route.resource.plural} "{meta["name"]}": '
                                        "the object has been modified; please apply your changes to the latest "
                                        "version and try again", name=meta["name"], kind=route.resource.plural)
        meta["resourceVersion"] = cur_meta.get("resourceVersion")
        if cur_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise _err(422, "Invalid", "no new finalizers can be added if the object is being deleted")
        if route.subresource != "status":
            self._default(route, new, current)
            self._validate_builtin(route, new, current)
        if new == current:
            return current  # a no-op: no new resourceVersion, no watch event
        outside = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in outside} != {k: v for k, v in current.items() if k not in outside}:
            meta["generation"] = int(cur_meta.get("generation") or 1) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(key, None, "DELETED", last=new)
            self.gc.owner_gone(meta.get("uid"), {})
            return new
        self._commit(key, new, "MODIFIED")
        return self._live(key)

    def _patch(self, route: Route, body: Any, content_type: str) -> dict[str, Any]:
        key = self._key(route, route.name)
        current = self._live(key)
        if current is None:
            raise _err(404, "NotFound", f'{route.resource.plural} "{route.name}" not found', name=route.name,
                       kind=route.resource.plural)
        if content_type == "application/json-patch+json":
            if not isinstance(body, list):
                raise _err(400, "BadRequest", "json: cannot unmarshal object into Go value of type []jsonpatch.Operation")
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(current), body, in_place=False)
            except jsonpatch.JsonPatchTestFailed as e:
                raise _err(422, "Invalid", f"the server rejected our request due to an error in our request: {e}") from None
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPointerException, jsonpatch.InvalidJsonPatch) as e:
                raise _err(422, "Invalid", f"jsonpatch failed: {e}") from None
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if content_type.startswith("application/strategic") and route.resource in self._crds:
                raise _err(415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources")
            if not isinstance(body, dict):
                raise _err(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(current, body)
        else:
            raise _err(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")
        return self._update(route, key, current, new)

    def _replace(self, route: Route, body: Any) -> dict[str, Any]:
        key = self._key(route, route.name)
        current = self._live(key)
        if current is None:
            raise _err(404, "NotFound", f'{route.resource.plural} "{route.name}" not found', name=route.name,
                       kind=route.resource.plural)
        if not isinstance(body, dict):
            raise _err(400, "BadRequest", "the body of a replace must be an object")
        return self._update(route, key, current, copy.deepcopy(body))

    def _delete(self, key: tuple, options: dict[str, Any]) -> dict[str, Any]:
        current = self._live(key)
        if current is None:
            raise _err(404, "NotFound", f'{key[0].plural} "{key[2]}" not found', name=key[2], kind=key[0].plural)
        meta = current["metadata"]
        pre = (options.get("preconditions") or {}) if isinstance(options.get("preconditions"), dict) else {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise _err(409, "Conflict", "Precondition failed: UID in precondition does not match")
        if options.get("propagationPolicy") == "Foreground":
            # apiserver pkg/registry/generic/registry/store.go (deletionFinalizersForGarbageCollection): the
            # object stays, with the foregroundDeletion finalizer, until the collector removed its dependents
            if FOREGROUND not in (meta.get("finalizers") or []):
                meta["finalizers"] = [*(meta.get("finalizers") or []), FOREGROUND]
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_iso()
            self._commit(key, current, "MODIFIED")
            self.gc.foreground(key, meta["uid"])
            return self._live(key)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = now_iso()
                self._commit(key, current, "MODIFIED")
            return self._live(key)
        self._commit(key, None, "DELETED", last=current)
        self.gc.owner_gone(meta.get("uid"), options)
        return current

    def remove_finalizer(self, key: tuple, finalizer: str) -> None:
        """What a controller's PATCH removing its finalizer does: the object goes once none is left."""
        current = self._live(key)
        if current is None or finalizer not in (current["metadata"].get("finalizers") or []):
            return
        current["metadata"]["finalizers"] = [f for f in current["metadata"]["finalizers"] if f != finalizer]
        if not current["metadata"]["finalizers"]:
            current["metadata"].pop("finalizers")
        if current["metadata"].get("deletionTimestamp") and not current["metadata"].get("finalizers"):
            self._commit(key, None, "DELETED", last=current)
            self.gc.owner_gone(current["metadata"].get("uid"), {})
        else:
            self._commit(key, current, "MODIFIED")

    # ---- fault injection (from other threads through ServerThread.call) ------------------------

    def fail_requests(self, method: str, path: str, status: int = 500, message: str = "injected fault",
                      times: int = 1, when: Callable[[Any], bool] | None = None, hang_s: float = 0.0) -> Fault:
        fault = Fault(method.upper(), path, status, message, times, when, hang_s=hang_s)
        self.faults.append(fault)
        return fault

    def drop_watch_events(self, when: Callable[[str, dict[str, Any]], bool], times: int = 1) -> DropRule:
        rule = DropRule(when, times)
        self.drops.append(rule)
        return rule

    # ---- used by the harness from other threads through ServerThread.call ------------------------

    def create(self, api_version_plural: str, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        res = kmock.resource(api_version_plural)
        return self._create(Route(res, self.resources[res], namespace, None, None), body)

    def objects_of(self, api_version_plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [obj for _, obj in self._live_items(kmock.resource(api_version_plural), namespace)]

    def history(self, api_version_plural: str, namespace: str | None, name: str) -> list[dict[str, Any] | None]:
        """Every stored version of one object (None marks a deletion), oldest first."""
        key = (kmock.resource(api_version_plural), namespace, name)
        if key not in self._objects:
            return []
        return [None if v is None else copy.deepcopy(v.raw) for v in self._objects[key].history]

    def events_logged(self, api_version_plural: str) -> list[tuple[str, dict[str, Any]]]:
        """(event type, object) of every watch event of a resource, in order."""
        res = kmock.resource(api_version_plural)
        return [(json.loads(e.line)["type"], copy.deepcopy(e.obj)) for e in self._log if e.resource == res]


class GarbageCollector:
    """Emulates kube-controller-manager's garbage collector (background cascading deletion).

    When an object is gone, every live object whose ``metadata.ownerReferences`` names its uid is
    deleted, soon after and not in the same request (as the real collector does); dependents of
    dependents follow. An object created with owners that no longer exist is deleted too.
    """

    def __init__(self, api: KubeAPI, delay: float = 0.05) -> None:
        self.api = api
        self.delay = delay  # seconds between an owner's deletion and its dependents' (set a few s to race it)
        self.collected: list[tuple[str, str | None, str]] = []  # (plural, namespace, name) it deleted

    def _dependents(self, uid: str) -> list[tuple]:
        out = []
        for key, obj in list(self.api._objects.items()):
            if obj.deleted:
                continue
            refs = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                out.append(key)
        return out

    def owner_gone(self, uid: str | None, options: dict[str, Any]) -> None:
        if not uid or options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") in (True, "true"):
            return
        asyncio.get_running_loop().call_later(self.delay, self._collect, uid)

    def foreground(self, key: tuple, uid: str) -> None:
        """Foreground deletion of ``key``: delete its dependents, then drop its foregroundDeletion finalizer."""
        asyncio.get_running_loop().call_later(self.delay, self._foreground, key, uid)

    def _foreground(self, key: tuple, uid: str) -> None:
        live = self.api._live(key)
        if live is None or live["metadata"].get("uid") != uid:
            return
        self._collect(uid)
        if self._dependents(uid):  # dependents with finalizers of their own: look again later
            asyncio.get_running_loop().call_later(max(self.delay, 0.05), self._foreground, key, uid)
            return
        self.api.remove_finalizer(key, FOREGROUND)

    def _collect(self, uid: str) -> None:
        for key in self._dependents(uid):
            if self.api._live(key) is not None:
                self.collected.append((key[0].plural, key[1], key[2]))
                self.api._delete(key, {})

    def check_owners(self, key: tuple, obj: dict[str, Any]) -> None:
        refs = obj.get("metadata", {}).get("ownerReferences") or []
        if refs and all(self.api.find_by_uid(r.get("uid", "")) is None for r in refs):
            asyncio.get_running_loop().call_later(self.delay, self._collect_one, key, obj["metadata"]["uid"])

    def _collect_one(self, key: tuple, uid: str) -> None:
        live = self.api._live(key)
        if live is not None and live["metadata"].get("uid") == uid:
            self.collected.append((key[0].plural, key[1], key[2]))
            self.api._delete(key, {})


FOREGROUND = "foregroundDeletion"


def parse_time(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


class TTLController:
    """The TTL-after-finished controller (pkg/controller/ttlafterfinished/ttlafterfinished_controller.go).

    processTTL: only Jobs with ttlSecondsAfterFinished that finished (a Complete or Failed condition True) and
    are not being deleted; jobFinishTime: that condition's lastTransitionTime; processJob: once
    finish + ttl has passed, DELETE with propagationPolicy Foreground and the Job's uid as precondition.
    Polls every ``interval`` seconds on the server's loop (the real one re-queues each Job for its expiry).
    """

    def __init__(self, api: KubeAPI, interval: float = 0.2) -> None:
        self.api = api
        self.interval = interval
        self.deleted: list[tuple[str | None, str, str]] = []  # (namespace, name, uid) it deleted
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sweep()

    def sweep(self, now: float | None = None) -> None:
        import time as _time

        now = _time.time() if now is None else now
        for key, job in list(self.api._live_items(JOBS, None)):
            ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
            meta = job["metadata"]
            if ttl is None or meta.get("deletionTimestamp"):
                continue
            finished = next((c for c in (job.get("status") or {}).get("conditions") or []
                             if c.get("type") in ("Complete", "Failed") and c.get("status") == "True"), None)
            if finished is None or not finished.get("lastTransitionTime"):
                continue
            if parse_time(finished["lastTransitionTime"]) + int(ttl) <= now:
                self.deleted.append((key[1], key[2], meta["uid"]))
                self.api._delete(key, {"propagationPolicy": "Foreground", "preconditions": {"uid": meta["uid"]}})


def default_job(job: dict[str, Any]) -> None:
    """batch/v1 Job defaulting and the labels the API server adds (SetDefaults_Job + PrepareForCreate)."""
    spec = job.setdefault("spec", {})
    meta = job["metadata"]
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    spec.setdefault("podReplacementPolicy", "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed")
    uid_labels = {"batch.kubernetes.io/controller-uid": meta["uid"], "batch.kubernetes.io/job-name": meta["name"],
                  "controller-uid": meta["uid"], "job-name": meta["name"]}
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
    tmeta = spec.setdefault("template", {}).setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), **uid_labels}


class ServerThread:
    """Runs a :class:`KubeAPI` on its own event loop in a daemon thread; ``url`` is its address."""

    def __init__(self, api: KubeAPI | None = None) -> None:
        self.api = api or KubeAPI()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock-api", daemon=True)
        self.error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30) or self.error:
            raise RuntimeError(f"the KMock API server did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to the test through .error
            self.error = e
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.api, kmock.Server(self.api) as server:
            self.url = str(server.url).rstrip("/")
            self.api.ttl.start()  # kube-controller-manager runs it by default
            self._ready.set()
            await self._stop.wait()
            self.api.ttl.stop()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` on the server's loop (the only thread that may touch its state) and return its result."""
        assert self._loop is not None

        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def kubeconfig(self, path: Any, namespace: str = "default") -> str:
        """Write a kubeconfig pointing at this server; return its path."""
        import yaml

        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
               "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
               "users": [{"name": "kmock", "user": {"token": "kmock-token"}}],
               "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                          "namespace": namespace}}]}
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return str(path)
