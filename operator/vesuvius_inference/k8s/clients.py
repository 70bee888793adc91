"""The API clients a pass is given: built once per process, every request counted.

One ``ApiClient`` (in-cluster config, else the kubeconfig) serves every pass: loading the
configuration and building a connection pool per pass, as the operator used to, cost more than the
pass. The count of requests (``requests``) is what the operator's metrics and bench_operator report
per pass; it is taken at the REST layer, below every API class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


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


def _counting(request: Any, counter: Counter) -> Any:
    from .metrics import count_api_error

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter.add()
        try:
            response = request(*args, **kwargs)
        except Exception as e:  # no answer (connection refused, timeout): the operator's health metrics count it
            count_api_error(getattr(e, "status", 0) or "none")
            raise
        if int(getattr(response, "status", 200) or 200) >= 400:
            count_api_error(response.status)
        return response

    return counted


def build(api_client: Any = None) -> Clients:
    """Clients over ``api_client`` (default: in-cluster config, else the kubeconfig)."""
    import kubernetes

    if api_client is None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        api_client = kubernetes.client.ApiClient()
    from .. import __version__

    api_client.user_agent = f"vesuvius-inference-operator/{__version__}"  # names it in audit logs
    counter = Counter()
    rest = api_client.rest_client
    rest.request = _counting(rest.request, counter)
    return Clients(kubernetes.client.BatchV1Api(api_client), kubernetes.client.CustomObjectsApi(api_client),
                   kubernetes.client.CoreV1Api(api_client), counter)
