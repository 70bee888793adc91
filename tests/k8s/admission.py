"""kube-apiserver's admission plugins that refuse pods, and the controller that makes their default
ServiceAccount, for the emulated API server (kmock_api.KubeAPI.admission). On by default in every
cluster, so on in every test here: a pod they refuse is what the Job controller reports as FailedCreate.

- ServiceAccount (plugin/pkg/admission/serviceaccount/admission.go, Admit): a pod's
  ``spec.serviceAccountName`` (default ``default``) must exist in its namespace, else
  ``error looking up service account NS/NAME: serviceaccount "NAME" not found``; the ``default``
  account of a namespace is made by the service-account controller
  (pkg/controller/serviceaccount/serviceaccounts_controller.go, syncNamespace).
- Priority (plugin/pkg/admission/priority/admission.go, admitPod): a ``priorityClassName`` other than
  the built-in ``system-*`` ones must name a PriorityClass, else ``no PriorityClass with name NAME was
  found``.
- ResourceQuota (plugin/pkg/admission/resourcequota/controller.go, checkRequest): the sum of the
  namespace's non-terminal pods' usage plus the new pod's must stay within each quota's ``spec.hard``,
  else ``exceeded quota: NAME, requested: R, used: U, limited: L`` (only the resources exceeded). Pod
  usage as the pod evaluator counts it (pkg/quota/v1/evaluator/core/pods.go, PodUsageFunc): ``pods``,
  ``count/pods``, ``requests.cpu``/``cpu``, ``requests.memory``/``memory``, ``limits.cpu``,
  ``limits.memory``, and extended resources as ``requests.<name>``; terminal pods (Succeeded, Failed)
  count nothing. The controller keeps ``status.used`` eventually; here it is computed at admission.
Each refusal is 403 Forbidden, ``pods "<name or generateName>" is forbidden: <reason>``
(staging/src/k8s.io/apiserver/pkg/admission/errors.go, NewForbidden).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import kmock
from k8s.kmock_api import KubeAPI, Route, _err
from vesuvius_inference.k8s.quantity import parse_quantity

PODS = kmock.resource("v1/pods")
NAMESPACES = kmock.resource("v1/namespaces")
TERMINAL = ("Succeeded", "Failed")


def _forbidden(obj: dict[str, Any], reason: str) -> kmock.KubernetesError:
    meta = obj.get("metadata") or {}
    return _err(403, "Forbidden", f'pods "{meta.get("name") or meta.get("generateName", "")}" is forbidden: {reason}')


def pod_usage(pod: dict[str, Any]) -> dict[str, Fraction]:
    if (pod.get("status") or {}).get("phase") in TERMINAL:
        return {}
    use: dict[str, Fraction] = {"pods": Fraction(1), "count/pods": Fraction(1)}
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for name, q in (res.get(kind) or {}).items():
                keys = [f"{kind}.{name}"]
                if kind == "requests" and name in ("cpu", "memory"):
                    keys.append(name)
                for k in keys:
                    use[k] = use.get(k, Fraction(0)) + parse_quantity(q)
        for name, q in (res.get("limits") or {}).items():  # an extended resource's request defaults to its limit
            if "/" in name and name not in (res.get("requests") or {}):
                use[f"requests.{name}"] = use.get(f"requests.{name}", Fraction(0)) + parse_quantity(q)
    return use


def _fmt(d: dict[str, Fraction]) -> str:
    return ",".join(f"{k}={int(v) if v.denominator == 1 else float(v)}" for k, v in sorted(d.items()))


def install(api: KubeAPI) -> None:
    def service_account(route: Route, obj: dict[str, Any]) -> None:
        if route.resource != PODS:
            return
        name = (obj.get("spec") or {}).get("serviceAccountName") or "default"
        if api._live((kmock.resource("v1/serviceaccounts"), route.namespace, name)) is None:
            raise _forbidden(obj, f'error looking up service account {route.namespace}/{name}: serviceaccount '
                                  f'"{name}" not found')

    def priority(route: Route, obj: dict[str, Any]) -> None:
        name = (obj.get("spec") or {}).get("priorityClassName") if route.resource == PODS else None
        if name and not name.startswith("system-") and api._live(
                (kmock.resource("scheduling.k8s.io/v1/priorityclasses"), None, name)) is None:
            raise _forbidden(obj, f"no PriorityClass with name {name} was found")

    def resource_quota(route: Route, obj: dict[str, Any]) -> None:
        if route.resource != PODS:
            return
        new = pod_usage(obj)
        used: dict[str, Fraction] = {}
        for _, pod in api._live_items(PODS, route.namespace):
            for k, v in pod_usage(pod).items():
                used[k] = used.get(k, Fraction(0)) + v
        for _, quota in api._live_items(kmock.resource("v1/resourcequotas"), route.namespace):
            hard = {k: parse_quantity(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()}
            exceeded = [k for k in hard if k in new and used.get(k, Fraction(0)) + new[k] > hard[k]]
            if exceeded:
                raise _forbidden(obj, "exceeded quota: {}, requested: {}, used: {}, limited: {}".format(
                    quota["metadata"]["name"], _fmt({k: new[k] for k in exceeded}),
                    _fmt({k: used.get(k, Fraction(0)) for k in exceeded}), _fmt({k: hard[k] for k in exceeded})))

    api.admission += [service_account, priority, resource_quota]

    def default_service_account(route: Route, obj: dict[str, Any]) -> None:
        if route.resource == NAMESPACES:
            ns = obj["metadata"]["name"]
            api.after_create.append(lambda: api.create("v1/serviceaccounts", ns, {"metadata": {"name": "default"}}))

    api.mutators.append(default_service_account)
