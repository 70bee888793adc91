"""The operator stays fair and awake (issue 24, point 4).

- The work queue has client-go's workqueue semantics (util/workqueue/queue.go: dirty and processing sets;
  a key re-added while processing goes to the back after Done): a table of situations against the pure
  queue with a fake clock, and the worker threads on top of it (a busy InferenceJob cannot starve a new one).
- Liveness fails when work waits and no pass finishes (a hung pass), and recovers.
- Every API request has a timeout and the client's sockets keepalive: a server that accepts and never
  answers costs a pass seconds, not for ever.
- The resync lists only unfinished InferenceJobs, page by page; the operator labels finished ones.
- Queue depth and pass latency are metrics.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from k8s.test_busy_cluster import spec_for
from plugins.k8s import GROUP, PLURAL, VERSION
from vesuvius_inference.k8s import clients, handlers
from vesuvius_inference.k8s.passes import Passes
from vesuvius_inference.k8s.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def take(q: WorkQueue):
    item = q.get(timeout=0)
    return None if item is None else item.key


# Each step: ("add", key) | ("get", expected key or None) | ("done", key) | ("tick", seconds) | ("order", [...])
CASES = {
    "fifo across keys": [("add", "a"), ("add", "b"), ("add", "c"), ("order", ["a", "b", "c"]),
                         ("get", "a"), ("get", "b"), ("get", "c"), ("get", None)],
    "stingy: added twice before its pass, processed once": [
        ("add", "a"), ("add", "b"), ("add", "a"), ("order", ["a", "b"]), ("get", "a"), ("get", "b"), ("get", None)],
    "one worker per key: re-added while processing waits for Done": [
        ("add", "a"), ("get", "a"), ("add", "a"), ("get", None), ("done", "a"), ("get", "a")],
    "re-dirtied goes to the back, behind keys that waited": [
        ("add", "a"), ("get", "a"), ("add", "a"), ("add", "b"), ("add", "c"), ("done", "a"),
        ("order", ["b", "c", "a"]), ("get", "b"), ("get", "c"), ("get", "a")],
    "not re-dirtied: gone after Done": [("add", "a"), ("get", "a"), ("done", "a"), ("get", None)],
    "min interval: a re-dirtied key waits after its last pass began": [
        ("interval", 5.0), ("add", "a"), ("get", "a"), ("add", "a"), ("tick", 1.0), ("done", "a"), ("add", "b"),
        ("get", "b"), ("get", None), ("tick", 3.9), ("get", None), ("tick", 0.2), ("get", "a")],
    "min interval does not delay a first pass or one long after": [
        ("interval", 5.0), ("add", "a"), ("get", "a"), ("tick", 10.0), ("done", "a"), ("add", "a"), ("get", "a")],
}


@pytest.mark.parametrize("name", list(CASES))
def test_workqueue_table(name):
    clock = Clock()
    q = WorkQueue(clock=clock)
    for op, arg in CASES[name]:
        if op == "interval":
            q.min_interval_s = arg
        elif op == "add":
            q.add(arg)
        elif op == "get":
            assert take(q) == arg, (name, op, arg)
        elif op == "done":
            q.done(arg)
        elif op == "tick":
            clock.t += arg
        elif op == "order":
            assert q.order() == arg, (name, q.order())


def test_payloads_reach_the_next_pass_and_waiting_is_measured():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add("a", [{"gone": 1}])
    clock.t += 2.0
    q.add("a", [{"gone": 2}])
    assert q.oldest_s() == 2.0 and q.depth() == 1
    item = q.get(timeout=0)
    assert item.payload == [{"gone": 1}, {"gone": 2}] and item.waited_s == 2.0
    clock.t += 7.0
    assert q.oldest_s() == 7.0 and q.depth() == 0 and q.processing() == 1  # a pass running for 7 s
    q.done("a")
    assert q.oldest_s() == 0.0


def test_a_busy_inferencejob_does_not_starve_a_new_one():
    """One worker; A's Jobs emit an event during every pass of A. B, asked for during A's first pass, runs
    before A's second (the old queue ran A again at once on the same thread, for as long as events came)."""
    order: list[str] = []
    passes: Passes

    def run(ns, name, gone):
        order.append(name)
        if name == "a" and order.count("a") <= 3:
            passes.request("ns", "a")  # an event of A's Jobs during its pass
            if order.count("a") == 1:
                passes.request("ns", "b")
        time.sleep(0.01)

    passes = Passes(run, min_interval_s=0.0, workers=1)
    passes.request("ns", "a")
    deadline = time.monotonic() + 5
    while passes.ran < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    passes.shutdown()
    assert order[:3] == ["a", "b", "a"], order


def test_liveness_fails_while_a_pass_hangs_and_recovers():
    clock = Clock()
    release = threading.Event()
    started = threading.Event()

    def run(ns, name, gone):
        started.set()
        release.wait(10)

    passes = Passes(run, min_interval_s=0.0, workers=1, clock=clock)
    try:
        assert handlers.liveness_problem(passes, clock.t, 60.0, now=clock.t) is None  # idle is alive
        clock.t += 1000.0  # ... however long it stays idle
        assert handlers.liveness_problem(passes, clock.t, 60.0, now=clock.t) is None
        passes.request("ns", "hung")
        assert started.wait(5)
        clock.t += 170.0
        assert handlers.liveness_problem(passes, clock.t, 60.0, now=clock.t) is None  # under 3 resync periods
        clock.t += 20.0
        problem = handlers.liveness_problem(passes, clock.t, 60.0, now=clock.t)
        assert problem and "no reconcile pass has finished for 1190 s" in problem and "the oldest for 190 s" in problem
        assert "1 passes running" in problem
        release.set()
        deadline = time.monotonic() + 5
        while passes.ran < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handlers.liveness_problem(passes, clock.t, 60.0, now=clock.t) is None
        # the resync loop itself stopped listing
        assert "resync has not listed" in handlers.liveness_problem(passes, clock.t - 200, 60.0, now=clock.t)
    finally:
        release.set()
        passes.shutdown()


def test_every_api_request_times_out_and_sockets_keep_alive(tmp_path, monkeypatch):
    """A server that accepts connections and never answers (a dropped NAT entry looks the same): a request
    through the operator's clients fails after the timeout instead of blocking its thread for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in range(16)], daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    import kubernetes

    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.setenv("VESUVIUS_API_TIMEOUT_SECONDS", "1")
    c = clients.build()
    pool_kw = c.custom.api_client.rest_client.pool_manager.connection_pool_kw
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in pool_kw["socket_options"]
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            c.custom.list_namespaced_custom_object(GROUP, VERSION, "ns", PLURAL)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - what the pass would see
            outcome.append(e)

    began = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(15)
    assert not t.is_alive(), "the request is still blocked after 15 s: no timeout"
    assert outcome and outcome[0] is not None and time.monotonic() - began < 10, outcome
    listener.close()
    for s in held:
        s.close()


def _health(op) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_resync_skips_finished_runs_and_liveness_sees_a_silent_api_server(cluster, operator, stub_controller):
    """A finished run is labelled and no longer listed by the resync (a paginated, label-selected list); an
    API server that stops answering the operator's reads makes every pass time out, and liveness fails
    within a few resync periods, then recovers once it answers again. Queue depth and latency are metrics."""
    operator.kill()
    operator.env["VESUVIUS_API_TIMEOUT_SECONDS"] = "2"
    operator.start()
    cluster.create_ij(spec_for("done-run", parts=1))
    done = cluster.wait_phase("done-run", "Succeeded", timeout=90)
    cluster.wait("the finished label", lambda: (cluster.ij("done-run")["metadata"].get("labels") or {}).get(
        handlers.FINISHED) == "true")
    for i in range(3):
        cluster.create_ij(spec_for(f"pending-{i}", parts=1, suspend=True))
    c = clients.build(cluster.client)
    handlers.configure_scope([cluster.namespace], False)
    listed = handlers._candidates(c.custom, page=2)
    assert sorted(n for _, n in listed) == ["pending-0", "pending-1", "pending-2"], listed
    assert c.requests.value >= 2  # pages of two
    # the selection is the API server's: an object labelled finished is not even sent
    cluster.patch_ij("pending-2", {"metadata": {"labels": {handlers.FINISHED: "true"}}})
    assert sorted(n for _, n in handlers._candidates(c.custom, page=2)) == ["pending-0", "pending-1"]
    assert done["status"]["phase"] == "Succeeded"
    text = operator.metrics()
    for metric in ("vesuvius_operator_queue_depth ", "vesuvius_operator_pass_seconds_count ",
                   'vesuvius_operator_pass_seconds_bucket{le="+Inf"} ', "vesuvius_operator_queue_oldest_seconds "):
        assert any(ln.startswith(metric) for ln in text.splitlines()), metric
    assert int(next(ln for ln in text.splitlines() if ln.startswith("vesuvius_operator_pass_seconds_count ")
                    ).split()[1]) > 0
    # the API server stops answering reads of InferenceJobs: every pass times out (without a timeout, every
    # reconcile thread would hang there while the probe stayed green)
    assert _health(operator) == 200
    fault = cluster.server.call(cluster.api.fail_requests, "GET", r"/inferencejobs/[^/]+$", 500, "silent",
                                times=10_000, hang_s=30.0)
    # polled often: the probe fails only while a hung pass is older than 3 resync periods, a window of a few
    # seconds in each cycle of a pass's timed-out tries (polled once a second, this wait took 12 to 43 s)
    cluster.wait("liveness failing", lambda: _health(operator) == 500, timeout=60, interval=0.2)
    fault.times = fault.hang_s = 0  # it answers again, the requests it held too
    cluster.wait("liveness back", lambda: _health(operator) == 200, timeout=60, interval=0.2)


def test_every_metric_family_is_exposed_once():
    """Two modules measured the queue and the passes; a second TYPE line for a family makes Prometheus
    reject the whole scrape ("second TYPE line for metric name"), so each family is written once."""
    from vesuvius_inference.k8s.handlers import queue_metrics
    from vesuvius_inference.k8s.metrics import Registry
    from vesuvius_inference.k8s.passes import Passes

    passes = Passes(lambda *a: None, workers=0)
    registry = Registry()
    registry.sections.append(lambda: queue_metrics(passes))
    passes.request("ns", "a", [])
    text = registry.render()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
    assert "vesuvius_operator_queue_depth 1" in text.splitlines()  # the depth of this scrape, not the last one
