"""The operator's own settings, each declared once: its flag or environment variable, default and help.

The same mechanism as the stages' settings (contract/config.py through contract/settings.py): a dataclass
field whose ``Opt`` carries the spellings, ``env``, ``help`` and ``parse``. ``OperatorFlags`` are the
command line of ``vesuvius-inference operator`` (the Helm chart's Deployment args: its deployment.yaml);
``OperatorEnv`` the environment the chart sets (the worker defaults: values ``worker.*``) or that an admin
adds through ``extraEnv`` (the timings). From these declarations alone: the operator's parser and its
``--help`` list of variables (operator_main.py), ``manifests.defaults_from_env``, ``observe.Settings``,
the metrics' retention, the API timeout and the handlers' resync and liveness.

Unlike a stage's ``setting(env=...)`` the fields keep their static default: ``OperatorEnv()`` is the
declared defaults, and the environment is read only by :func:`from_env` / :func:`env_value` (at the edge,
when the operator starts or renders). An unset or empty variable means the default. Kubernetes'
controller-manager options are the model (``cmd/kube-controller-manager/app/options``: each option
declared once with its flag, default and help, ``AddFlags``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vesuvius_inference import __version__
from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.settings import Opt, env_default

# One version for package, images and chart: the worker image the operator runs by default.
WORKER_IMAGE = f"ghcr.io/scrollprize/vesuvius-inference-worker:{__version__}"
GPU_TOLERATIONS: list[dict[str, Any]] = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def op_setting(default: Any, *names: str, help: str, **kw: Any) -> Any:
    """A dataclass field declaring one operator setting (``default`` may be a factory: ``dict``, a lambda)."""
    factory = callable(default)
    opt = Opt(tuple(names), help, fallback=default() if factory else default, **kw)
    if factory:
        return dataclasses.field(default_factory=default, metadata={"opt": opt})
    return dataclasses.field(default=default, metadata={"opt": opt})


def _json(text: str, kind: type, example: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}); e.g. {example}") from None
    if not isinstance(value, kind):
        shape = "object" if kind is dict else "list"
        raise argparse.ArgumentTypeError(f"must be a JSON {shape}, got {type(value).__name__}")
    return value


def json_dict(text: str) -> dict[str, Any]:
    return _json(text, dict, '{"nvidia.com/gpu.present": "true"}')


def json_list(text: str) -> list[Any]:
    return _json(text, list, '[{"key": "nvidia.com/gpu", "operator": "Exists"}]')


@dataclass(frozen=True, kw_only=True)
class OperatorFlags:
    """``vesuvius-inference operator``'s command line (operator_main.parser builds it from these)."""

    namespace: list[str] = op_setting(list, "-n", "--namespace", repeat=True,
                                      help="watch this namespace (repeatable)")
    all_namespaces: bool = op_setting(False, "-A", "--all-namespaces", help="watch every namespace")
    standalone: bool = op_setting(True, "--standalone", off=("--peering",),
                                  help="no peering (one replica, Recreate strategy); the default")
    cluster_discovery: bool = op_setting(
        False, "--cluster-discovery",
        help="let kopf watch CRDs (and Namespaces) for changes at runtime; needs cluster-scoped list/watch "
             "(the chart's rbac.clusterDiscovery). Off: no cluster-scoped permission is used")
    liveness: str = op_setting("http://0.0.0.0:8080/healthz", "--liveness",
                               help="kopf liveness endpoint ('' = off)")
    metrics_port: int = op_setting(8081, "--metrics-port", parse=int,
                                   help="serve Prometheus metrics on this port at /metrics (0 = off)")
    metrics_auth: str = op_setting(
        "kubernetes", "--metrics-auth", choices=("kubernetes", "none"),
        help="who may read /metrics: kubernetes (default) = a bearer token the API server authenticates "
             "(TokenReview) for a user it allows `get` on the non-resource URL /metrics "
             "(SubjectAccessReview); none = anyone who reaches the port")
    metrics_cert_dir: str = op_setting(
        "", "--metrics-cert-dir",
        help="serve /metrics over HTTPS with tls.crt and tls.key from this directory (a kubernetes.io/tls "
             "Secret, e.g. cert-manager's; reloaded when they change); default: plain HTTP")
    log_level: str = op_setting("INFO", "--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="")


# --namespace and --all-namespaces exclude each other; --peering is --standalone's off spelling (help there).
EXCLUSIVE = ("namespace", "all_namespaces")
OFF_HELP = {"standalone": "use kopf peering"}


@dataclass(frozen=True, kw_only=True)
class OperatorEnv:
    """The operator's environment: the worker defaults the chart sets from its values, and timings."""

    # the Jobs' defaults when an InferenceJob leaves them out (values worker.*; manifests.OperatorDefaults)
    worker_image: str = op_setting(WORKER_IMAGE, env="VESUVIUS_WORKER_IMAGE",
                                   help="the worker image (values worker.image)")
    worker_pull_policy: str = op_setting("IfNotPresent", env="VESUVIUS_WORKER_PULL_POLICY",
                                         help="its imagePullPolicy (values worker.image.pullPolicy)")
    gpu_node_selector: dict[str, str] = op_setting(dict, env="VESUVIUS_GPU_NODE_SELECTOR", parse=json_dict,
                                                   help="the GPU pods' nodeSelector, JSON (worker.gpu)")
    gpu_tolerations: list[dict[str, Any]] = op_setting(
        lambda: [dict(t) for t in GPU_TOLERATIONS], env="VESUVIUS_GPU_TOLERATIONS", parse=json_list,
        help="the GPU pods' tolerations, JSON (values worker.gpu)")
    queue_name: str | None = op_setting(
        None, env="VESUVIUS_QUEUE_NAME",
        help="Kueue LocalQueue of the predict (GPU) Jobs (values worker.queueName)")
    cpu_queue_name: str | None = op_setting(
        None, env="VESUVIUS_CPU_QUEUE_NAME",
        help="Kueue LocalQueue of blend, finalize and check Jobs (values worker.cpuQueueName)")
    worker_service_account: str | None = op_setting(
        None, env="VESUVIUS_WORKER_SERVICE_ACCOUNT",
        help="the worker pods' ServiceAccount when a spec names none (values worker.serviceAccount)")
    # timings (extraEnv)
    resync_s: float = op_setting(60.0, env="VESUVIUS_RESYNC_SECONDS", parse=float,
                                 help="reconcile every unfinished InferenceJob this often (0 = off)")
    liveness_resyncs: float = op_setting(
        3.0, env="VESUVIUS_LIVENESS_RESYNCS", parse=float,
        help="liveness fails when work waited this many resync periods and no pass finished")
    min_pass_interval_s: float = op_setting(1.0, env="VESUVIUS_MIN_PASS_INTERVAL", parse=float,
                                            help="seconds between two passes of one InferenceJob")
    stuck_pod_s: float = op_setting(300.0, env="VESUVIUS_STUCK_POD_SECONDS", parse=float,
                                    help="report pods that cannot start or be scheduled after this long")
    diagnose_s: float = op_setting(30.0, env="VESUVIUS_DIAGNOSE_SECONDS", parse=float,
                                   help="read pods or Events to explain a stall at most this often per "
                                        "InferenceJob")
    progress_s: float = op_setting(
        60.0, env="VESUVIUS_PROGRESS_SECONDS", parse=float,
        help="read the last log lines of running pods this often (0 = off: then exit 74 costs a retry)")
    progress_pods: int = op_setting(8, env="VESUVIUS_PROGRESS_PODS", parse=int,
                                    help="pods whose log is read per interval and InferenceJob")
    metrics_finished_s: float = op_setting(3600.0, env="VESUVIUS_METRICS_FINISHED_SECONDS", parse=float,
                                           help="how long metrics keep a finished InferenceJob")
    metrics_stale_s: float = op_setting(900.0, env="VESUVIUS_METRICS_STALE_SECONDS", parse=float,
                                        help="how long metrics keep an unfinished one no pass refreshed")
    api_timeout_s: float = op_setting(60.0, env="VESUVIUS_API_TIMEOUT_SECONDS", parse=float,
                                      help="read timeout of every API request (connect: at most 10)")


def opt_of(cls: type, name: str) -> Opt:
    return next(f.metadata["opt"] for f in dataclasses.fields(cls) if f.name == name)


def env_value(name: str, env: Mapping[str, str] | None = None) -> Any:
    """One operator setting from the environment (its default when unset or empty); ValueError naming
    the variable when it does not parse."""
    try:
        return env_default(opt_of(OperatorEnv, name), env)
    except BadArguments as e:
        raise ValueError(str(e)) from None


def from_env(env: Mapping[str, str] | None = None) -> OperatorEnv:
    """Every operator setting from the environment (``os.environ`` unless given)."""
    return OperatorEnv(**{f.name: env_value(f.name, env) for f in dataclasses.fields(OperatorEnv)})


def env_help() -> str:
    """The variables, their defaults and what they do: the operator's --help epilog."""
    parts = []
    for f in dataclasses.fields(OperatorEnv):
        opt: Opt = f.metadata["opt"]
        value = opt.fallback
        shown = json.dumps(value) if isinstance(value, (dict, list)) else f"{value:g}" if isinstance(
            value, float) else "unset" if value in (None, "") else str(value)
        parts.append(f"{opt.env}={shown}: {opt.help}")
    return "Environment: " + "; ".join(parts) + "."


def add_flags(p: argparse.ArgumentParser) -> None:
    """The operator's flags on ``p``, from ``OperatorFlags``."""
    exclusive = p.add_mutually_exclusive_group()
    for f in dataclasses.fields(OperatorFlags):
        opt: Opt = f.metadata["opt"]
        into: Any = exclusive if f.name in EXCLUSIVE else p
        kw: dict[str, Any] = {"dest": f.name, "default": opt.fallback}
        if opt.help:
            kw["help"] = opt.help
        if isinstance(opt.fallback, bool):
            into.add_argument(*opt.names, action="store_true", **kw)
            if opt.off:
                p.add_argument(*opt.off, dest=f.name, action="store_false", help=OFF_HELP.get(f.name))
            continue
        if opt.repeat:
            into.add_argument(*opt.names, action="append", **kw)
            continue
        into.add_argument(*opt.names, type=opt.parse, choices=opt.choices, **kw)
