"""``vesuvius-inference render -f INFERENCEJOB.yaml [--retry-parts RANGES]``: the child Jobs the operator
would create, as YAML documents, the way ``helm template`` shows a chart.

The Jobs come from the same functions the operator calls (manifests.py), with the defaults it reads
from the environment the Helm chart sets (manifests.defaults_from_env's variables), and a spec the
operator would refuse (checks.refusals, or the admin's policy in VESUVIUS_POLICY: policy.py, all but
a Secret's labels) exits 2 with one line. Needs neither torch nor a cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from vesuvius_inference.contract.ranges import parse_ranges
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s.checks import refusals
from vesuvius_inference.k8s.policy import Policy, violations
from vesuvius_inference.k8s.spec import parse

EXIT_REFUSED = 2


class RenderError(Exception):
    """The input cannot be rendered: one line for the user."""


def load(path: str) -> dict[str, Any]:
    """The one InferenceJob in a YAML file ('-' = stdin)."""
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as e:
        raise RenderError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise RenderError(f"{path} is not YAML: {str(e).splitlines()[0]}") from None
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") == "InferenceJob"]
    if len(found) != 1:
        raise RenderError(f"{path} holds {len(found)} InferenceJob documents; give exactly one")
    doc = found[0]
    if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
        raise RenderError(f"{path}: the InferenceJob has no metadata.name")
    if not isinstance(doc.get("spec"), dict):
        raise RenderError(f"{path}: the InferenceJob has no spec")
    return doc


def render(doc: dict[str, Any], retry_parts: str | None = None,
           defaults: manifests.OperatorDefaults | None = None) -> list[dict[str, Any]]:
    """The Jobs the operator creates for ``doc``: predict, blend and finalize, or with ``retry_parts`` the
    retry Job the next bump of spec.retryFailedParts creates over those parts."""
    try:
        d = defaults or manifests.defaults_from_env()
    except ValueError as e:
        raise RenderError(str(e)) from None
    meta = doc["metadata"]
    name, namespace, uid = meta["name"], meta.get("namespace") or "default", meta.get("uid") or ""
    spec = parse(doc["spec"])
    if retry_parts is not None:
        try:
            ids = sorted(parse_ranges(retry_parts))
        except ValueError:
            raise RenderError(f"--retry-parts {retry_parts!r}: expected part ids and ranges like 3,17,40-42") from None
        if not ids or ids[-1] >= spec.parts:
            raise RenderError(f"--retry-parts {retry_parts!r}: part ids must be in 0..{spec.parts - 1}")
        attempt = int(spec["retryFailedParts"] or 0) + 1
        spec = parse(dict(spec.raw, retryFailedParts=attempt))
    try:
        policy = Policy.from_env()
    except ValueError as e:
        raise RenderError(str(e)) from None
    # the admin's policy too (VESUVIUS_POLICY, as the chart sets it); a Secret's labels are the cluster's
    problems = refusals(name, spec, d) or violations(spec.raw, policy, judge_labels=False)
    if problems:
        raise RenderError(f"{name}: the operator would refuse it: {'; '.join(problems)}")
    if retry_parts is not None:
        return [manifests.predict_job(name, namespace, uid, spec=spec, defaults=d, part_ids=ids,
                                      attempt=int(spec["retryFailedParts"]))]
    return [manifests.predict_job(name, namespace, uid, spec=spec, defaults=d),
            manifests.blend_job(name, namespace, uid, spec=spec, defaults=d),
            manifests.finalize_job(name, namespace, uid, spec=spec, defaults=d)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vesuvius-inference render",
        description="Print the Jobs the operator would create for an InferenceJob (predict, blend, finalize), "
                    "with the defaults it takes from the environment the Helm chart sets.",
        epilog="ownerReferences are included when the file carries metadata.uid (kubectl get ij NAME -o yaml). "
               "Exit codes: 0 rendered, 2 bad arguments or a spec the operator would refuse.")
    p.add_argument("-f", "--filename", required=True, help="InferenceJob YAML ('-' for stdin)")
    p.add_argument("--retry-parts", metavar="RANGES", default=None,
                   help="render the retry Job over these part ids (e.g. 3,17,40-42) that the next bump of "
                        "spec.retryFailedParts would create")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(argv or []))
    try:
        jobs = render(load(args.filename), args.retry_parts)
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    sys.stdout.write(yaml.safe_dump_all(jobs, sort_keys=False, width=200))
    return 0
