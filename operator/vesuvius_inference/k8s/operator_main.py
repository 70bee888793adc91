"""``vesuvius-inference operator``: run the kopf operator (what the Helm chart's Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vesuvius-inference operator", description="Run the InferenceJob operator.",
        epilog="Environment: VESUVIUS_WORKER_IMAGE, VESUVIUS_WORKER_PULL_POLICY, VESUVIUS_GPU_NODE_SELECTOR, "
               "VESUVIUS_GPU_TOLERATIONS, VESUVIUS_QUEUE_NAME, VESUVIUS_CPU_QUEUE_NAME (defaults of the child Jobs, "
               "set by the Helm chart); VESUVIUS_RESYNC_SECONDS (reconcile every unfinished InferenceJob this "
               "often, default 60, 0 = off); VESUVIUS_STUCK_POD_SECONDS (report pods that cannot start or be "
               "scheduled after this long, default 300); VESUVIUS_DIAGNOSE_SECONDS (read pods or Events to explain "
               "a stall at most this often per InferenceJob, default 30); VESUVIUS_PROGRESS_SECONDS and "
               "VESUVIUS_PROGRESS_PODS (read the last log lines of this many running pods this often, defaults 60 "
               "and 8, 0 = off); VESUVIUS_MIN_PASS_INTERVAL (seconds between two passes of one InferenceJob, "
               "default 1); VESUVIUS_WORKER_SERVICE_ACCOUNT (the worker pods' ServiceAccount when a spec names "
               "none); VESUVIUS_POLICY (the cluster admin's policy: allowed images, ServiceAccounts and Secrets, "
               "JSON, set by the chart; unset = unrestricted); VESUVIUS_METRICS_FINISHED_SECONDS and "
               "VESUVIUS_METRICS_STALE_SECONDS (how long metrics keep a finished InferenceJob, and an unfinished "
               "one no pass refreshed, defaults 3600 and 900).")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--standalone", action="store_true", default=True,
                   help="no peering (one replica, Recreate strategy); the default")
    p.add_argument("--peering", dest="standalone", action="store_false", help="use kopf peering")
    p.add_argument("--cluster-discovery", action="store_true",
                   help="let kopf watch CRDs (and Namespaces) for changes at runtime; needs cluster-scoped list/watch "
                        "(the chart's rbac.clusterDiscovery). Off: no cluster-scoped permission is used")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint ('' = off)")
    p.add_argument("--metrics-port", type=int, default=8081,
                   help="serve Prometheus metrics on this port at /metrics (0 = off)")
    p.add_argument("--metrics-auth", choices=["kubernetes", "none"], default="kubernetes",
                   help="who may read /metrics: kubernetes (default) = a bearer token the API server authenticates "
                        "(TokenReview) for a user it allows `get` on the non-resource URL /metrics "
                        "(SubjectAccessReview); none = anyone who reaches the port")
    p.add_argument("--metrics-cert-dir", default="",
                   help="serve /metrics over HTTPS with tls.crt and tls.key from this directory (a kubernetes.io/tls "
                        "Secret, e.g. cert-manager's; reloaded when they change); default: plain HTTP")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(argv or []))
    if not args.namespace and not args.all_namespaces:
        parser().error("pass --namespace NS (repeatable) or --all-namespaces")
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(name)s %(message)s")
    from vesuvius_inference.k8s.policy import Policy

    try:
        policy = Policy.from_env()
    except ValueError as e:
        print(f"error: {e}; set it through the chart's policy values", file=sys.stderr)
        return 2
    logging.getLogger("vesuvius_inference.operator").info(
        "policy: %s", f"images {policy.images}, ServiceAccounts {policy.service_accounts}, Secrets {policy.secrets}"
        f"{' or labelled ' + policy.secret_label if policy.secret_label else ''}" if policy.enforced else
        "none (VESUVIUS_POLICY unset): InferenceJobs may choose any image, Secret and ServiceAccount")
    import kopf

    from vesuvius_inference.k8s import handlers  # registers the handlers

    if args.metrics_cert_dir and args.metrics_port:
        from vesuvius_inference.k8s.metricsauth import CertFiles

        try:
            CertFiles(args.metrics_cert_dir).context()
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    handlers.configure_scope(args.namespace, args.all_namespaces, args.metrics_port,
                             metrics_auth=args.metrics_auth,
                             metrics_cert_dir=args.metrics_cert_dir)

    @kopf.on.startup()
    def _scope(settings: kopf.OperatorSettings, **_: object) -> None:
        # Without scanning kopf still discovers resources once through /apis (allowed to everyone);
        # it only stops watching CRDs and Namespaces, which would need cluster-scoped RBAC.
        settings.scanning.disabled = not args.cluster_discovery

    kopf.run(standalone=args.standalone, namespaces=args.namespace or (), clusterwide=args.all_namespaces,
             liveness_endpoint=args.liveness or None)
    return 0
