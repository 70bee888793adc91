"""Every name the stages give things on storage, in one place, next to the layout they make.

```
<output>_work/                  the pipeline's workdir (--workdir; the InferenceJob's spec.workdir)
  parts/                        predict's --output_dir: the part stores (partstore.py)
    part_00003.json             a part's marker, written last
    part_00003.claim.json       the part's claim (claims.py)
    part_00003/<run id>/        the part store of one run (pieces/<z>.<y>.<x>: its pieces of shared chunks)
    _seams/<config digest>/     the first finisher's piece of each two-part seam chunk, <z>.<y>.<x>
                                (created once, never overwritten; the second finisher merges it)
    input_stats.json            whole-volume normalization statistics, computed once per run
    _blend/                     blend's split claims, journals, done markers; level0_complete.json
    _pyramid/                   2x blocks the level-0 writers of a final output staged for finalize
    _finalize/                  finalize's split claims and journals when it reads the parts
  blended.zarr                  blended float16 logits (two-step pipeline only)
<output>/                       the output image
  _vesuvius/                    finalize's split claims and journals when it reads blended logits
```
Torch-free and pure: the operator derives its Jobs' paths from the same functions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from vesuvius_inference.contract.locations import join

PARTS = "parts"
BLENDED = "blended.zarr"
BLEND_DIR = "_blend"
PYRAMID_DIR = "_pyramid"
FINALIZE_DIR = "_finalize"
OUTPUT_JOURNAL = "_vesuvius"  # inside the output until it is complete
INPUT_STATS = "input_stats.json"
CHECKPOINT = "checkpoint.json"
CHECKPOINT_SEGMENTS = "checkpoint"  # the checkpoint's journal segments (checkpoint.py)
SEAMS_DIR = "_seams"
PIECES = "pieces"


def default_workdir(output: str) -> str:
    return output.rstrip("/") + "_work"


def parts_url(workdir: str) -> str:
    return join(workdir, PARTS)


def blended(workdir: str) -> str:
    return join(workdir, BLENDED)


def part_name(part_id: int) -> str:
    return f"part_{part_id:05d}"


def marker_url(parts: str, part_id: int) -> str:
    return join(parts, part_name(part_id) + ".json")


def claim_url(parts: str, part_id: int) -> str:
    return join(parts, part_name(part_id) + ".claim.json")


def store_url(parts: str, part_id: int, run: str) -> str:
    return join(parts, part_name(part_id), run)


def chunk_key(idx: tuple[int, ...]) -> str:
    """The name of a chunk's piece: ``z.y.x``."""
    return ".".join(str(int(i)) for i in idx)


def config_digest(config: dict[str, Any]) -> str:
    """A short name for a predict configuration (its marker's ``config``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def seams_dir(parts: str, config_digest: str) -> str:
    """The first finishers' pieces of two-part seams, per configuration (a stale run's never match)."""
    return join(parts, SEAMS_DIR, config_digest)


def pieces_dir(store: str) -> str:
    """A run store's pieces of the chunks that blend merges."""
    return join(store, PIECES)


def input_stats(parts: str) -> str:
    return join(parts, INPUT_STATS)


def blend_work(parts: str) -> str:
    """Where blend's splits keep claims, journals and done markers."""
    return join(parts, BLEND_DIR)


def pyramid_staging(parts: str) -> str:
    """Where level-0 writers of a fused output leave the 2x blocks finalize builds the pyramid from."""
    return join(parts, PYRAMID_DIR)


def level0_marker(parts: str) -> str:
    """Written when every level-0 chunk of a final output is in place (finalize waits for it)."""
    return join(blend_work(parts), "level0_complete.json")


def finalize_work(input_url: str, input_kind: str, output: str) -> str:
    """Where finalize's splits keep claims and journals: beside the parts, or inside the output."""
    return join(input_url, FINALIZE_DIR) if input_kind == "parts" else join(output, OUTPUT_JOURNAL)


def split_marker_dir(work: str) -> str:
    """Done markers and progress journals of stage splits under their work prefix."""
    return join(work, OUTPUT_JOURNAL)
