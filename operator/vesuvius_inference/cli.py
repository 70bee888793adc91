"""Command-line front door: ``vesuvius-inference <command>`` and the seed's ``vesuvius.*`` names.

Every option accepts ``--a_b`` and ``--a-b``. Stage modules are imported only when their command
runs, so ``vesuvius-inference operator`` works without torch installed. Exit codes (errors.py): 0 done,
2 bad arguments, 3 bad input data or model, 80 stopped on request after a checkpoint (SIGTERM, SIGINT:
signals.py), anything else a transient failure worth a retry; every failure ends as one ``error:`` line
(failure.py), a stop as one ``stopped by ...`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vesuvius_inference.contract import config
from vesuvius_inference.contract.errors import (
    EXIT_BAD_ARGUMENTS,
    Stopped,
    VesuviusError,
    classify,
)
from vesuvius_inference.contract.failure import debug_requested, report, report_stop
from vesuvius_inference.contract.podopts import guard  # Kubernetes pods: the disruption bound
from vesuvius_inference.contract.settings import build_parser, check_values, from_args
from vesuvius_inference.predict import signals
from vesuvius_inference.stages.stagecheck import run_check  # the operator's check Jobs

log = logging.getLogger("vesuvius_inference")


@dataclass(frozen=True)
class Command:
    """A command: its configuration (whose settings make the parser) and what runs it."""

    config: type
    prog: str
    description: str
    run: Callable[[Any], Any]


def _predict(cfg: Any) -> None:
    from vesuvius_inference.predict.stage import run_predict

    run_predict(cfg)


def _blend(cfg: Any) -> None:
    from vesuvius_inference.stages.finish import finish_from_blend

    finish_from_blend(cfg)


def _finalize(cfg: Any) -> None:
    from vesuvius_inference.stages.finalize import run_finalize

    run_finalize(cfg)


def _pipeline(cfg: Any) -> None:
    from vesuvius_inference.stages.pipeline import run_local_pipeline

    run_local_pipeline(cfg)


def _plan(cfg: Any) -> None:
    from vesuvius_inference.stages.plan import run_plan

    run_plan(cfg)


def _demo(cfg: Any) -> None:
    from vesuvius_inference.demo.run import run_demo

    run_demo(output_dir=cfg.output_dir, shape=cfg.shape, parts=cfg.parts, seed=cfg.seed, tta=cfg.tta,
             device=cfg.device, quiet=cfg.quiet)


COMMANDS: dict[str, Command] = {
    "predict": Command(config.PredictConfig, "vesuvius.predict", "Run an nnU-Net model over one part of a Zarr volume.",
                       _predict),
    "blend": Command(config.BlendConfig, "vesuvius.blend_logits",
                     "Finish the output from predict parts: the seams, and the parts' own chunks when predict was not "
                     "given an output.", _blend),
    "blend_and_finalize": Command(config.BlendAndFinalizeConfig, "vesuvius.blend_and_finalize",
                                  "Blend predict parts and finalize in one pass into a uint8 OME-Zarr output (no "
                                  "float16 intermediate); parts predicted into an output are finished there.", _blend),
    "finalize": Command(config.FinalizeConfig, "vesuvius.finalize_outputs",
                        "Blended logits -> uint8 OME-Zarr output with its pyramid; or, given the predict parts of an "
                        "output they wrote themselves (--input_kind parts), build that output's pyramid and complete it.",
                        _finalize),
    "pipeline": Command(config.PipelineConfig, "vesuvius.inference_pipeline",
                        "predict -> blend -> finalize on this machine.", _pipeline),
    "plan": Command(config.PlanConfig, "vesuvius-inference plan",
                    "Patch grid, part balance, bytes and model passes of a run, from metadata only.", _plan),
    "demo": Command(config.DemoConfig, "vesuvius-inference demo",
                    "Synthetic scroll -> full pipeline (2 parts, CPU) with the bundled model; prints Dice.", _demo),
}


def parser(name: str) -> argparse.ArgumentParser:
    """The parser of a command, built from its configuration's settings."""
    c = COMMANDS[name]
    return build_parser(c.config, c.prog, c.description)


def parse(name: str, argv: Sequence[str]) -> Any:
    """The configuration a command line gives (exits 2 on bad arguments, as argparse does); BadArguments
    for a value outside its setting's declared bounds or choices (from the command line or the environment),
    before anything acts on it (--storage_wait_s, the disruption guard)."""
    cfg: Any = from_args(COMMANDS[name].config, parser(name).parse_args(list(argv)))
    check_values(cfg)
    return cfg


def _setup_logging(quiet: bool, debug: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr,
                        force=True)
    if debug:
        log.setLevel(logging.DEBUG)


def _cmd_operator(argv: Sequence[str]) -> int:
    from vesuvius_inference.k8s.operator_main import main as operator_main

    return int(operator_main(list(argv)) or 0)


def _cmd_render(argv: Sequence[str]) -> int:
    from vesuvius_inference.k8s.render import main as render_main

    return render_main(list(argv))


# Commands that stop on SIGTERM/SIGINT after a checkpoint (signals.py) and exit EXIT_STOPPED.
STOPPABLE = ("predict", "pipeline")
def _storage_wait(cfg: Any) -> None:
    """This process waits out storage outages for --storage_wait_s (storagewait.py)."""
    from vesuvius_inference.store import storagewait

    storagewait.configure(float(getattr(cfg, "storage_wait_s", 0.0) or 0.0))  # within its bounds: parse's check


def run_command(name: str, argv: Sequence[str]) -> int:
    """Parse and run one command. Every failure ends as one ``error:`` line and its exit code (errors.py)."""
    try:
        cfg = parse(name, argv)  # argparse exits 2 on bad arguments
    except VesuviusError as e:  # a bad environment default ($VESUVIUS_...)
        return report(e, e, debug_requested())
    debug = debug_requested(getattr(cfg, "debug", False))
    _setup_logging(getattr(cfg, "quiet", False), debug)
    stoppable = name in STOPPABLE
    try:
        with signals.installed(parent_death=signals.ENV_PARENT_PID in os.environ) if stoppable \
                else contextlib.nullcontext():
            _storage_wait(cfg)
            guard(cfg)  # a Kubernetes pod whose part was disrupted too often stops here
            COMMANDS[name].run(cfg)
    except Stopped as e:
        return report_stop(e)
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
  check      is a stage's work complete on storage? (the operator's check Jobs)

'vesuvius-inference <command> --help' shows a command's options.
exit codes: 0 done, 2 bad arguments, 3 bad input data or model, 69 the device asked for is unavailable,
            74 storage unreachable, 75 another live run holds the work, 79 this part was disrupted too often
            (Kubernetes), 80 stopped on request (SIGTERM, SIGINT) after a checkpoint: rerun, it resumes,
            1 other failure (all but 2, 3 and 79: rerun)"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_BAD_ARGUMENTS
    if argv[0] in ("--version", "version"):
        from vesuvius_inference import __version__

        print(__version__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "operator":
        return _cmd_operator(rest)
    if cmd == "render":
        return _cmd_render(rest)
    if cmd == "check":
        return run_check(rest)
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


def run_pipeline() -> int:
    """The seed's API: parse ``sys.argv`` like ``vesuvius.inference_pipeline`` and return an exit code."""
    return pipeline_main()


if __name__ == "__main__":
    sys.exit(main())
