"""Command-line front door: ``vesuvius-inference <command>`` and the seed's ``vesuvius.*`` names.

Every option accepts ``--a_b`` and ``--a-b``. Stage modules are imported only when their command
runs, so ``vesuvius-inference operator`` works without torch installed. Exit codes (errors.py): 0 done,
2 bad arguments, 3 bad input data or model, anything else a transient failure worth a retry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import EXIT_BAD_ARGUMENTS, BadArguments, classify
from .failure import debug_requested, report, write_termination_message

log = logging.getLogger("vesuvius_inference")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        """argparse's usage and message (exit 2), and the message for Kubernetes as every failure's."""
        write_termination_message(f"error: {self.prog}: {message}\n")
        super().error(message)

    def opt(self, name: str, *more: str, **kw: Any) -> None:
        """Add an option under both its underscore and hyphen spellings."""
        names = [name, *more]
        spellings: list[str] = []
        for n in names:
            for s in (n, n.replace("_", "-"), "--" + n[2:].replace("-", "_")):
                if s not in spellings:
                    spellings.append(s)
        kw.setdefault("dest", name[2:].replace("-", "_"))
        self.add_argument(*spellings, **kw)


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 128,128,128, got {text!r}") from None
    if len(vals) != 3 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers z,y,x, got {text!r}")
    return vals


def _folds(text: str) -> list[str] | None:
    if text.strip().lower() in ("", "auto"):
        return None
    return [f.strip() for f in text.split(",") if f.strip()]


def _common(p: _Parser) -> None:
    p.opt("--quiet", action="store_true", help="no progress bars; warnings and errors only")
    p.opt("--overwrite", action="store_true", help="replace an existing output written by a different configuration")
    p.opt("--storage-options", default=None, metavar="JSON",
          help="fsspec options for remote URLs, e.g. '{\"endpoint_url\": \"http://minio:9000\"}' "
               "(default: $VESUVIUS_STORAGE_OPTIONS)")
    p.opt("--debug", action="store_true", help="print the traceback of a failure (also $VESUVIUS_DEBUG=1)")


def _model_opts(p: _Parser, seed_names: bool) -> None:
    p.opt("--overlap", type=float, default=0.5, help="overlap fraction between neighbouring patches (tile step = 1 - overlap)")
    p.opt("--batch_size", type=int, default=1, help="patches per forward pass")
    p.opt("--disable_tta", action="store_true", help="no mirroring test-time augmentation (about 8x faster)")
    p.opt("--tta_type", default="mirroring", choices=["mirroring"], help="TTA kind (nnU-Net's mirroring)")
    p.opt("--patch_size", type=_ints, default=None, help="z,y,x (default: the model's plans)")
    p.opt("--folds", type=_folds, default=None, help="folds to ensemble, e.g. 0,1 (default: every fold present)")
    p.opt("--cache_gb", type=float, default=4.0, help="memory bound for the accumulation cache, GB")
    p.opt("--chunk_size", type=_ints, default=None,
          help="z,y,x chunks of the output (final or blended) and of the accumulation and part stores "
               "(default: the patch size; even sizes for a pyramid)")
    p.opt("--level", type=int, default=0, help="OME-Zarr level of the input (0 = full resolution)")
    p.opt("--skip_empty_patches", dest="skip_empty_patches", action="store_true", default=True,
          help="do not run the model on homogeneous patches (default: on)")
    p.opt("--no_skip_empty_patches", dest="skip_empty_patches", action="store_false",
          help="run the model on every patch")


def predict_parser() -> _Parser:
    p = _Parser(prog="vesuvius.predict", description="Run an nnU-Net model over one part of a Zarr volume.")
    p.opt("--model_path", required=True, help="nnU-Net v2 trained model folder")
    p.opt("--input_dir", required=True, help="input Zarr array or OME-Zarr group (path or URL)")
    p.opt("--output_dir", required=True, help="directory of the part stores (blend's PARTS_DIR)")
    p.opt("--part_id", type=int, default=0)
    p.opt("--num_parts", type=int, default=1)
    p.opt("--part_ids", default=None, metavar="RANGES",
          help="run the part_id-th entry of this index list (e.g. 3,17,40-42): how retry Jobs map indexes to parts")
    p.opt("--device", default="auto",
          help="auto (default: a CUDA GPU if one is visible, else the CPU, saying so), cuda, cuda:N or cpu; a GPU "
               "asked for that this process cannot use exits 69 before anything is written")
    p.opt("--input_anon", action="store_true", help="read the input without credentials (public buckets)")
    p.opt("--bbox", default=None, metavar="z0:z1,y0:y1,x0:x1",
          help="region of interest (half-open, volume coordinates); outputs keep the volume's frame")
    p.opt("--input_cache_gb", type=float, default=None,
          help="input chunk cache, part of --cache_gb (default: a quarter of it); 0 = no cache")
    p.opt("--patch_order", choices=["tiled", "rowmajor"], default="tiled",
          help="tiled: columns of tiles sized to the input cache (default); rowmajor: nnU-Net's order")
    p.opt("--checkpoint_s", type=float, default=600.0,
          help="seconds between checkpoints: a killed part resumes from the last one (0: after every batch)")
    p.opt("--model_cache_dir", default=None,
          help="cache for s3:// and hf:// models (default: $VESUVIUS_MODEL_CACHE_DIR or ~/.cache/vesuvius-inference/models)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--blended_output", "--blended-output", dest="blended_output", default=None, metavar="URL",
                     help="write the chunks only this part covers straight into these blended float16 logits; "
                          "blend then finishes the seams")
    out.add_argument("--final_output", "--final-output", dest="final_output", default=None, metavar="URL",
                     help="the same, finalized (--mode, --threshold) into this uint8 OME-Zarr output")
    p.opt("--mode", choices=["binary", "multiclass"], default="binary", help="with --final_output: what to write")
    p.opt("--threshold", action="store_true", help="with --final_output: class ids instead of probabilities")
    _levels_opt(p)
    p.opt("--compile", action="store_true", help="torch.compile the networks (default: off)")
    p.opt("--intensity_check", choices=["warn", "error", "off"], default="warn",
          help="compare the input's intensities with the model's training range (plans): warn (default), "
               "error (exit 3), off")
    _lease_opt(p)
    _model_opts(p, True)
    _common(p)
    return p


def _levels_opt(p: _Parser) -> None:
    p.opt("--levels", type=int, default=None,
          help="resolution levels of the final output's pyramid, 2x per axis (default: down to one chunk)")
    p.opt("--ngff_version", choices=["auto", "0.4", "0.5"], default="auto",
          help="the final output's format: OME-Zarr 0.4 on Zarr v2, or 0.5 on Zarr v3; auto (default): the input's "
               "(a Zarr v2 scan gets 0.4, a v3 one 0.5)")


def _lease_opt(p: _Parser) -> None:
    p.opt("--lease_s", type=float, default=None,
          help="claim lease: a run that has not renewed its claim for this long is presumed dead and taken over "
               "(default: $VESUVIUS_LEASE_S or 60)")


def blend_parser() -> _Parser:
    p = _Parser(prog="vesuvius.blend_logits",
                description="Finish the output from predict parts: the seams, and the parts' own chunks when "
                            "predict was not given an output.")
    p.add_argument("parts_dir")
    p.add_argument("output")
    p.opt("--mode", choices=["binary", "multiclass"], default=None,
          help="finalize while blending (uint8 OME-Zarr output, no float16 intermediate)")
    p.opt("--threshold", action="store_true", help="with --mode: class ids instead of probabilities")
    _levels_opt(p)
    p.opt("--seams_only", action="store_true",
          help="of a final output, write the seams only and leave the pyramid to finalize (a split stage, as on "
               "Kubernetes); by default an unsplit blend finishes the output")
    _lease_opt(p)
    p.opt("--cache_gb", type=float, default=4.0)
    p.opt("--sigma_scale", type=float, default=8.0, help="sigma = patch / sigma_scale (nnU-Net: 8, the only value)")
    p.opt("--chunk_size", type=_ints, default=None,
          help="the output's chunks are the parts' (predict --chunk_size); when given, must match them")
    p.opt("--num_parts", type=int, default=1, help="split the output chunks over this many processes")
    p.opt("--part_id", type=int, default=0)
    _common(p)
    return p


def blend_and_finalize_parser() -> _Parser:
    """The seed's ``vesuvius.blend_and_finalize``: blend's flags, the output always final (default --mode binary)."""
    p = blend_parser()
    p.prog = "vesuvius.blend_and_finalize"
    p.description = ("Blend predict parts and finalize in one pass into a uint8 OME-Zarr output (no float16 "
                     "intermediate); parts predicted into an output are finished there.")
    p.set_defaults(finalize=True)
    return p


def finalize_parser() -> _Parser:
    p = _Parser(prog="vesuvius.finalize_outputs",
                description="Blended logits -> uint8 OME-Zarr output with its pyramid; or, given the predict parts "
                            "of an output they wrote themselves, build that output's pyramid and complete it.")
    p.add_argument("input", help="blended logits, or the predict parts directory of a fused output")
    p.add_argument("output")
    _levels_opt(p)
    _lease_opt(p)
    p.opt("--mode", choices=["binary", "multiclass"], default="binary")
    p.opt("--threshold", action="store_true", help="class ids (mask / argmax) instead of probabilities")
    p.opt("--delete_intermediates", action="store_true", help="remove INPUT once the output is complete")
    p.opt("--also_delete", action="append", default=[], metavar="URL",
          help="with --delete_intermediates, also remove URL (e.g. the predict parts) once the output is complete")
    p.opt("--cache_gb", type=float, default=4.0)
    p.opt("--num_parts", type=int, default=1)
    p.opt("--part_id", type=int, default=0)
    _common(p)
    return p


def pipeline_parser() -> _Parser:
    p = _Parser(prog="vesuvius.inference_pipeline", description="predict -> blend -> finalize on this machine.")
    p.opt("--input", required=True)
    p.opt("--output", required=True)
    p.opt("--model", required=True)
    p.opt("--workdir", default=None, help="intermediates (default: <output>_work)")
    p.opt("--gpus", default="all", help="GPU ids, e.g. 0,1, or 'all'; no GPU -> CPU")
    p.opt("--parts_per_gpu", type=int, default=1, help="parts each GPU runs one after another")
    p.opt("--mode", choices=["binary", "multiclass"], default="binary")
    p.opt("--threshold", action="store_true")
    p.opt("--skip_predict", action="store_true")
    p.opt("--skip_blend", action="store_true")
    p.opt("--skip_finalize", action="store_true")
    p.opt("--keep_intermediates", action="store_true")
    p.opt("--fuse_blend_finalize", action="store_true", help="finalize while blending: no float16 intermediate")
    p.opt("--bbox", default=None, metavar="z0:z1,y0:y1,x0:x1", help="region of interest (see predict)")
    _levels_opt(p)
    _model_opts(p, False)
    _common(p)
    return p


def plan_parser() -> _Parser:
    p = _Parser(prog="vesuvius-inference plan",
                description="Patch grid, part balance, bytes and model passes of a run, from metadata only.")
    p.opt("--input", "--input_dir", required=True)
    p.opt("--model", "--model_path", required=True)
    p.opt("--num_parts", type=int, default=1)
    p.opt("--overlap", type=float, default=0.5)
    p.opt("--patch_size", type=_ints, default=None)
    p.opt("--chunk_size", type=_ints, default=None)
    p.opt("--level", type=int, default=0)
    p.opt("--folds", type=_folds, default=None)
    p.opt("--disable_tta", action="store_true")
    p.opt("--no_skip_empty_patches", action="store_true")
    p.opt("--bbox", default=None, metavar="z0:z1,y0:y1,x0:x1")
    p.opt("--throughput", type=float, default=None, help="model passes per second per GPU, for a GPU-hours estimate")
    p.opt("--json", action="store_true", help="print JSON")
    _common(p)
    return p


def demo_parser() -> _Parser:
    p = _Parser(prog="vesuvius-inference demo",
                description="Synthetic scroll -> full pipeline (2 parts, CPU) with the bundled model; prints Dice.")
    p.opt("--output_dir", default="demo-output")
    p.opt("--shape", type=_ints, default=None, help="z,y,x of the synthetic volume")
    p.opt("--parts", type=int, default=2)
    p.opt("--seed", type=int, default=1234)
    p.opt("--tta", action="store_true", help="mirroring TTA (8x slower on CPU)")
    p.opt("--device", default="cpu")
    p.opt("--quiet", action="store_true")
    return p


def _setup_logging(quiet: bool, debug: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)
    if debug:
        log.setLevel(logging.DEBUG)


def _storage(args: argparse.Namespace) -> dict[str, Any]:
    from .storage import parse_storage_options

    return parse_storage_options(getattr(args, "storage_options", None))


def _cmd_predict(args: argparse.Namespace) -> None:
    from .predict import PredictConfig, run_predict

    part_id = args.part_id
    if args.part_ids:
        from .k8s.ranges import parse_ranges

        ids = sorted(parse_ranges(args.part_ids))
        if not 0 <= part_id < len(ids):
            raise BadArguments(f"--part_id {part_id} is out of range for --part_ids {args.part_ids} ({len(ids)} parts)")
        part_id = ids[part_id]
    run_predict(PredictConfig(
        model_path=args.model_path, input_dir=args.input_dir, output_dir=args.output_dir, part_id=part_id,
        num_parts=args.num_parts, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
        skip_empty_patches=args.skip_empty_patches, do_tta=not args.disable_tta, tta_type=args.tta_type,
        patch_size=args.patch_size, folds=args.folds, cache_gb=args.cache_gb, chunk_size=args.chunk_size,
        level=args.level, overwrite=args.overwrite, quiet=args.quiet, storage_options=_storage(args),
        input_anon=args.input_anon, model_cache_dir=args.model_cache_dir, input_cache_gb=args.input_cache_gb,
        patch_order=args.patch_order, bbox=args.bbox, checkpoint_s=args.checkpoint_s,
        blended_output=args.blended_output, final_output=args.final_output, mode=args.mode, threshold=args.threshold,
        lease_s=args.lease_s, levels=args.levels, intensity_check=args.intensity_check, compile=args.compile,
        ngff_version=args.ngff_version))


def _cmd_blend(args: argparse.Namespace) -> None:
    from .blend import BlendConfig, run_blend

    run_blend(BlendConfig(args.parts_dir, args.output, cache_gb=args.cache_gb, sigma_scale=args.sigma_scale,
                          chunk_size=args.chunk_size, num_parts=args.num_parts, part_id=args.part_id,
                          overwrite=args.overwrite, quiet=args.quiet, storage_options=_storage(args),
                          mode=args.mode, threshold=args.threshold, lease_s=args.lease_s, levels=args.levels,
                          then_finalize=not args.seams_only, ngff_version=args.ngff_version,
                          finalize=getattr(args, "finalize", False)))


def _cmd_finalize(args: argparse.Namespace) -> None:
    from .finalize import FinalizeConfig, run_finalize

    run_finalize(FinalizeConfig(args.input, args.output, mode=args.mode, threshold=args.threshold,
                                delete_intermediates=args.delete_intermediates, also_delete=args.also_delete,
                                cache_gb=args.cache_gb,
                                num_parts=args.num_parts, part_id=args.part_id, overwrite=args.overwrite,
                                quiet=args.quiet, storage_options=_storage(args), levels=args.levels,
                                lease_s=args.lease_s, ngff_version=args.ngff_version))


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from .pipeline import PipelineConfig, run_local_pipeline

    run_local_pipeline(PipelineConfig(
        input=args.input, output=args.output, model=args.model, workdir=args.workdir, gpus=args.gpus,
        parts_per_gpu=args.parts_per_gpu, mode=args.mode, threshold=args.threshold, batch_size=args.batch_size,
        overlap=args.overlap, do_tta=not args.disable_tta, patch_size=args.patch_size, folds=args.folds,
        cache_gb=args.cache_gb, chunk_size=args.chunk_size, level=args.level,
        skip_empty_patches=args.skip_empty_patches, skip_predict=args.skip_predict, skip_blend=args.skip_blend,
        skip_finalize=args.skip_finalize, keep_intermediates=args.keep_intermediates,
        fuse_blend_finalize=args.fuse_blend_finalize, overwrite=args.overwrite, quiet=args.quiet, bbox=args.bbox,
        storage_options=_storage(args), levels=args.levels, ngff_version=args.ngff_version))


def _cmd_plan(args: argparse.Namespace) -> None:
    from .plan import PlanConfig, run_plan

    run_plan(PlanConfig(input=args.input, model=args.model, num_parts=args.num_parts, overlap=args.overlap,
                        patch_size=args.patch_size, chunk_size=args.chunk_size, level=args.level,
                        do_tta=not args.disable_tta, skip_empty_patches=not args.no_skip_empty_patches,
                        folds=args.folds, throughput=args.throughput, bbox=args.bbox,
                        storage_options=_storage(args)),
             as_json=args.json)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo.run import run_demo

    run_demo(output_dir=args.output_dir, shape=args.shape, parts=args.parts, seed=args.seed, tta=args.tta,
             device=args.device, quiet=args.quiet)


def _cmd_operator(argv: Sequence[str]) -> int:
    from .k8s.operator_main import main as operator_main

    return int(operator_main(list(argv)) or 0)


def _cmd_render(argv: Sequence[str]) -> int:
    from .k8s.render import main as render_main

    return render_main(list(argv))


COMMANDS: dict[str, tuple[Callable[[], _Parser], Callable[[argparse.Namespace], None]]] = {
    "predict": (predict_parser, _cmd_predict),
    "blend": (blend_parser, _cmd_blend),
    "blend_and_finalize": (blend_and_finalize_parser, _cmd_blend),
    "finalize": (finalize_parser, _cmd_finalize),
    "pipeline": (pipeline_parser, _cmd_pipeline),
    "demo": (demo_parser, _cmd_demo),
    "plan": (plan_parser, _cmd_plan),
}


def run_command(name: str, argv: Sequence[str]) -> int:
    """Parse and run one command. Every failure ends as one ``error:`` line and its exit code (errors.py)."""
    make_parser, fn = COMMANDS[name]
    parser = make_parser()
    args = parser.parse_args(list(argv))  # exits 2 on bad arguments
    debug = debug_requested(getattr(args, "debug", False))
    _setup_logging(getattr(args, "quiet", False), debug)
    try:
        fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is classified: one line, one exit code
        return report(classify(e), e, debug)
    return 0


USAGE = """usage: vesuvius-inference <command> [options]

commands:
  predict    run the model over one part of a volume       (= vesuvius.predict)
  blend      merge parts into blended logits                (= vesuvius.blend_logits)
  blend_and_finalize  blend and finalize in one pass          (= vesuvius.blend_and_finalize)
  finalize   logits -> uint8 OME-Zarr output                (= vesuvius.finalize_outputs)
  pipeline   predict -> blend -> finalize on this machine   (= vesuvius.inference_pipeline)
  plan       grid, part balance, bytes and model passes, from metadata only
  demo       synthetic scroll through the whole pipeline on the CPU
  operator   run the Kubernetes operator (kopf)
  render     print the Jobs the operator would create for an InferenceJob

'vesuvius-inference <command> --help' shows a command's options.
exit codes: 0 done, 2 bad arguments, 3 bad input data or model, 69 the device asked for is unavailable,
            74 storage unreachable, 75 another live run holds the work, 1 other failure (all but 2, 3: rerun)"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_BAD_ARGUMENTS
    if argv[0] in ("--version", "version"):
        from . import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "operator":
        return _cmd_operator(rest)
    if cmd == "render":
        return _cmd_render(rest)
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return run_command(cmd, rest)


def predict_main() -> int:
    return run_command("predict", sys.argv[1:])


def blend_main() -> int:
    return run_command("blend", sys.argv[1:])


def blend_and_finalize_main() -> int:
    return run_command("blend_and_finalize", sys.argv[1:])


def finalize_main() -> int:
    return run_command("finalize", sys.argv[1:])


def pipeline_main() -> int:
    return run_command("pipeline", sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
