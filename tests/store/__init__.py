"""Tests of vesuvius_inference.store: volumes and outputs on local disk, HTTP and moto's S3;
claims, seams, checkpoints, outages and waits.

Helpers for this folder and its users: outage.py (stores that go away), flaky_proxy.py (S3 errors in front of
moto), seamcase.py (a two-part seam driven through the real protocol)."""
