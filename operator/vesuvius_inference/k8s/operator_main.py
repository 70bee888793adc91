"""``vesuvius-inference operator``: run the kopf operator (what the Helm chart's Deployment runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def parser() -> argparse.ArgumentParser:
    """The flags and the environment's list come from their declarations (opsettings.py)."""
    from vesuvius_inference.k8s.opsettings import add_flags, env_help
    from vesuvius_inference.k8s.policy import ENV as POLICY_ENV

    p = argparse.ArgumentParser(
        prog="vesuvius-inference operator", description="Run the InferenceJob operator.",
        epilog=env_help() + f" {POLICY_ENV}: the cluster admin's policy (allowed images, ServiceAccounts and "
                            "Secrets, JSON, set by the chart; unset = unrestricted).")
    add_flags(p)
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

    # namespaces: a list, empty with --all-namespaces (kopf's default is (); None crashed its namespace observer
    # with "'NoneType' object is not iterable" at start, so the chart's allNamespaces mode never ran)
    kopf.run(standalone=args.standalone, namespaces=args.namespace or (), clusterwide=args.all_namespaces,
             liveness_endpoint=args.liveness or None)
    return 0
