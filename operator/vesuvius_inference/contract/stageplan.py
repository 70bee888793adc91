"""The stages, their order, and what each is told its input is: written once, as data.

predict -> blend -> finalize, everywhere: the local pipeline runs them in this order and the
operator derives its next Job from ``next_stage`` over what its ledger records as complete. Siblings,
not a chain: blend never calls finalize; whoever orchestrates (the pipeline, the ``blend`` command
of an unsplit final output, the operator) runs the next stage and tells it what it reads.

Two data paths, one order:
- fused (Kubernetes, ``--fuse_blend_finalize``): predict parts write the final output's own chunk
  rows, blend writes its seam rows, finalize builds the pyramid from the parts' staged 2x blocks;
- two-step (the pipeline's default): parts write blended float16 logits, blend completes them,
  finalize converts them into the output with its pyramid.
Torch-free and pure (the operator imports it). The ``blend`` command that runs finalize after blend is
finish.py's, in the stages layer.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

from vesuvius_inference.contract import paths
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PipelineConfig, PredictConfig
from vesuvius_inference.contract.settings import derive

STAGES = ("predict", "blend", "finalize")


def next_stage(complete: Collection[str]) -> str | None:
    """The first stage not complete (every earlier one is), or None when all are."""
    return next((s for s in STAGES if s not in complete), None)


def predict_config(cfg: PipelineConfig, part_id: int, num_parts: int, device: str) -> PredictConfig:
    """What each part runs: every predict setting of the pipeline, and where its rows go."""
    work = cfg.work
    return derive(PredictConfig, cfg, output_dir=paths.parts_url(work), part_id=part_id, num_parts=num_parts,
                  device=device, final_output=cfg.output if cfg.fused else None,
                  blended_output=None if cfg.fused else paths.blended(work))


def blend_config(cfg: PipelineConfig) -> BlendConfig:
    """Blend reads the parts; it finishes the final output's seams (fused) or the blended logits."""
    target = cfg.output if cfg.fused else paths.blended(cfg.work)
    return derive(BlendConfig, cfg, parts_dir=paths.parts_url(cfg.work), output=target, mode=None, overwrite=False,
                  seams_only=True)


def finalize_config(cfg: PipelineConfig) -> FinalizeConfig:
    """Finalize reads the parts' staged pyramid blocks (fused) or the blended logits."""
    if cfg.fused:
        return derive(FinalizeConfig, cfg, input_path=paths.parts_url(cfg.work), output_path=cfg.output,
                      input_kind="parts", overwrite=False)
    return derive(FinalizeConfig, cfg, input_path=paths.blended(cfg.work), output_path=cfg.output,
                  input_kind="blended")


def finalize_after_blend(cfg: BlendConfig, mode: str, threshold: bool, levels: int | None) -> FinalizeConfig:
    """The finalize that completes a final output an unsplit blend has just finished level 0 of."""
    return derive(FinalizeConfig, replace(cfg, mode=mode), input_path=cfg.parts_dir, output_path=cfg.output,
                  input_kind="parts", threshold=threshold, levels=levels, overwrite=False, num_parts=1, part_id=0)
