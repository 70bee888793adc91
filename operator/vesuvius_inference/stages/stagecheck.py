"""``vesuvius-inference check``: is a stage's work on storage complete? For Jobs the operator never saw end.

The operator has no storage credentials; when a stage's Job vanished before its end was seen (a short
``ttlSecondsAfterFinished``, the operator down), it runs a small check Job with the stage's own
credentials and reads the answer from the Job: exit 0 the stage's work is complete, exit
:data:`EXIT_INCOMPLETE` it is not (a FailJob rule, so no retry), anything else a transient failure
(retried). One line says what was found, on stdout and in the container's termination message, which
the operator shows. Cheap by construction: predict's part markers are one listing of the parts
directory (a marker is written last, after its claim completed; its name is paths.marker_url's),
finalize's completion is one read of the output group's metadata (output.is_complete). Torch-free.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.errors import EXIT_INCOMPLETE
from vesuvius_inference.contract.failure import write_termination_message
from vesuvius_inference.contract.place import Place

EXIT_COMPLETE = 0
MAX_MESSAGE = 3072  # the kubelet keeps at most 4096 bytes of a termination message: room for the words around


def markers_present(names: Iterable[str], num_parts: int) -> set[int]:
    """The parts among ``range(num_parts)`` whose marker is among the listed ``names``."""
    listed = set(names)
    return {i for i in range(num_parts) if paths.marker_url("", i).rsplit("/", 1)[-1] in listed}


def predict_verdict(present: set[int], num_parts: int) -> tuple[bool, str]:
    from vesuvius_inference.contract.ranges import format_ranges

    missing = sorted(set(range(num_parts)) - present)
    if not missing:
        return True, f"complete: all {num_parts} predict parts have their markers"
    text = format_ranges(missing)
    if len(text) > MAX_MESSAGE - 200:
        text = text[:MAX_MESSAGE - 200].rsplit(",", 1)[0] + ",..."
    return False, f"incomplete: {len(missing)} of {num_parts} predict parts have no marker: parts {text}"


def check_predict(parts_dir: Place, num_parts: int) -> tuple[bool, str]:
    from vesuvius_inference.store import storage

    try:
        names = storage.list_names(parts_dir)
    except FileNotFoundError:
        names = []
    return predict_verdict(markers_present(names, num_parts), num_parts)


def check_finalize(output: Place) -> tuple[bool, str]:
    from vesuvius_inference.store.output import is_complete

    if is_complete(output):
        return True, f"complete: {output} is marked complete"
    return False, f"incomplete: {output} is not marked complete"


def check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vesuvius-inference check",
        description="Is a stage's work complete on storage? Exit 0 yes, 10 no, other: could not tell (retry).")
    sub = p.add_subparsers(dest="stage", required=True)
    pr = sub.add_parser("predict", help="every predict part has its marker")
    pr.add_argument("--parts_dir", "--parts-dir", required=True)
    pr.add_argument("--num_parts", "--num-parts", type=int, required=True)
    fi = sub.add_parser("finalize", help="the output is marked complete")
    fi.add_argument("--output", required=True)
    for q in (pr, fi):
        q.add_argument("--storage_options", "--storage-options", default=None, metavar="JSON")
    return p


def run_check(argv: Sequence[str]) -> int:
    from vesuvius_inference.contract.config import Storage
    from vesuvius_inference.contract.settings import from_args, json_object

    args = check_parser().parse_args(list(argv))
    given = {"storage_options": json_object(args.storage_options)} if args.storage_options else {}
    where = from_args(Storage, given)  # $VESUVIUS_STORAGE_OPTIONS, updated by the option
    if args.stage == "predict":
        complete, line = check_predict(where.place(args.parts_dir), args.num_parts)
    else:
        complete, line = check_finalize(where.place(args.output))
    print(line, flush=True)
    write_termination_message(line + "\n")  # where every failure's line goes: the operator reads it there
    return EXIT_COMPLETE if complete else EXIT_INCOMPLETE
