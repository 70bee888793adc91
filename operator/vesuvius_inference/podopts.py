"""What a worker pod on Kubernetes learns from the downward API, and the ``check`` command. Torch-free.

The operator gives worker pods no API token. What they need from the API comes through the downward API:

- a retry Job's part ids: its ``vesuvius.dev/part-ids`` annotation as a file (``--part_ids_file``): index
  i runs the i-th id. A file, not an argument: one argument is capped at 128 KiB by the kernel
  (MAX_ARG_STRLEN), about 22,000 scattered ids as ranges (k8s/ranges.py, encode_part_ids);
- how often the Job controller saw this index disrupted (``--disruptions``, from the pod's
  ``batch.kubernetes.io/job-index-ignored-failure-count`` annotation) and the bound
  (``--max_disruptions``): past it the pod exits EXIT_DISRUPTION_LIMIT at once, which the Job's
  podFailurePolicy turns into a failed index (errors.disruption_refusal says why).

``vesuvius-inference check predict|finalize`` answers, for the operator, whether a stage whose Job
vanished unseen completed on storage (stagecheck.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .errors import BadArguments, disruption_refusal


def _count(text: str) -> int:
    """The downward API renders a missing annotation as an empty string: zero, as Kubernetes implies."""
    try:
        return max(0, int(text or 0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, got {text!r}") from None


def add_pod_options(p: Any, part_ids_file: bool = False) -> None:
    """Options of the Kubernetes manifests' pods (``p`` is cli._Parser: both spellings of each)."""
    if part_ids_file:
        p.opt("--part_ids_file", default=None, metavar="PATH",
              help="like --part_ids, the list read from this file (a retry Job's pods: the downward API's copy "
                   "of the Job's vesuvius.dev/part-ids annotation)")
    p.opt("--disruptions", type=_count, default=0, help=argparse.SUPPRESS)
    p.opt("--max_disruptions", type=int, default=None,
          help="refuse to start (exit 79) when --disruptions, the times this part's pods were evicted or "
               "preempted, exceeds this (Kubernetes pods)")


def resolve_part(part_id: int, part_ids: str | None, part_ids_file: str | None) -> int:
    """The part this process runs: ``part_id`` itself, or the ``part_id``-th entry of the id list."""
    from .k8s.ranges import decode_part_ids

    if part_ids and part_ids_file:
        raise BadArguments("give --part_ids or --part_ids_file, not both")
    source, text = "--part_ids", part_ids
    if part_ids_file:
        source = f"--part_ids_file {part_ids_file}"
        try:
            with open(part_ids_file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise BadArguments(f"cannot read {source}: {e.strerror or e}") from None
    if not text:
        return part_id
    try:
        ids = decode_part_ids(text)
    except ValueError as e:
        raise BadArguments(f"{source}: {e}; expected part ids and ranges like 3,17,40-42") from None
    if not 0 <= part_id < len(ids):
        raise BadArguments(f"--part_id {part_id} is out of range for {source} ({len(ids)} parts)")
    return ids[part_id]


def guard(args: argparse.Namespace) -> None:
    """Raise before any work when this pod's part was disrupted too often."""
    limit = getattr(args, "max_disruptions", None)
    refusal = disruption_refusal(int(getattr(args, "part_id", 0) or 0), int(getattr(args, "disruptions", 0) or 0),
                                 limit)
    if refusal is not None:
        raise refusal


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
    from .stagecheck import EXIT_COMPLETE, EXIT_INCOMPLETE, check_finalize, check_predict, report
    from .storage import parse_storage_options

    args = check_parser().parse_args(list(argv))
    so = parse_storage_options(args.storage_options)
    if args.stage == "predict":
        complete, line = check_predict(args.parts_dir, args.num_parts, so)
    else:
        complete, line = check_finalize(args.output, so)
    print(line, flush=True)
    report(line)
    return EXIT_COMPLETE if complete else EXIT_INCOMPLETE
