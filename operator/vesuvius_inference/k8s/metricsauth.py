"""``/metrics`` for the cluster's monitoring only: every request authenticated and authorised by the API server.

A port of controller-runtime's ``filters.WithAuthenticationAndAuthorization``
(sigs.k8s.io/controller-runtime pkg/metrics/filters/filters.go), the successor of the kube-rbac-proxy
sidecar that kubebuilder projects used to put in front of ``/metrics``:

1. Authentication: the request's ``Authorization: Bearer <token>`` goes to the API server as an
   ``authentication.k8s.io/v1`` TokenReview; no token, or a token the API server does not
   authenticate, is 401 ``Unauthorized``.
2. Authorisation: a ``authorization.k8s.io/v1`` SubjectAccessReview for the reviewed user (name, uid,
   groups, extra) with ``nonResourceAttributes`` {path: the request's path, verb: the method in lower
   case}, which RBAC answers from a ``nonResourceURLs: ["/metrics"], verbs: ["get"]`` rule (the chart's
   ``<release>-metrics-reader`` ClusterRole); not allowed is 403 ``Authorization denied for user X``.
3. A failed review (the API server unreachable) is 500, never a silent allow.

Caches as controller-runtime configures apiserver's delegating authenticator and authorizer
(authenticatorfactory.DelegatingAuthenticatorConfig CacheTTL 1 min, for answers either way;
authorizerfactory.DelegatingAuthorizerConfig AllowCacheTTL 5 min, DenyCacheTTL 30 s), so a scrape every
15-30 s costs about one review a minute. Tokens are cached by their SHA-256, never kept.

The operator needs ``create`` on ``tokenreviews`` and ``subjectaccessreviews`` (cluster-scoped: the
chart's ``<release>-metrics-auth`` ClusterRole, what controller-runtime documents for the filter).

Bearer tokens should not cross the pod network in clear: with ``--metrics-cert-dir`` the endpoint is
HTTPS (:class:`CertFiles`: ``tls.crt`` and ``tls.key``, the layout of a ``kubernetes.io/tls`` Secret and
controller-runtime's metrics server CertDir/CertName/KeyName defaults), reloaded when the files change
(cert-manager renews them in place, as controller-runtime's certwatcher expects).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vesuvius_inference.operator")
TOKEN_TTL_S, ALLOW_TTL_S, DENY_TTL_S = 60.0, 300.0, 30.0


@dataclass(frozen=True)
class Verdict:
    code: int  # 200 allowed, 401, 403 or 500
    message: str


@dataclass(frozen=True)
class User:
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _user(info: dict[str, Any]) -> User:
    extra = tuple(sorted((k, tuple(v or [])) for k, v in (info.get("extra") or {}).items()))
    return User(info.get("username") or "", info.get("uid") or "", tuple(info.get("groups") or []), extra)


@dataclass
class ReviewAuth:
    """Answers "may this request read this path?" through TokenReview and SubjectAccessReview."""

    api_client: Any  # a kubernetes.client.ApiClient
    clock: Callable[[], float] = time.monotonic
    _tokens: dict[str, tuple[float, User | None]] = field(default_factory=dict)
    _decisions: dict[tuple[User, str, str], tuple[float, bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def authenticate(self, token: str) -> User | None:
        """The user the API server says the token belongs to; None: not authenticated."""
        import kubernetes

        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._tokens.get(key)
            if hit is not None and now - hit[0] < TOKEN_TTL_S:
                return hit[1]
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        # Any: a plain dict goes in and urllib3's response comes out (_preload_content=False), as in act.py;
        # the client's annotations name only its models.
        api: Any = kubernetes.client.AuthenticationV1Api(self.api_client)
        resp = api.create_token_review(review, _preload_content=False)
        status = json.loads(resp.data).get("status") or {}
        user = _user(status.get("user") or {}) if status.get("authenticated") else None
        with self._lock:
            self._tokens[key] = (now, user)
        return user

    def authorize(self, user: User, path: str, verb: str) -> bool:
        import kubernetes

        key = (user, path, verb)
        now = self.clock()
        with self._lock:
            hit = self._decisions.get(key)
            if hit is not None and now - hit[0] < (ALLOW_TTL_S if hit[1] else DENY_TTL_S):
                return hit[1]
        spec: dict[str, Any] = {"user": user.name, "groups": list(user.groups),
                                "nonResourceAttributes": {"path": path, "verb": verb}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}
        api: Any = kubernetes.client.AuthorizationV1Api(self.api_client)  # Any: as in authenticate
        resp = api.create_subject_access_review(review, _preload_content=False)
        allowed = bool((json.loads(resp.data).get("status") or {}).get("allowed"))
        with self._lock:
            self._decisions[key] = (now, allowed)
        return allowed

    def check(self, header: str | None, path: str, verb: str) -> Verdict:
        scheme, _, token = (header or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict(401, "Unauthorized")
        try:
            user = self.authenticate(token)
        except Exception:  # noqa: BLE001 - the API server did not answer: refuse, never allow
            log.exception("metrics: TokenReview failed")
            return Verdict(500, "Authentication failed")
        if user is None:
            return Verdict(401, "Unauthorized")
        try:
            allowed = self.authorize(user, path, verb)
        except Exception:  # noqa: BLE001 - as above
            log.exception("metrics: SubjectAccessReview failed")
            return Verdict(500, f"Authorization for user {user.name} failed")
        if not allowed:
            return Verdict(403, f"Authorization denied for user {user.name}")
        return Verdict(200, "")


@dataclass
class CertFiles:
    """The serving certificate in ``directory`` (tls.crt, tls.key), reloaded at most every ``check_s`` when
    the files changed; a broken new pair keeps the last good one (and logs)."""

    directory: str
    check_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _ctx: ssl.SSLContext | None = None
    _stamp: tuple[float, float] | None = None
    _checked: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def cert(self) -> str:
        return os.path.join(self.directory, "tls.crt")

    @property
    def key(self) -> str:
        return os.path.join(self.directory, "tls.key")

    def _load(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def context(self) -> ssl.SSLContext:
        """The context for the next connection. ValueError (at startup) when no usable pair is there."""
        with self._lock:
            now = self.clock()
            if self._ctx is not None and now - self._checked < self.check_s:
                return self._ctx
            self._checked = now
            try:
                stamp = (os.stat(self.cert).st_mtime, os.stat(self.key).st_mtime)
                if stamp != self._stamp:
                    self._ctx, self._stamp = self._load(), stamp
            except (OSError, ssl.SSLError) as e:
                if self._ctx is None:
                    raise ValueError(f"--metrics-cert-dir {self.directory}: no usable tls.crt and tls.key ({e})"
                                     ) from None
                log.warning("metrics: the new certificate in %s is not usable (%s); serving the last one",
                            self.directory, e)
            assert self._ctx is not None  # the first load above set it or raised
            return self._ctx


__all__ = ["ReviewAuth", "Verdict", "User", "CertFiles"]
