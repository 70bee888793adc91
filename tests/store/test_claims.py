"""Claims (leases with a heartbeat) on a local disk and on S3 (moto's server through s3fs)."""

from __future__ import annotations

import threading
import time

import pytest
from vesuvius_inference.contract.errors import Busy
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store.claims import COMPLETE, ClaimLost, Lease, trusted_complete


@pytest.fixture(params=["local", "s3"])
def claim_url(request, tmp_path):
    if request.param == "local":
        return Place(str(tmp_path / "part_00000.claim.json"))
    s3 = request.getfixturevalue("s3")
    return Place(f"{s3}/parts/part_00000.claim.json")


def _elsewhere(lease: Lease) -> None:
    """Make the holder look like a process on another machine (whose death we cannot see)."""
    doc, tag = lease.backend.read()
    doc["host"] = "another-node"
    lease._tag = lease.backend.replace(doc, tag)
    lease._doc = doc


def test_a_live_holder_keeps_its_claim_and_a_dead_one_is_taken_over(claim_url):
    first = Lease(claim_url, "part 0", lease_s=1.0)
    assert first.acquire() is None
    _elsewhere(first)
    t = time.monotonic()
    with pytest.raises(Busy, match="another run"):
        Lease(claim_url, "part 0", lease_s=1.0).acquire()
    assert time.monotonic() - t < 1.0  # a renewal was seen before the lease could expire
    first._halt()  # the holder freezes: no more heartbeats, nothing released
    second = Lease(claim_url, "part 0", lease_s=1.0)
    t = time.monotonic()
    assert second.acquire() is None
    assert time.monotonic() - t >= 1.0  # waited a whole lease without a renewal
    assert second.previous is not None and second.previous.run == first.run_id
    with pytest.raises(ClaimLost):  # the frozen holder wakes up: it may not write any more
        first.check()
        first.confirm()
    second.complete()
    assert trusted_complete(claim_url, second.run_id) and not trusted_complete(claim_url, first.run_id)
    found = Lease(claim_url, "part 0", lease_s=1.0).acquire()
    assert found is not None and found.state == COMPLETE and found.run == second.run_id


def test_of_two_runs_taking_over_a_dead_claim_only_one_wins(claim_url):
    dead = Lease(claim_url, "part 0", lease_s=0.5)
    dead.acquire()
    _elsewhere(dead)
    dead._halt()
    results: list[str] = []

    def take() -> None:
        lease = Lease(claim_url, "part 0", lease_s=0.5)
        try:
            lease.acquire()
            results.append("won")
            time.sleep(1.0)  # keep heartbeating while the other one looks
            lease.complete()
        except Busy:
            results.append("busy")

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["busy", "won"]


def test_a_released_claim_is_taken_at_once(claim_url):
    first = Lease(claim_url, "part 0", lease_s=30.0)
    first.acquire()
    _elsewhere(first)
    first.release()
    t = time.monotonic()
    second = Lease(claim_url, "part 0", lease_s=30.0)
    assert second.acquire() is None and time.monotonic() - t < 5
    second.release()
