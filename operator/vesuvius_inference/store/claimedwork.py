"""The claim-and-commit sequence every unit of work follows, written once.

A predict part and a blend or finalize split are each: done already (a marker of this
configuration that its claim confirms)? Then nothing to do. Else claim the work (claims.py; a
second live run stops with ``Busy``), take it over from a run that completed without a trusted
marker, do the work under the lease, confirm the lease is still ours, write the marker, mark the
claim complete. A marker is trusted only when the claim names its run as complete, so a run that
lost its claim mid-way can never make its work look finished. Model: daisy's ``acquire_block()``
with its ``check_function(block)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import storage
from vesuvius_inference.store.claims import Lease, trusted_complete

log = logging.getLogger("vesuvius_inference.store.claims")


@dataclass
class ClaimedWork:
    """One unit of work: its claim, its marker, and what makes a marker count as done."""

    claim: Place
    marker: Place
    what: str  # for messages: "predict part 3/64", "blend 0/1"
    lease_s: float = 60.0
    info: dict[str, Any] = field(default_factory=dict)
    # marker -> whether it is of this configuration (may raise to refuse another configuration's work)
    matches: Callable[[dict[str, Any]], bool] = lambda marker: True

    def finished(self) -> dict[str, Any] | None:
        """The marker, if the work is done with this configuration by a run its claim confirms."""
        marker = storage.read_json(self.marker)
        if marker is None or not self.matches(marker):
            return None
        if trusted_complete(self.claim, marker.get("run")):
            return marker
        log.warning("%s names run %s, which does not hold the claim as complete: doing %s again", self.marker,
                    marker.get("run"), self.what)
        return None

    def run(self, work: Callable[[Lease], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """(marker, whether this call did the work). ``work`` runs under the lease and returns the
        marker's contents; the marker is written only if the lease is still this run's."""
        done = self.finished()
        if done is not None:
            return done, False
        lease = Lease(self.claim, self.what, lease_s=self.lease_s, info=self.info)
        if lease.acquire() is not None:  # the claim says complete: trust its marker, or take the work over
            done = self.finished()
            if done is not None:
                return done, False
            lease.acquire(take_complete=True)
        with lease:
            marker = {**work(lease), "run": lease.run_id}
            lease.confirm()
            storage.write_json(self.marker, marker)
            lease.complete(marker=self.marker.url)
        return marker, True
