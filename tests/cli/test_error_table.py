"""The README's table of error lines is what the program prints (issue 23).

Every situation below runs the real command line in-process; its exit code and the words that matter
are asserted, and its whole line (temporary paths and ports written as ``…`` and ``P``) must be the
README's row between the ``observed-errors`` markers. When a message changes, regenerate the table:

    VESUVIUS_WRITE_ERROR_TABLE=1 pytest tests/cli/test_error_table.py

which rewrites those rows from what this run observed (and still fails once, so that a stale README
can never pass silently).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import smooth_volume, write_zarr
from ngff.fixtures import write_scroll_input
from vesuvius_inference import cli

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- observed-errors:begin -->", "<!-- observed-errors:end -->"


@dataclass(frozen=True)
class Situation:
    name: str
    argv: Callable[[dict], list]
    exit: int
    needles: tuple[str, ...]


def pipeline(w, *extra):
    return ["pipeline", "--input", w["scan"], "--model", w["model"], "--devices", "cpu", "--disable_tta", "--quiet",
            *extra]


def predict(w, inp, *extra):
    return ["predict", "--model_path", w["model"], "--input_dir", inp, "--output_dir", w["tmp"] / "parts",
            "--device", "cpu", "--disable_tta", "--quiet", *extra]


SITUATIONS = [
    Situation("`--output` the input spelled another way (`./scan.zarr`, absolute, `file://`, a symlink)",
              lambda w: pipeline(w, "--output", f"./{w['scan'].name}", "--overwrite"), 2, ("same place",)),
    Situation("`--output` a level or a subfolder of the input", lambda w: pipeline(w, "--output", w["scan"] / "0"), 2,
              ("lies inside --input",)),
    Situation("`--workdir` holding the input", lambda w: pipeline(w, "--output", "o.zarr", "--workdir", "."), 2,
              ("lies inside --workdir",)),
    Situation("`--output` a Zarr store another program wrote (with or without `--overwrite`)",
              lambda w: pipeline(w, "--output", w["foreign"], "--overwrite"), 3, ("did not write", "left untouched")),
    Situation("`--output` a folder that is not a Zarr store", lambda w: pipeline(w, "--output", w["notes"]), 3,
              ("is not a Zarr store",)),
    Situation("`--workdir` a folder of somebody's files", lambda w: pipeline(w, "--output", "o.zarr", "--workdir",
                                                                              w["notes"]), 3, ("did not write",)),
    Situation("finalize `--delete_intermediates` of something we did not write",
              lambda w: ["finalize", w["scan"] / "0", "o.zarr", "--delete_intermediates", "--quiet"], 2,
              ("not written by vesuvius-inference",)),
    Situation("an input that does not exist", lambda w: predict(w, w["tmp"] / "nope.zarr"), 3, ("does not exist",)),
    Situation("`--overlap 1`", lambda w: predict(w, w["scan"], "--overlap", "1"), 2, ("--overlap",)),
    Situation("`--bbox` outside the level", lambda w: predict(w, w["scan"], "--level", "1", "--bbox",
                                                              "0:8,0:40,0:16"), 2, ("outside level 1",)),
    Situation("`--device cuda` without a GPU", lambda w: predict(w, w["scan"], "--device", "cuda:3"), 69,
              ("--device cuda:3",)),
    Situation("`--chunk_size` odd with a pyramid", lambda w: pipeline(w, "--output", "o.zarr", "--chunk_size",
                                                                       "15,32,32"), 2, ("even chunk sizes",)),
    Situation("`--levels` past a one-voxel level", lambda w: pipeline(w, "--output", "o.zarr", "--levels", "12"), 2,
              ("--levels 12",)),
    Situation("a negative `--bbox`", lambda w: predict(w, w["scan"], "--bbox", "-5:10,0:16,0:16"), 2,
              ("outside level 0",)),
    Situation("`--device mps` (or xpu)", lambda w: predict(w, w["scan"], "--device", "mps"), 69, ("not on mps",)),
    Situation("a misspelled storage option", lambda w: predict(w, "s3://bucket/scan.zarr", "--storage_options",
                                                               '{"endpoint": "http://127.0.0.1:9"}'), 2,
              ("did you mean 'endpoint_url'",)),
    Situation("an input that is a file, not a Zarr store", lambda w: predict(w, w["notes"] / "notes.txt"), 3,
              ("is a file",)),
    Situation("finalize given the scan instead of blended logits",
              lambda w: ["finalize", w["scan"], "o.zarr", "--quiet"], 3, ("not blended logits",)),
    Situation("the HTTP input's server is not there", lambda w: predict(w, f"http://127.0.0.1:{w['port']}/in.zarr",
                                                                          "--storage_wait_s", "0"), 74,
              ("storage unreachable",)),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_factory):
    tmp = tmp_path_factory.mktemp("errors")
    scan = tmp / "scan.zarr"
    write_scroll_input(scan, shape=(16, 32, 32), n_levels=2)
    foreign = write_zarr(tmp / "theirs.zarr", smooth_volume((16, 32, 32), seed=2), chunks=(16, 32, 32))
    notes = tmp / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"tmp": tmp, "scan": scan, "foreign": Path(foreign), "notes": notes, "port": port,
            "model": model_factory(patch=(16, 32, 32), folds=(0,))}


def normalised(line: str, w: dict) -> str:
    line = line.replace(str(w["model"]), "MODEL").replace(str(w["tmp"]), "…")
    line = line.replace(str(w["port"]), "P")
    return re.sub(r"\s+", " ", line).strip()


def row(s: Situation, line: str) -> str:
    return f"| {s.name} | {s.exit} | `{line.replace('|', '/')}` |"


def test_every_situation_prints_the_readmes_line(world, capsys, monkeypatch):
    monkeypatch.chdir(world["tmp"])
    rows, problems = [], []
    for s in SITUATIONS:
        before = sorted(os.listdir(world["tmp"]))
        code = cli.main([str(a) for a in s.argv(world)])
        err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
        line = normalised(err[-1] if err else "", world)
        if code != s.exit or not line.startswith("error:") or not all(n in line for n in s.needles):
            problems.append(f"{s.name}: exit {code}, {line!r}")
        if sorted(os.listdir(world["tmp"])) != before and code in (2, 3):
            problems.append(f"{s.name}: refused, yet it left {set(os.listdir(world['tmp'])) - set(before)}")
        rows.append(row(s, line))
    assert not problems, problems
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    table = "\n| situation | exit | the line |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    if text[start:end] != table and os.environ.get("VESUVIUS_WRITE_ERROR_TABLE"):
        README.write_text(text[:start] + table + text[end:])
    stale = sorted(set(table.splitlines()) ^ set(text[start:end].splitlines()))
    assert not stale, f"README's observed errors are stale (rerun with VESUVIUS_WRITE_ERROR_TABLE=1): {stale}"


def test_the_zarr_fixture_is_what_it_claims(world):
    """The situations' premises: the scan is an OME-Zarr group with two levels; 'theirs' carries no mark."""
    group = zarr.open_group(str(world["scan"]), mode="r")
    assert [d["path"] for d in group.attrs["multiscales"][0]["datasets"]] == ["0", "1"]
    assert "vesuvius" not in zarr.open_array(str(world["foreign"]), mode="r").attrs
    assert np.asarray(zarr.open_array(str(world["foreign"]), mode="r")[:]).any()
