"""predict: run the model over one part's patches; write what only this part covers, keep the seams.

Orchestration over small parts: claim the part (claims.py), read patches ahead (reader.py), run the
model with TTA and folds (runner.py), weight and quantise on the device (fixedpoint.py), accumulate
into a bounded chunk cache on the device (accumulate.py), and hand each completed chunk to the
part's writer (partstore.py): straight into the output (output.py) for the chunk rows only this
part covers, into thin seam segments otherwise. The marker is written last and names the run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from typing import Any

from vesuvius_inference.contract.config import PredictConfig
from vesuvius_inference.contract.errors import BadArguments, BadInput
from vesuvius_inference.contract.frame import triple
from vesuvius_inference.contract.intensity import OFF, IntensityFinding
from vesuvius_inference.contract.ngff import ngff_for
from vesuvius_inference.contract.prechecks import check_channels, check_pyramid, chunks_source
from vesuvius_inference.contract.progress import ProgressLine
from vesuvius_inference.geometry.grid import Shape3
from vesuvius_inference.geometry.partplan import region
from vesuvius_inference.model.files import ModelFiles, open_model_files
from vesuvius_inference.model.source import fold_parent
from vesuvius_inference.predict import signals
from vesuvius_inference.predict.part import PartContext, PartRun, brief, drop_scratch_quietly, output_spec
from vesuvius_inference.store import createonce, ownership, storage
from vesuvius_inference.store.claims import Lease
from vesuvius_inference.store.optioncheck import check_options
from vesuvius_inference.store.output import FINAL, output_channels
from vesuvius_inference.store.partstore import BLEND, FORMAT_VERSION, PAIRS
from vesuvius_inference.store.preflight import require_writable
from vesuvius_inference.store.volume import InputVolume, open_volume

log = logging.getLogger("vesuvius_inference.predict.stage")


def seam_mode(cfg: PredictConfig) -> str:
    """``pairs``: the second finisher of a two-part seam chunk merges and writes it (predict writes an
    output, and the parts' store has create-if-absent writes); ``blend``: every part stores its pieces
    and blend merges them (the seed's layout, or a store without conditional writes)."""
    return PAIRS if output_spec(cfg) is not None and createonce.supported(cfg.output_dir) else BLEND


def fingerprint(cfg: PredictConfig, *, model_fp: str, volume: InputVolume, patch: Shape3, chunks: Shape3,
                labels: dict[str, Any]) -> dict[str, Any]:
    """Everything a part's bytes depend on (and the output's metadata needs): the marker's ``config``."""
    spec = output_spec(cfg)
    return {
        "format": FORMAT_VERSION,
        "input": cfg.input_dir, "level": cfg.level, "shape": list(volume.shape), "channels": volume.channels,
        "dtype": str(volume.dtype), "model": model_fp, "folds": [str(f) for f in cfg.folds] if cfg.folds else None,
        "patch_size": list(patch), "overlap": cfg.overlap, "tta": cfg.do_tta, "skip_empty": cfg.skip_empty_patches,
        "chunk_size": list(chunks), "num_parts": cfg.num_parts, "bbox": cfg.bbox,
        "output": spec.as_dict() if spec else None,
        "partition": cfg.partition, "seams": seam_mode(cfg),
        "frame": volume.frame.as_dict(), "labels": labels,  # for the output's metadata
        "input_zarr_format": volume.zarr_format,  # outputs made later (blend --mode, finalize) follow the input
    }


def _check_intensities(cfg: PredictConfig, volume: InputVolume, model: ModelFiles,
                       announce: bool = True) -> IntensityFinding | None:
    """The input against the model's training intensities (intensity.py): refused (exit 3) or warned
    about, per --intensity_check; the finding goes on to the part's marker and summary line."""
    from vesuvius_inference.model.normalization import check_intensities

    if cfg.intensity_check == OFF:
        return None
    found = check_intensities(volume, model.plans, model.normalization_schemes,
                              region(cfg.bbox, volume.shape, volume.where))
    if found is None:
        return None
    if found.refuses(cfg.intensity_check):
        raise BadInput(found.message(cfg.intensity_check))
    if announce:
        log.warning("warning: %s", found.message(cfg.intensity_check))
    return found


def prepare(cfg: PredictConfig, announce: bool = True, *, volume: InputVolume | None = None) -> PartContext:
    """Open the input, read the model folder, refuse what would fail later: all before any work.
    ``announce``: log an intensity warning (the pipeline's parts do not: its preflight said it).
    ``volume``: the input this process opened already for the same ``--input_dir``/``--level`` (the
    pipeline's parts on one device): its metadata and chunk listing are not read again."""
    from vesuvius_inference.model.normalization import check_schemes

    cfg.validate()
    check_options(cfg)
    from vesuvius_inference.predict.runner import AUTO, resolve_device

    device = None if cfg.device == AUTO else resolve_device(cfg.device)  # first: nothing opened or claimed yet
    for flag, url in (("--output_dir", cfg.output_dir), ("--final_output", cfg.final_output),
                      ("--blended_output", cfg.blended_output)):
        if url and storage.is_local(url):  # a folder this user cannot write: said so, before the claim
            require_writable(cfg.place(url), flag)  # (object stores: the claim's write says it)
    model_path, folds = fold_parent(cfg.model_path, cfg.folds)
    reuse = volume is not None and volume.url == cfg.input_dir  # the caller's open of this very input
    volume = volume.fresh() if volume is not None and reuse else open_volume(cfg.input_place, cfg.level)
    cfg = replace(cfg, model_path=model_path,  # a fold_N folder: its parent with that fold
                  folds=tuple(str(f) for f in folds) if folds is not None else None,
                  ngff_version=ngff_for(cfg.ngff_version, volume.zarr_format))  # outputs in the scan's format
    region(cfg.bbox, volume.shape, volume.where)  # a bad --bbox is refused before anything else
    volume.cache_bytes = cfg.input_cache_bytes  # from the first read: the intensity check's samples stay cached
    model = open_model_files(cfg.place(cfg.model_path), cache_dir=cfg.model_cache_dir, folds=cfg.folds)
    spec = output_spec(cfg)
    if spec is not None and spec.kind == FINAL:
        output_channels(spec.mode, spec.threshold, model.num_classes)  # refuse a bad mode before any work
    check_channels(model.num_input_channels, volume.channels, cfg.input_dir)
    check_schemes(model.normalization_schemes)
    found = _check_intensities(cfg, volume, model, announce)
    patch = triple(int(p) for p in (cfg.patch_size or model.patch_size))
    chunks = triple(int(c) for c in (cfg.chunk_size or patch))
    if spec is not None and spec.kind == FINAL:  # the output's pyramid, checked before any patch is run
        check_pyramid(volume.shape, chunks, spec.levels, chunks_source(cfg.chunk_size, cfg.patch_size, chunks))
    fp = fingerprint(cfg, model_fp=model.fingerprint, volume=volume, patch=patch, chunks=chunks, labels=model.labels)
    return PartContext(cfg=cfg, parts=cfg.place(cfg.output_dir), volume=volume, model=model, patch=patch,
                       chunks=chunks, fp=fp, device=device,
                       intensity=found.as_dict(cfg.intensity_check) if found else None)


def run_predict(cfg: PredictConfig, listener: Callable[[ProgressLine], None] | None = None,
                announce: bool = True, *, volume: InputVolume | None = None) -> tuple[str, str]:
    """Run one part; return (part store URL, marker URL). Idempotent: a finished part returns at once.
    ``listener`` receives the part's progress instead of the terminal (the pipeline shows all parts as one);
    ``announce``, ``volume``: see prepare."""
    if cfg.part_ids or cfg.part_ids_file:
        cfg = replace(cfg, part_id=cfg.the_part(), part_ids=None, part_ids_file=None)
    ctx = prepare(cfg, announce, volume=volume)
    ownership.mark(ctx.parts, "parts")  # what may later remove it knows it is ours
    work = ctx.work
    # From the loop to the marker, a stop signal is only noted (signals.py): the loop stops at a batch
    # boundary with a checkpoint; once past the loop the part completes (a stop between the marker and the
    # claim's "complete" would make the rerun do the whole part again). Before it (waiting for the claim,
    # loading the model) nothing is in flight and a signal stops the run at once.
    until_marker = contextlib.ExitStack()

    def predict(lease: Lease) -> dict[str, Any]:
        part = PartRun(ctx, lease, listener)
        until_marker.enter_context(signals.deferred())
        return part.run()

    with until_marker:
        marker, ran = work.run(predict)
        if ran:
            drop_scratch_quietly(ctx.parts, cfg.part_id, marker["run"])
    if not ran:
        log.info("predict part %d/%d is already complete (%s): nothing to do%s", cfg.part_id, cfg.num_parts,
                 work.marker, brief(ctx.intensity))
    elif signals.requested():
        log.info("predict part %d/%d: %s came after its last batch: the part is complete", cfg.part_id,
                 cfg.num_parts, signals.requested())
    return marker["store"], work.marker.url


class Inferer:
    """The seed's Python API: ``Inferer(...).infer() -> (part store, marker)``. Errors raise.

    Takes the seed's arguments and every predict setting by name (``config.PredictConfig``)."""

    def __init__(self, model_path: str, input_dir: str, output_dir: str, input_format: str = "zarr",
                 verbose: bool = False, **kwargs: Any) -> None:
        if input_format != "zarr":
            raise BadArguments(f"input_format {input_format!r} is not supported; inputs are Zarr")
        names = {f.name for f in fields(PredictConfig)}
        self.config = PredictConfig(model_path=model_path, input_dir=input_dir, output_dir=output_dir,
                                    quiet=kwargs.pop("quiet", not verbose),
                                    **{k: v for k, v in kwargs.items() if k in names})
        self.ignored = {k: v for k, v in kwargs.items() if k not in names}

    def infer(self) -> tuple[str, str]:
        return run_predict(self.config)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.config)


