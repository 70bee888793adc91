"""The ``blend`` command as users know it from the seed: blend, then finalize where one process can.

Blend and finalize are siblings (stageplan.py): this is the orchestration the seed's
``vesuvius.blend_logits`` implied, kept out of both.
"""

from __future__ import annotations

from vesuvius_inference.contract.config import BlendConfig
from vesuvius_inference.contract.stageplan import finalize_after_blend


def finish_from_blend(cfg: BlendConfig) -> str:
    """The ``blend`` command: blend, then (a final output, one process, not ``--seams_only``) finalize,
    so that ``vesuvius.blend_logits PARTS OUT`` leaves a finished output as the seed's did."""
    from vesuvius_inference.stages.blend import run_blend
    from vesuvius_inference.store.output import FINAL

    done = run_blend(cfg)
    spec = done.output
    if spec.kind == FINAL and done.complete and cfg.num_parts == 1 and not cfg.seams_only:
        from vesuvius_inference.stages.finalize import run_finalize

        run_finalize(finalize_after_blend(cfg, spec.mode, spec.threshold, spec.levels))
    return spec.url
