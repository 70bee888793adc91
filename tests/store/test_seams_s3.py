"""Second-finisher merges of two-part seams on S3 (moto's server, s3fs): create-if-absent is PutObject
with If-None-Match: *, so of two parts finishing a chunk at once exactly one creates its piece."""

from __future__ import annotations

import pytest
from vesuvius_inference.contract.place import Place
from vesuvius_inference.store import createonce

from store.seamcase import (
    check_frozen_holder_races_its_taker,
    check_killed_mid_merge,
    check_race,
    check_rerun_of_finished_parts,
)


def test_create_once_on_s3_admits_one_writer(s3):
    url = Place(f"{s3}/parts/_seams/cfg/0.0.0")
    assert createonce.create(url, b"one") and not createonce.create(url, b"two")
    assert createonce.read(url) == b"one" and createonce.read(Place(f"{s3}/none")) is None
    assert createonce.supported(url.url) and not createonce.supported("gs://bucket/x")
    with pytest.raises(ValueError):
        createonce.create(Place("gs://bucket/x"), b"")


def test_both_parts_finishing_together_on_s3(s3):
    check_race(s3, {})


def test_killed_mid_merge_then_rerun_on_s3(s3):
    check_killed_mid_merge(s3, {})


def test_rerun_of_finished_parts_on_s3(s3):
    check_rerun_of_finished_parts(s3, {})


def test_a_frozen_former_holder_races_its_taker_on_s3(s3):
    check_frozen_holder_races_its_taker(s3, {})
