"""``vesuvius-inference check``: what a check Job answers about a stage whose Job vanished unseen, and the
CLI pieces pods get from the downward API (retried part ids as a file, the disruption bound)."""

from __future__ import annotations

import json

from helpers import run_cli  # in-process
from vesuvius_inference.contract import paths
from vesuvius_inference.contract.errors import EXIT_DISRUPTION_LIMIT
from vesuvius_inference.stages import stagecheck


def test_markers_are_found_by_the_names_predict_gives_them():
    names = [paths.marker_url("d", i).rsplit("/", 1)[1] for i in (0, 7, 12345, 99999)]
    names += [paths.claim_url("d", 3).rsplit("/", 1)[1], "part_00003", "_blend"]
    assert stagecheck.markers_present(names, 100000) == {0, 7, 12345, 99999}


def test_check_predict_and_finalize_on_a_local_store(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in (0, 2):
        (parts / paths.marker_url(str(parts), i).rsplit("/", 1)[1]).write_text("{}")
    r = run_cli("check", "predict", "--parts_dir", str(parts), "--num_parts", "3")
    assert r.returncode == stagecheck.EXIT_INCOMPLETE
    assert r.stdout.strip() == "incomplete: 1 of 3 predict parts have no marker: parts 1"
    (parts / "part_00001.json").write_text("{}")
    r = run_cli("check", "predict", "--parts_dir", str(parts), "--num_parts", "3")
    assert r.returncode == 0 and "complete: all 3 predict parts" in r.stdout
    r = run_cli("check", "predict", "--parts_dir", str(tmp_path / "nowhere"), "--num_parts", "2")
    assert r.returncode == stagecheck.EXIT_INCOMPLETE and "2 of 2" in r.stdout
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    assert run_cli("check", "finalize", "--output", str(out)).returncode == stagecheck.EXIT_INCOMPLETE
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "vesuvius": {"complete": True}}}))
    r = run_cli("check", "finalize", "--output", str(out))
    assert r.returncode == 0 and r.stdout.strip() == f"complete: {out} is marked complete"


def test_a_part_disrupted_past_the_bound_refuses_to_start_in_one_line(tmp_path):
    args = ["predict", "--model_path", str(tmp_path / "m"), "--input_dir", str(tmp_path / "in.zarr"),
            "--output_dir", str(tmp_path / "parts"), "--part_id", "3", "--num_parts", "8",
            "--disruptions", "6", "--max_disruptions", "5"]
    r = run_cli(*args)
    assert r.returncode == EXIT_DISRUPTION_LIMIT == 79
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]  # one line
    assert r.stderr.startswith("error: part 3 was disrupted 6 times") and "retry.maxDisruptionsPerPart=5" in r.stderr
    # at the bound it starts (and fails later for the missing model, not for the bound); no annotation = 0
    for d in ("5", ""):
        r = run_cli(*args[:-4], "--disruptions", d, "--max_disruptions", "5")
        assert r.returncode != EXIT_DISRUPTION_LIMIT, r.stderr


def test_retried_part_ids_from_a_file_and_bad_ones_in_one_line(tmp_path):
    from vesuvius_inference.contract.errors import BadArguments
    from vesuvius_inference.contract.podopts import resolve_part
    from vesuvius_inference.contract.ranges import encode_part_ids

    f = tmp_path / "part-ids"
    f.write_text(encode_part_ids(range(1, 100000, 2)))  # the compressed bitmap form
    assert resolve_part(0, None, str(f)) == 1 and resolve_part(49999, None, str(f)) == 99999
    for text, fragment in (("zb64:!!!", "bad part-id bitmap"), ("3-1", "expected part ids and ranges")):
        f.write_text(text)
        try:
            resolve_part(0, None, str(f))
        except BadArguments as e:
            assert fragment in str(e) and str(f) in str(e)
        else:
            raise AssertionError("accepted")
    try:
        resolve_part(5, "1,2", None)
    except BadArguments as e:
        assert "out of range for --part_ids (2 parts)" in str(e)
    else:
        raise AssertionError("accepted")
