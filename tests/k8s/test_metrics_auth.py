"""/metrics for the cluster's monitoring only, and metrics that do not outlive their InferenceJobs.

End to end: the real operator, with exactly the chart's RBAC and ``--metrics-auth=kubernetes`` (the chart's
default), against the emulated API server, which authenticates tokens (TokenReview) and authorises by the
RBAC objects the chart installed (SubjectAccessReview), in the shapes of authentication.k8s.io/v1 and
authorization.k8s.io/v1. Prometheus' ServiceAccount is bound to the chart's metrics-reader ClusterRole
through ``metrics.readers``.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

import pytest
from helpers import wait_until
from plugins.k8s import GROUP, NAMESPACE, PLURAL, VERSION
from securecluster import secure_cluster
from vesuvius_inference.k8s.metrics import BUCKETS, Health, Registry
from vesuvius_inference.k8s.metricsauth import ReviewAuth

READERS = {"metrics": {"readers": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]}}


def _get(port: int, token: str | None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(what: str, fn, timeout: float = 60.0):
    return wait_until(what, fn, timeout=timeout)


def test_metrics_need_a_token_the_api_server_authenticates_and_authorises(tmp_path):
    with secure_cluster(tmp_path, READERS, admission_policy=False) as cl:
        op = cl.operator()
        op.extra_args = []  # the operator's default: --metrics-auth=kubernetes, as the chart sets it
        try:
            op.start()
            port = op.metrics_port
            assert _get(port, None) == (401, "Unauthorized\n")
            assert _get(port, "not-a-token") == (401, "Unauthorized\n")
            assert _get(port, "mallory-token") == (403, "Authorization denied for user mallory\n")
            assert _get(port, "alice-token") == (403, "Authorization denied for user alice\n")  # an author is not
            status, body = _get(port, "prometheus-token")
            assert status == 200 and "vesuvius_operator_pass_seconds_bucket" in body, body
            # the reviews the operator asked for, as the API server saw them
            reviews = [(kind, spec, st) for kind, spec, st in cl.api.answered]
            assert ("TokenReview", {"token": "prometheus-token"}) in [(k, s) for k, s, _ in reviews]
            sar = [(s, st) for k, s, st in reviews if k == "SubjectAccessReview"
                   and s["user"] == "system:serviceaccount:monitoring:prometheus"]
            assert len(sar) == 1 and sar[0][1]["allowed"] is True
            assert sar[0][0]["nonResourceAttributes"] == {"path": "/metrics", "verb": "get"}
            assert "system:serviceaccounts:monitoring" in sar[0][0]["groups"] and sar[0][0]["uid"]
            assert "ClusterRole \"rel-vesuvius-inference-vesuvius-metrics-reader\"" in sar[0][1]["reason"]
            # answers are cached (controller-runtime's TTLs): a second scrape asks the API server nothing
            before = len(cl.api.answered)
            assert _get(port, "prometheus-token")[0] == 200
            assert len(cl.api.answered) == before
            # the operator made the reviews with the chart's metrics-auth ClusterRole, nothing more
            operator = f"system:serviceaccount:{NAMESPACE}:rel-vesuvius-inference"
            made = {(a.group, a.resource, a.verb) for who, a, ok in cl.api.rbac.checked if who == operator and ok}
            assert {("authentication.k8s.io", "tokenreviews", "create"),
                    ("authorization.k8s.io", "subjectaccessreviews", "create")} <= made
            assert not [a for who, a, ok in cl.api.rbac.checked if who == operator and not ok]

            # series of a deleted InferenceJob go at once; the operator's health is there
            cl.create_ij("alice-token", "short-lived")
            series = 'vesuvius_inferencejob_parts_total{namespace="vesuvius",name="short-lived"}'
            _wait("its series", lambda: series in _get(port, "prometheus-token")[1])
            cl.custom("kmock-token").delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, "short-lived")
            _wait("its series to go", lambda: series not in _get(port, "prometheus-token")[1])
            body = _get(port, "prometheus-token")[1]
            last = float(re.search(r"^vesuvius_operator_last_successful_pass_timestamp_seconds (\S+)$", body, re.M)[1])
            assert time.time() - 120 < last <= time.time()
            assert "vesuvius_operator_queue_depth " in body and "vesuvius_operator_api_errors_total" in body
        finally:
            op.kill()


def test_an_unreachable_api_server_refuses_never_allows():
    import kubernetes

    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard: connection refused
    cfg.retries = 0
    auth = ReviewAuth(kubernetes.client.ApiClient(cfg))
    verdict = auth.check("Bearer some-token", "/metrics", "get")
    assert (verdict.code, verdict.message) == (500, "Authentication failed")
    assert auth.check("Basic dXNlcjpwYXNz", "/metrics", "get").code == 401  # only bearer tokens


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _status(phase: str) -> dict:
    return {"phase": phase, "parts": {"succeeded": 1, "total": 4}}


def test_series_of_long_finished_and_unseen_inferencejobs_expire():
    clock = Clock()
    reg = Registry(finished_ttl_s=3600, stale_s=900, clock=clock, health=Health())
    reg.record("ns", "done", _status("Succeeded"))
    reg.record("ns", "running", _status("Predicting"))
    reg.record("ns", "vanished", _status("Predicting"))
    clock.t += 600
    reg.record("ns", "running", _status("Predicting"))  # the resync refreshes live ones
    reg.record("ns", "done", _status("Succeeded"))  # a later pass does not restart a finished one's clock
    clock.t += 600
    assert 'name="vanished"' not in reg.render() and reg.tracked() == {("ns", "done"), ("ns", "running")}
    clock.t += 2500
    reg.record("ns", "running", _status("Predicting"))
    assert reg.tracked() == {("ns", "done"), ("ns", "running")}
    clock.t += 200  # 3700 s after "done" was first seen finished
    text = reg.render()
    assert 'name="done"' not in text and 'name="running"' in text
    assert 'vesuvius_inferencejobs{phase="Succeeded"} 0' in text


def test_health_metrics():
    h = Health(clock=lambda: 1234.5)
    h.set_queue_depth(7)
    h.observe_pass(0.02)
    h.observe_pass(3.0)
    h.observe_pass(0.2, ok=False)
    h.count_api_error(503)
    h.count_api_error(503)
    h.count_api_error("none")
    lines = h.render()
    assert "vesuvius_operator_queue_depth 7" in lines
    buckets = {line.split('le="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1])
               for line in lines if line.startswith("vesuvius_operator_pass_seconds_bucket")}
    assert buckets["0.01"] == 0 and buckets["0.025"] == 1 and buckets["0.25"] == 2 and buckets["5.0"] == 3
    assert buckets["+Inf"] == 3 and len(buckets) == len(BUCKETS) + 1
    assert "vesuvius_operator_pass_failures_total 1" in lines
    assert 'vesuvius_operator_api_errors_total{code="503"} 2' in lines
    assert 'vesuvius_operator_api_errors_total{code="none"} 1' in lines
    assert "vesuvius_operator_last_successful_pass_timestamp_seconds 1234.5" in lines


def _self_signed(directory, cn: str) -> None:
    """tls.crt and tls.key for ``cn`` (127.0.0.1 as a SAN), written as a kubernetes.io/tls Secret's files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_metrics_over_https_with_a_certificate_reloaded_when_renewed(tmp_path):
    import os
    import ssl

    from vesuvius_inference.k8s.metrics import serve
    from vesuvius_inference.k8s.metricsauth import CertFiles

    _self_signed(tmp_path, "first")
    server = serve(Registry(health=Health()), 0, host="127.0.0.1", tls=CertFiles(str(tmp_path), check_s=0))
    port = server.server_address[1]
    try:
        def fetch() -> tuple[int, str]:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "tls.crt"))
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10, context=ctx) as r:
                return r.status, r.read().decode()

        status, body = fetch()
        assert status == 200 and "vesuvius_operator_queue_depth" in body
        with pytest.raises(OSError):  # plain HTTP gets no answer from a TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        # cert-manager renews the Secret; the kubelet rewrites the files: the next connection gets the new one
        old = (tmp_path / "tls.crt").read_text()
        _self_signed(tmp_path, "renewed")
        later = os.stat(tmp_path / "tls.crt").st_mtime + 5
        os.utime(tmp_path / "tls.crt", (later, later))
        assert ssl.get_server_certificate(("127.0.0.1", port)).strip() == (tmp_path / "tls.crt").read_text().strip()
        assert fetch()[0] == 200 and old != (tmp_path / "tls.crt").read_text()
        # a broken renewal keeps the last good certificate
        (tmp_path / "tls.key").write_text("garbage")
        os.utime(tmp_path / "tls.key", (later + 5, later + 5))
        assert fetch()[0] == 200
    finally:
        server.shutdown()
