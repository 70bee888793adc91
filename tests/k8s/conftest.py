"""Kept for tests written against it: the k8s fixtures and their helpers live in tests/plugins/k8s.py
(a plugin every directory gets); import helpers from ``plugins.k8s``, never from a conftest."""

from __future__ import annotations

from plugins.k8s import (  # noqa: F401 - the names tests imported from here before the move
    GROUP,
    NAMESPACE,
    PLURAL,
    SAMPLE,
    VERSION,
    VOLUME_CHUNKS,
    VOLUME_SHAPE,
    Cluster,
    OperatorProcess,
    Storage,
    _free_port,
    cond,
    cond_true,
    run_kueue,
)
