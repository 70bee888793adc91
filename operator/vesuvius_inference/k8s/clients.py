"""The API clients a pass is given: built once per process, every request counted.

One ``ApiClient`` (in-cluster config, else the kubeconfig) serves every pass: loading the
configuration and building a connection pool per pass, as the operator used to, cost more than the
pass. The count of requests (``requests``) is what the operator's metrics and bench_operator report
per pass; it is taken at the REST layer, below every API class.

Every request has a timeout (``_request_timeout``, connect and read, unless the call passes its own:
``VESUVIUS_API_TIMEOUT_SECONDS``, default 60 s to read, 10 s to connect), set at that same layer so no
call site can forget it, and the client's sockets use TCP keepalive with client-go's timings
(kubernetes.utils.keepalive: idle 30 s, 9 probes 15 s apart; client-go transport/cache.go dials with a
30 s keepalive): a pass blocked on a connection that a NAT or load balancer silently dropped used to
hold its reconcile thread for ever (issue 24: one API call blocked >30 s in a test), and the liveness
probe stayed green meanwhile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.k8s.opsettings import env_value


@dataclass
class Counter:
    value: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.value += n


@dataclass
class Clients:
    batch: Any
    custom: Any
    core: Any
    requests: Counter


def timeout_s() -> tuple[float, float]:
    """(connect, read) seconds of every API request."""
    read: float = env_value("api_timeout_s")
    return min(10.0, read), read


def _counting(request: Any, counter: Counter, timeout: tuple[float, float]) -> Any:
    from vesuvius_inference.k8s.metrics import count_api_error

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter.add()
        if not kwargs.get("_request_timeout"):
            kwargs["_request_timeout"] = timeout
        try:
            response = request(*args, **kwargs)
        except Exception as e:  # no answer (connection refused, timeout): the operator's health metrics count it
            count_api_error(getattr(e, "status", 0) or "none")
            raise
        if int(getattr(response, "status", 200) or 200) >= 400:
            count_api_error(response.status)
        return response

    return counted


def keepalive_options() -> list[tuple[int, int, int]]:
    """urllib3 socket options: its defaults (no Nagle) plus TCP keepalive with client-go's timings."""
    try:
        from kubernetes.utils.keepalive import tcp_keepalive_socket_options

        return tcp_keepalive_socket_options()
    except ImportError:  # an older client: the same by hand
        import socket

        import urllib3

        opts = list(urllib3.connection.HTTPConnection.default_socket_options)
        opts.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 9)):
            if hasattr(socket, name):
                opts.append((socket.IPPROTO_TCP, getattr(socket, name), value))
        return opts


def build(api_client: Any = None) -> Clients:
    """Clients over ``api_client`` (default: in-cluster config, else the kubeconfig)."""
    import kubernetes

    if api_client is None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        configuration = kubernetes.client.Configuration.get_default_copy()
        configuration.socket_options = keepalive_options()  # read when the ApiClient builds its pool
        api_client = kubernetes.client.ApiClient(configuration)
    from vesuvius_inference import __version__

    api_client.user_agent = f"vesuvius-inference-operator/{__version__}"  # names it in audit logs
    counter = Counter()
    rest = api_client.rest_client
    rest.request = _counting(rest.request, counter, timeout_s())
    return Clients(kubernetes.client.BatchV1Api(api_client), kubernetes.client.CustomObjectsApi(api_client),
                   kubernetes.client.CoreV1Api(api_client), counter)
