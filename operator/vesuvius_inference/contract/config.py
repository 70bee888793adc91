"""Every setting of every command, declared once (the mechanism is settings.py).

Settings come in groups, one idea each; a command's configuration is the groups it uses plus its
own settings, so a setting two commands share is one declaration (the groups a configuration
inherits are the stages it applies to). The pipeline's configuration holds every predict setting;
``settings.derive`` hands them to predict unchanged, ``settings.to_argv`` to a worker process, and
the Kubernetes manifests take those with a spec path (``crd=``) from the InferenceJob.

Pure and torch-free: the operator builds its Jobs' args from these classes. Checks that need no
I/O live here (``validate``); checks against data or the model live in the stages.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, ClassVar

from vesuvius_inference.contract import intensity
from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.locations import (
    DELETE,
    READ,
    WRITE,
    Named,
    refuse_overlaps,
    refuse_read_only_scheme,
)
from vesuvius_inference.contract.place import Place
from vesuvius_inference.contract.prechecks import check_device_name
from vesuvius_inference.contract.settings import (
    REQUIRED,
    Bounds,
    check_values,
    dumps,
    field_of,
    ints3,
    join_commas,
    json_object,
    names_list,
    number,
    setting,
    variant,
)

MODES = ("binary", "multiclass")
INTENSITY_CHECKS = intensity.CHECKS  # auto (default), warn, error, off: what each does is intensity.py's
PATCH_ORDERS = ("tiled", "rowmajor")
FINALIZE_INPUTS = ("blended", "parts")
NGFF_CHOICES = ("auto", "0.4", "0.5")  # ngff.py: 0.4 is stored on Zarr v2, 0.5 on Zarr v3
AUTO, SLABS = "auto", "slabs"
POD_DEVICES = ("cuda", "cpu")  # what a predict pod can be given: one GPU, or none (k8s/spec.py device_problems)
OVERLAP = Bounds(0.0, 1.0, high_open=True)  # tile step = 1 - overlap > 0 (grid.PatchGrid holds to it too)
GB = Bounds(0.0, 4096.0, low_open=True)  # a cache's size
SECONDS = Bounds(0.0, 86400.0)  # an interval or a wait: at most a day
EDGE = Bounds(1, 4096)  # a patch's or a chunk's edge, voxels
# The CRD's descriptions of settings that several stages share (crd_help)
STAGE_CACHE_HELP = ("Memory bound of a {stage} pod's cache (GB); with no resources given, the pods request this "
                    "plus 0.5 GiB of memory.")
PARALLELISM_HELP = "{stage} pods; > 1 makes an Indexed Job over disjoint sets of output chunks."


def partition_choice(text: str) -> str:
    """``auto``, ``slabs`` or ``NZxNY`` (e.g. ``16x4``: 16 z-slabs, each cut into 4 runs of y)."""
    t = str(text).strip().lower()
    if t in (AUTO, SLABS):
        return t
    nz, sep, ny = t.partition("x")
    if not sep or not nz.isdigit() or not ny.isdigit() or int(nz) < 1 or int(ny) < 1:
        raise ValueError(f"expected auto, slabs or NZxNY (e.g. 16x4), got {text!r}")
    return f"{int(nz)}x{int(ny)}"


def blocks_of(partition: str) -> tuple[int, int] | None:
    """(nz, ny) of an explicit (normalised) ``NZxNY`` partition, else None."""
    if partition in (AUTO, SLABS):
        return None
    nz, _, ny = partition.partition("x")
    return int(nz), int(ny)


@dataclass(kw_only=True)
class Storage:
    """Where data lives: options for every remote URL (every command)."""

    help_group: ClassVar[str] = "storage"

    storage_options: dict[str, Any] = setting(
        dict, "--storage_options", parse=json_object, render=dumps, env="VESUVIUS_STORAGE_OPTIONS", merge=True,
        secret=True, metavar="JSON",
        help="fsspec options for remote URLs, e.g. '{\"endpoint_url\": \"http://minio:9000\"}'; updates the "
             "environment's")
    storage_wait_s: float = setting(
        300.0, "--storage_wait_s", parse=float, render=number, env="VESUVIUS_STORAGE_WAIT_S",
        crd={"predict": "storage.waitSeconds", "blend": "storage.waitSeconds", "finalize": "storage.waitSeconds"},
        bounds=SECONDS,
        crd_help="How long a pod waits for storage that stops answering (connection refused or reset, timeouts, 5xx, "
                 "throttling), retrying with backoff, before it exits 74. Such an exit does not count against "
                 "retry.perPartLimit; each counts toward retry.maxDisruptionsPerPart. 0: exit at once.",
        help="wait this long for storage that stops answering (connection refused or reset, timeouts, 5xx, "
             "throttling), retrying with backoff, before exiting 74; 0: exit at once (storagewait.py)")

    def storage_urls(self) -> tuple[str | None, ...]:
        """The URLs whose filesystems receive ``storage_options`` (their keys are checked against those
        filesystems by optioncheck.check_options, which needs fsspec: not here)."""
        return ()

    def place(self, url: str) -> Place:
        """``url`` with this command's storage options: the one value every stage below reaches it by."""
        return Place(url, self.storage_options)


@dataclass(kw_only=True)
class ModelChoice:
    """Which model and folds (predict, pipeline, plan)."""

    help_group: ClassVar[str] = "model"

    model_path: str = setting(REQUIRED, "--model_path", "--model", crd="model.uri",
                              help="nnU-Net v2 trained model folder (path, s3://, hf://)")
    folds: tuple[str, ...] | None = setting(
        None, "--folds", parse=names_list, render=join_commas, crd="inference.folds",
        crd_help="Folds to ensemble (default every fold in the model folder).",
        crd_schema={"items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1, "maxItems": 16},
        help="folds to ensemble, e.g. 0,1 (default: every fold present)")
    model_cache_dir: str | None = setting(None, "--model_cache_dir", env="VESUVIUS_MODEL_CACHE_DIR",
                                          help="cache for s3:// and hf:// models (else ~/.cache/vesuvius-inference/models)")

    @property
    def model_url(self) -> str | None:
        """The model's URL where storage options reach it (hf:// goes through huggingface_hub instead)."""
        return None if self.model_path.startswith("hf://") else self.model_path


@dataclass(kw_only=True)
class InputChoice:
    """Which voxels (predict, pipeline, plan)."""

    help_group: ClassVar[str] = "input/output"

    input_dir: str = setting(REQUIRED, "--input_dir", "--input",
                             help="input Zarr array or OME-Zarr group (path or URL)")
    level: int = setting(0, "--level", parse=int, crd="input.level", bounds=Bounds(0, 32),
                         crd_help="OME-Zarr resolution level (0 = full resolution).",
                         help="OME-Zarr level of the input (0 = full resolution)")
    bbox: str | None = setting(None, "--bbox", metavar="z0:z1,y0:y1,x0:x1", crd="inference.bbox",
                               crd_help="Region of interest z0:z1,y0:y1,x0:x1 (half-open, volume coordinates).",
                               crd_schema={"maxLength": 256, "pattern": r"^\d+:\d+,\d+:\d+,\d+:\d+$"},
                               help="region of interest (half-open, volume coordinates); outputs keep the volume's frame")
    input_anon: bool = setting(False, "--input_anon", group="storage", crd="storage.anonymousInput",
                               crd_help="Read the input without credentials (public buckets).",
                               help="read the input without credentials (public buckets)")

    @property
    def input_place(self) -> Place:
        """The input with the command's storage options (read without credentials with ``--input_anon``)."""
        place = Place(self.input_dir, getattr(self, "storage_options", {}))
        return place.anonymous() if self.input_anon else place


@dataclass(kw_only=True)
class Grid:
    """What the model sees and where its logits go: these fix every output byte (predict, pipeline, plan)."""

    help_group: ClassVar[str] = "model"

    overlap: float = setting(0.5, "--overlap", parse=float, render=number, crd="inference.overlap", bounds=OVERLAP,
                             crd_help="Overlap fraction between neighbouring patches (tile step = 1 - overlap).",
                             help="overlap fraction between neighbouring patches (tile step = 1 - overlap)")
    patch_size: tuple[int, int, int] | None = setting(None, "--patch_size", parse=ints3, render=join_commas,
                                                      metavar="z,y,x", crd="inference.patchSize", bounds=EDGE,
                                                      crd_help="z, y, x patch size (default the model's plans).",
                                                      help="patch size (default: the model's plans)")
    chunk_size: tuple[int, int, int] | None = setting(
        None, "--chunk_size", group="input/output", parse=ints3, render=join_commas, metavar="z,y,x",
        crd="inference.chunkSize", bounds=EDGE,
        crd_help="z, y, x chunks of the output and the part stores (default the patch size).",
        help="chunks of the output and the part stores (default: the patch size)")
    do_tta: bool = setting(True, "--tta", off=("--disable_tta",), crd="inference.tta",
                           crd_help="Mirroring test-time augmentation (about 8x the compute).",
                           help="mirroring test-time augmentation over the model's axes (default); --disable_tta: "
                                "none, about 8x faster")
    skip_empty_patches: bool = setting(True, "--skip_empty_patches", off=("--no_skip_empty_patches",),
                                       crd="inference.skipEmptyPatches",
                                       crd_help="Do not run the model on homogeneous patches.",
                                       help="do not run the model on homogeneous patches (default); "
                                            "--no_skip_empty_patches: run every patch")


@dataclass(kw_only=True)
class PartCount:
    """Into how many predict parts the patches are split (predict, plan)."""

    help_group: ClassVar[str] = "performance"

    num_parts: int = setting(1, "--num_parts", parse=int, crd="parts", bounds=Bounds(1, 100000),
                             crd_help="Number of predict parts; one pod (one GPU) each. Becomes the predict Job's "
                                      "completions.",
                             help="predict parts the patches are split into (balanced by non-empty patches)")


@dataclass(kw_only=True)
class PartShape:
    """How the patch grid is cut into parts (predict, pipeline, plan): where the seams lie, never an output byte."""

    help_group: ClassVar[str] = "performance"

    partition: str = setting(AUTO, "--partition", parse=partition_choice, metavar="auto|slabs|NZxNY", crd="partition",
                             crd_help="How the patch grid is cut into parts, which decides where the seams lie (never "
                                      "an output byte): auto (the cut into z-slabs x y-columns with the fewest seam "
                                      "bytes for the volume's shape), slabs (z-slabs), or NZxNY with NZ*NY = parts.",
                             crd_schema={"maxLength": 16, "pattern": "^(auto|slabs|[1-9][0-9]{0,5}x[1-9][0-9]{0,5})$"},
                             help="auto: the cut into z-slabs x y-columns with the fewest seam bytes (default); "
                                  "slabs: z-slabs; NZxNY: that many slabs, each cut into that many columns")


@dataclass(kw_only=True)
class Compute:
    """How a part runs (predict, pipeline): none of these changes an output byte."""

    help_group: ClassVar[str] = "performance"

    batch_size: int = setting(1, "--batch_size", parse=int, crd="inference.batchSize", bounds=Bounds(1, 256),
                              crd_help="Patches per forward pass.", help="patches per forward pass")
    tta_type: str = setting("mirroring", "--tta_type", group="model", choices=("mirroring",), help="TTA kind (nnU-Net's mirroring)")
    input_cache_gb: float | None = setting(None, "--input_cache_gb", parse=float, render=number,
                                           crd="inference.inputCacheGb", bounds=Bounds(0.0, 4096.0),
                                           crd_help="Input chunk cache of a predict pod, part of cacheGb (GB; default "
                                                    "a quarter of cacheGb; 0 = none).",
                                           help="input chunk cache, part of --cache_gb (default: a quarter of it); "
                                                "0 = no cache")
    patch_order: str = setting("tiled", "--patch_order", choices=PATCH_ORDERS, crd="inference.patchOrder",
                               crd_help="tiled: columns of tiles sized to the input cache; rowmajor: nnU-Net's order.",
                               help="tiled: columns of tiles sized to the input cache (default); rowmajor: nnU-Net's order")
    checkpoint_s: float = setting(600.0, "--checkpoint_s", parse=float, render=number, crd="inference.checkpointSeconds",
                                  bounds=SECONDS,
                                  crd_help="Seconds between checkpoints a killed or evicted part resumes from (0: "
                                           "after every batch).",
                                  help="seconds between checkpoints a killed part resumes from (0: after every batch)")
    intensity_check: str = setting(intensity.AUTO, "--intensity_check", group="model", choices=INTENSITY_CHECKS,
                                   crd="inference.intensityCheck",
                                   crd_help="The input's intensities against the model's training range (plans.json): "
                                            "auto (a part fails with exit 3 for an input on another scale, e.g. uint16 "
                                            "or [0, 1] floats through a uint8 model, and warns otherwise), warn, error "
                                            "(any mismatch fails the part, exit 3) or off. A mismatch raises the "
                                            "IntensityOutOfRange condition.",
                                   help="the input's intensities against the model's training range (plans): auto "
                                        "(default: exit 3 for an input on another scale, e.g. uint16 or [0, 1] "
                                        "floats through a uint8 model; a warning otherwise), warn, error (exit 3), "
                                        "off")
    compile: bool = setting(False, "--compile", crd="inference.compile", crd_help="torch.compile the networks.",
                            help="torch.compile the networks")


@dataclass(kw_only=True)
class Memory:
    """The memory bound of a stage's caches (predict, pipeline, blend, finalize)."""

    help_group: ClassVar[str] = "performance"

    cache_gb: float = setting(4.0, "--cache_gb", parse=float, render=number,
                              crd={"predict": "inference.cacheGb", "blend": "blend.cacheGb",
                                   "finalize": "finalize.cacheGb"}, bounds=GB,
                              crd_help={"predict": "Memory bound of a predict pod's accumulation cache (GB).",
                                        "blend": STAGE_CACHE_HELP.format(stage="blend"),
                                        "finalize": STAGE_CACHE_HELP.format(stage="finalize")},
                              help="memory bound of the stage's caches, GB")


@dataclass(kw_only=True)
class FinalEncoding:
    """What a final output holds (predict with --final_output, pipeline, blend --mode, finalize).

    On Kubernetes the predict parts are told (spec.mode, threshold, output.levels); blend and finalize
    read it from the parts' markers."""

    help_group: ClassVar[str] = "input/output"

    mode: str = setting("binary", "--mode", choices=MODES, crd={"predict": "mode"},
                        crd_help="binary (foreground probability of class 1) or multiclass (one channel per class).",
                        help="binary: the foreground probability (or mask); multiclass: every class")
    threshold: bool = setting(False, "--threshold", crd={"predict": "threshold"},
                              crd_help="Write class ids (mask / argmax) instead of probabilities.",
                              help="class ids (mask / argmax) instead of probabilities")
    levels: int | None = setting(None, "--levels", parse=int, crd={"predict": "output.levels"}, bounds=Bounds(1, 24),
                                 crd_help="Resolution levels of the output's pyramid (2x per axis). Default down to "
                                          "where every axis fits in one chunk.",
                                 help="resolution levels of the output's pyramid, 2x per axis (default: down to one chunk)")
    ngff_version: str = setting("auto", "--ngff_version", choices=NGFF_CHOICES,
                                help="the output's format: OME-Zarr 0.4 on Zarr v2, or 0.5 on Zarr v3; auto (default): "
                                     "the input's (a Zarr v2 scan gets 0.4, a v3 one 0.5)")


@dataclass(kw_only=True)
class Run:
    """How a command behaves towards the user and other runs (every stage)."""

    quiet: bool = setting(False, "--quiet", help="no progress output; warnings and errors only")
    overwrite: bool = setting(False, "--overwrite", help="replace an existing output written by a different configuration")
    lease_s: float = setting(60.0, "--lease_s", parse=float, render=number, env="VESUVIUS_LEASE_S",
                             crd={"predict": "inference.leaseSeconds"}, bounds=Bounds(1.0, 86400.0),
                             crd_help="Claim lease of a part: a pod that has not renewed it for this long is presumed "
                                      "dead and its part taken over.",
                             help="claim lease: a run that has not renewed its claim for this long is presumed dead "
                                  "and taken over")
    progress_s: float = setting(30.0, "--progress_s", parse=float, render=number, env="VESUVIUS_PROGRESS_S",
                                bounds=Bounds(0.0),
                                help="seconds between progress lines when the output is not a terminal (pod logs)")
    debug: bool = setting(False, "--debug", help="print a failure's traceback before its error line (also "
                                                  "$VESUVIUS_DEBUG=1)")


def _count(text: str) -> int:
    """A count the downward API gives; a missing annotation is an empty string there: zero, as Kubernetes
    implies (pkg/controller/job/indexed_job_utils.go, parseIndexFailureIgnoreCountAnnotation)."""
    try:
        return max(0, int(text or 0))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count, got {text!r}") from None


@dataclass(kw_only=True)
class Disruptions:
    """Kubernetes pods of Indexed Jobs (predict, split blend and finalize): how often the Job controller saw
    this index disrupted (evicted or preempted: failures its podFailurePolicy ignored) and the bound past
    which the pod refuses to start, exit 79 (errors.disruption_refusal; podopts.guard)."""

    help_group: ClassVar[str] = "Kubernetes"

    disruptions: int = setting(0, "--disruptions", parse=_count, env="VESUVIUS_DISRUPTIONS",
                               help="times this part's pods were disrupted so far (the pod's downward API)")
    max_disruptions: int | None = setting(5, "--max_disruptions", parse=int,
                                          crd={"predict": "retry.maxDisruptionsPerPart",
                                               "blend": "retry.maxDisruptionsPerPart",
                                               "finalize": "retry.maxDisruptionsPerPart"}, bounds=Bounds(0, 1000),
                                          crd_help="Only for pods whose memory request is below their limit (a "
                                                   "stage's own resources): a part whose pods were disrupted more "
                                                   "often than this fails (exit 79) instead of starting again, since "
                                                   "the podFailurePolicy ignores disruptions, kubelet evictions for "
                                                   "the pod's own memory use included. Pods with the operator's "
                                                   "resources request the memory they may use, are never evicted for "
                                                   "their own use, and are not bounded: a drain, a preemption, "
                                                   "consolidation or a Kueue eviction costs them nothing.",
                                          help="refuse to start (exit 79) once --disruptions exceeds this")


@dataclass(kw_only=True)
class Split:
    """One of several processes sharing a blend or finalize (``--num_parts/--part_id``)."""

    help_group: ClassVar[str] = "performance"

    num_parts: int = setting(1, "--num_parts", parse=int, crd={"blend": "blend.parallelism",
                                                               "finalize": "finalize.parallelism"},
                             bounds=Bounds(1, 10000),
                             crd_help={"blend": PARALLELISM_HELP.format(stage="Blend"),
                                       "finalize": PARALLELISM_HELP.format(stage="Finalize")},
                             help="split the output chunks over this many processes")
    part_id: int = setting(0, "--part_id", parse=int, help="which of them this is")
    journal_s: float = setting(2.0, "--journal_s", group="Kubernetes", parse=float, render=number, env="VESUVIUS_JOURNAL_INTERVAL_S",
                               help="seconds between progress journal writes (a killed split resumes after the last); "
                                    "0: after every unit")

    def validate_split(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range for --num_parts {self.num_parts}")


def _validate_predict_settings(c: Any) -> None:
    """The checks predict and the pipeline share beyond the declared bounds and choices (``check_values``):
    a tuple of the wrong length can come from the Python API."""
    for name, v in (("--patch_size", c.patch_size), ("--chunk_size", c.chunk_size)):
        if v is not None and len(v) != 3:
            raise BadArguments(f"{name} needs three positive integers z,y,x, got {v}")


@dataclass(kw_only=True)
class PredictConfig(Disruptions, Run, FinalEncoding, Memory, Compute, PartShape, PartCount, Grid, InputChoice,
                    ModelChoice, Storage):
    """One predict part: everything that determines its bytes, plus where they go and how it runs."""

    command: ClassVar[str] = "predict"
    output_dir: str = setting(REQUIRED, "--output_dir", group="input/output",
                              help="directory of the part stores (blend's PARTS_DIR)")
    part_id: int = setting(0, "--part_id", parse=int, group="performance", help="which part (0-based)")
    part_ids: str | None = setting(None, "--part_ids", group="Kubernetes", metavar="RANGES",
                                   help="run the part_id-th entry of this index list (e.g. 3,17,40-42): how retry Jobs "
                                        "map their indexes to parts")
    device: str = setting("cuda", "--device", group="performance", crd="inference.device",
                          crd_schema={"enum": list(POD_DEVICES)},
                          crd_help="cuda: each predict pod asks for one nvidia.com/gpu and runs on it; cpu: the pods "
                                   "ask for no GPU (no GPU node selector or toleration, NVIDIA_VISIBLE_DEVICES=void). "
                                   "auto and cuda:N are refused: a pod sees only the GPU it was given, and auto would "
                                   "hold a GPU while running on the CPU.",
                          help="cuda, cuda:N, cpu, or auto (a CUDA GPU if one is visible, else the CPU, saying so); a GPU "
                               "asked for that this process cannot use exits 69 before anything is written")
    part_ids_file: str | None = setting(None, "--part_ids_file", group="Kubernetes", metavar="PATH",
                                        help="the same list read from this file: how retry Jobs map their indexes to "
                                             "parts (the pod's copy of the Job's vesuvius.dev/part-ids annotation, "
                                             "ranges or a compressed bitmap: no argument-size limit)")
    blended_output: str | None = setting(None, "--blended_output", group="input/output", metavar="URL",
                                         help="write the chunks only this part covers straight into these blended "
                                              "float16 logits; blend then finishes the seams")
    final_output: str | None = setting(None, "--final_output", group="input/output", metavar="URL",
                                       help="the same, finalized (--mode, --threshold, --levels) into this uint8 "
                                            "OME-Zarr output")

    @property
    def input_cache_bytes(self) -> int:
        """The input chunk cache: --input_cache_gb, else a quarter of --cache_gb."""
        return int((self.input_cache_gb if self.input_cache_gb is not None else self.cache_gb / 4) * (1 << 30))

    def the_part(self) -> int:
        """The part this run predicts: ``part_id``, or the ``part_id``-th of ``part_ids`` / ``part_ids_file``
        (retry Jobs)."""
        from vesuvius_inference.contract.podopts import resolve_part

        return resolve_part(self.part_id, self.part_ids, self.part_ids_file)

    def storage_urls(self) -> tuple[str | None, ...]:
        return (self.input_dir, self.model_url, self.output_dir, self.blended_output, self.final_output)

    def validate(self) -> None:
        check_values(self)
        refuse_read_only_scheme(self.output_dir, "--output_dir")
        check_device_name(self.device)
        if not 0 <= self.part_id < self.num_parts:
            raise BadArguments(f"--part_id {self.part_id} is out of range: use 0..{self.num_parts - 1} for "
                               f"--num_parts {self.num_parts}")
        _validate_predict_settings(self)
        if self.blended_output and self.final_output:
            raise BadArguments("--blended_output and --final_output are exclusive: name one output")
        out_flag = "--final_output" if self.final_output else "--blended_output"
        out = self.blended_output or self.final_output
        if out:
            refuse_read_only_scheme(out, out_flag)
        refuse_overlaps([Named("--input_dir", self.input_dir), Named("--model_path", self.model_path),
                         Named("--output_dir", self.output_dir, WRITE), Named(out_flag, out or "", WRITE)],
                        self.storage_options)


@dataclass(kw_only=True)
class PipelineConfig(Run, FinalEncoding, Memory, Compute, PartShape, Grid, InputChoice, ModelChoice, Storage):
    """predict -> blend -> finalize on this machine: every predict setting, and how to orchestrate."""

    command: ClassVar[str] = "pipeline"
    output: str = setting(REQUIRED, "--output", group="input/output", help="the output OME-Zarr image")
    workdir: str | None = setting(None, "--workdir", group="input/output", help="intermediates (default: <output>_work)")
    devices: tuple[str, ...] | None = setting(None, "--devices", group="performance", parse=names_list, render=join_commas, metavar="LIST",
                                              help="one worker process per entry, e.g. cuda:0,cuda:1 or cpu,cpu "
                                                   "(default: --gpus)")
    gpus: str = setting("all", "--gpus", group="performance", help="GPU ids, e.g. 0,1, or 'all' (the seed's shorthand for --devices); "
                                              "no GPU -> the CPU")
    parts_per_gpu: int = setting(1, "--parts_per_gpu", "--parts_per_device", group="performance", parse=int,
                                 bounds=Bounds(1),
                                 help="parts each device runs one after another")
    skip_predict: bool = setting(False, "--skip_predict", help="skip predict (its parts are there)")
    skip_blend: bool = setting(False, "--skip_blend", help="skip blend")
    skip_finalize: bool = setting(False, "--skip_finalize", help="skip finalize")
    keep_intermediates: bool = setting(False, "--keep_intermediates", group="input/output", help="keep the workdir")
    fuse_blend_finalize: bool = setting(False, "--fuse_blend_finalize", group="performance",
                                        help="parts write the final output; no float16 intermediate")

    @property
    def work(self) -> str:
        return self.workdir or self.output.rstrip("/") + "_work"

    @property
    def fused(self) -> bool:
        return self.fuse_blend_finalize and not (self.skip_blend or self.skip_finalize)

    def storage_urls(self) -> tuple[str | None, ...]:
        return (self.input_dir, self.model_url, self.output, self.work)

    def validate(self) -> None:
        check_values(self)
        refuse_overlaps([Named("--input", self.input_dir), Named("--model", self.model_path),
                         Named("--output", self.output, WRITE), Named("--workdir", self.work, WRITE)],
                        self.storage_options)
        if self.devices is not None and not self.devices:
            raise BadArguments("--devices needs at least one device, e.g. cpu or cuda:0,cuda:1")
        for d in self.devices or ():
            check_device_name(d, "--devices")
        refuse_read_only_scheme(self.output, "--output")
        refuse_read_only_scheme(self.work, "--workdir")
        _validate_predict_settings(self)


@dataclass(kw_only=True)
class BlendConfig(Disruptions, Run, FinalEncoding, Memory, Split, Storage):
    """The seams between predict parts (and, in the seed's layout, the parts' own rows)."""

    command: ClassVar[str] = "blend"
    always_final: ClassVar[bool] = False  # True: the seed's blend_and_finalize (below)
    parts_dir: str = setting(REQUIRED, positional=True, help="the predict parts (predict's --output_dir)")
    output: str = setting(REQUIRED, positional=True, help="the output predict wrote into, or a new one (seed layout)")
    # The ignore: blend's mode may be None (blended float16 logits); nothing takes a FinalEncoding as such.
    mode: str | None = variant(field_of(FinalEncoding, "mode"), default=None,  # type: ignore[assignment]
                               help="finalize while blending the seed's layout (uint8 output, no float16 "
                                    "intermediate); default: blended float16 logits")
    seams_only: bool = setting(False, "--seams_only", group="Kubernetes",
                               help="of a final output, write the seams only and leave the pyramid to finalize (a split "
                                    "stage, as on Kubernetes); by default an unsplit blend finishes the output")
    sigma_scale: float = setting(8.0, "--sigma_scale", group="model", parse=float, render=number,
                                 help="sigma = patch / sigma_scale (nnU-Net: 8, the only value)")
    chunk_size: tuple[int, int, int] | None = variant(field_of(Grid, "chunk_size"),
                                                      help="must match the parts' chunks when given")

    def storage_urls(self) -> tuple[str | None, ...]:
        return (self.parts_dir, self.output)

    def validate(self) -> None:
        check_values(self)
        refuse_read_only_scheme(self.output, "OUTPUT")
        refuse_overlaps([Named("PARTS_DIR", self.parts_dir), Named("OUTPUT", self.output, WRITE)],
                        self.storage_options)
        self.validate_split()
        if abs(self.sigma_scale - 8.0) > 1e-9:
            raise BadArguments("--sigma_scale: the Gaussian (sigma = patch/8, nnU-Net's) is applied while predicting; "
                               "only 8 is supported")


@dataclass(kw_only=True)
class BlendAndFinalizeConfig(BlendConfig):
    """The seed's ``vesuvius.blend_and_finalize``: blend whose output is always final. Parts predicted
    without an output are blended and finalized in one pass (binary unless --mode); parts that wrote a
    final output are finished there; parts that wrote blended logits are refused (finalize those)."""

    command: ClassVar[str] = "blend_and_finalize"
    always_final: ClassVar[bool] = True


@dataclass(kw_only=True)
class FinalizeConfig(Disruptions, Run, FinalEncoding, Memory, Split, Storage):
    """The output's pyramid and metadata, from blended logits or from what the parts and blend wrote."""

    command: ClassVar[str] = "finalize"
    input_path: str = setting(REQUIRED, positional=True,
                              help="blended logits, or (--input_kind parts) the predict parts of an output they wrote")
    output_path: str = setting(REQUIRED, positional=True, help="the output OME-Zarr image")
    input_kind: str = setting("blended", "--input_kind", group="input/output", choices=FINALIZE_INPUTS,
                              help="blended: INPUT is blended float16 logits (default); parts: INPUT is the predict "
                                   "parts of the output they and blend wrote (the fused path)")
    delete_intermediates: bool = setting(False, "--delete_intermediates", group="input/output", help="remove INPUT once the output is complete")
    also_delete: tuple[str, ...] = setting(tuple, "--also_delete", group="input/output", repeat=True, metavar="URL",
                                           help="with --delete_intermediates, also remove URL once the output is complete")

    def storage_urls(self) -> tuple[str | None, ...]:
        return (self.input_path, self.output_path, *self.also_delete)

    def validate(self) -> None:
        check_values(self)
        refuse_read_only_scheme(self.output_path, "OUTPUT")
        if self.also_delete and not self.delete_intermediates:
            raise BadArguments("--also_delete only acts with --delete_intermediates")
        deleted = self.delete_intermediates
        refuse_overlaps([Named("INPUT", self.input_path, DELETE if deleted else READ),
                         Named("OUTPUT", self.output_path, WRITE),
                         *(Named("--also_delete", url, DELETE) for url in self.also_delete if deleted)],
                        self.storage_options)
        self.validate_split()


@dataclass(kw_only=True)
class PlanConfig(PartShape, PartCount, Grid, InputChoice, ModelChoice, Storage):
    """What a run will cost, from metadata only."""

    command: ClassVar[str] = "plan"
    throughput: float | None = setting(None, "--throughput", group="performance", parse=float, render=number,
                                       help="model passes per second per GPU, for a GPU-hours estimate")
    as_json: bool = setting(False, "--json", help="print JSON")
    levels: int | None = variant(field_of(FinalEncoding, "levels"),
                                 help="resolution levels the run's output will have (checked against the volume "
                                      "and the chunks, as the run checks them)")

    def storage_urls(self) -> tuple[str | None, ...]:
        return (self.input_dir, self.model_url)

    def validate(self) -> None:
        check_values(self)


@dataclass(kw_only=True)
class DemoConfig:
    """The demo: a synthetic scroll through the whole pipeline."""

    command: ClassVar[str] = "demo"
    output_dir: str = setting("demo-output", "--output_dir", help="where the demo writes")
    shape: tuple[int, int, int] | None = setting(None, "--shape", parse=ints3, render=join_commas, metavar="z,y,x",
                                                 bounds=Bounds(1),
                                                 help="z,y,x of the synthetic volume")
    parts: int = setting(2, "--parts", parse=int, help="predict parts")
    seed: int = setting(1234, "--seed", parse=int, help="seed of the synthetic scroll")
    tta: bool = setting(False, "--tta", help="mirroring TTA (8x slower on CPU)")
    device: str = setting("cpu", "--device", help="cpu, cuda or cuda:N")
    quiet: bool = setting(False, "--quiet", help="no progress output")


STAGE_CONFIGS: dict[str, type] = {c.command: c for c in (PredictConfig, BlendConfig, FinalizeConfig)}
