"""What a worker pod on Kubernetes learns from the downward API. Torch-free.

The operator gives worker pods no API token. What they need from the API comes through the downward API
(the settings are declared in config.py; the logic is here):

- a retry Job's part ids: its ``vesuvius.dev/part-ids`` annotation as a file (``--part_ids_file``): index
  i runs the i-th id. A file, not an argument: one argument is capped at 128 KiB by the kernel
  (MAX_ARG_STRLEN), about 22,000 scattered ids as ranges (k8s/ranges.py, encode_part_ids);
- how often the Job controller saw this index disrupted (``--disruptions``, ``$VESUVIUS_DISRUPTIONS`` from
  the pod's ``batch.kubernetes.io/job-index-ignored-failure-count`` annotation) and the bound
  (``--max_disruptions``): past it the pod exits EXIT_DISRUPTION_LIMIT at once (:func:`guard`), which the
  Job's podFailurePolicy turns into a failed index (errors.disruption_refusal says why).
"""

from __future__ import annotations

from typing import Any

from vesuvius_inference.contract.errors import BadArguments, disruption_refusal


def resolve_part(part_id: int, part_ids: str | None, part_ids_file: str | None) -> int:
    """The part this process runs: ``part_id`` itself, or the ``part_id``-th entry of the id list."""
    from vesuvius_inference.contract.ranges import decode_part_ids

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


def guard(cfg: Any) -> None:
    """Raise before any work when this pod's part was disrupted too often (``cfg``: a stage's config)."""
    limit = getattr(cfg, "max_disruptions", None)
    if limit is None or int(getattr(cfg, "disruptions", 0) or 0) <= limit:
        return
    part = cfg.the_part() if hasattr(cfg, "the_part") else int(getattr(cfg, "part_id", 0) or 0)
    refusal = disruption_refusal(part, int(cfg.disruptions), limit)
    if refusal is not None:
        raise refusal
