"""InferenceJob spec: defaults (the CRD's, applied again so old objects and tests agree) and the
checks the schema cannot express. Pure: dicts in, dataclasses and messages out."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from vesuvius_inference.contract.config import blocks_of, partition_choice
from vesuvius_inference.contract.locations import WRITE, Named, overlaps
from vesuvius_inference.contract.paths import default_workdir
from vesuvius_inference.store.storage import READ_ONLY_SCHEMES

DEFAULTS: dict[str, Any] = {
    "mode": "binary", "threshold": False, "parts": 1, "partition": "auto", "suspend": False, "keepIntermediates": False,
    "retryFailedParts": 0,
    "inference": {"overlap": 0.5, "batchSize": 1, "tta": True, "skipEmptyPatches": True, "cacheGb": 4,
                  "device": "cuda", "patchOrder": "tiled", "checkpointSeconds": 600, "intensityCheck": "auto",
                  "compile": False, "leaseSeconds": 60},
    "input": {"level": 0},
    "blend": {"parallelism": 1, "cacheGb": 4}, "finalize": {"parallelism": 1, "cacheGb": 4}, "predict": {},
    "retry": {"perPartLimit": 2, "nonRetryableExitCodes": [2, 3], "maxDisruptionsPerPart": 5},
    "storage": {"anonymousInput": False, "waitSeconds": 300},
}
URI_SCHEMES = ("s3://", "gs://", "http://", "https://", "file://", "/")
DEVICES = ("cuda", "cpu")  # what a predict pod can be given: one GPU, or none (the CRD's enum)
GPU = "nvidia.com/gpu"


def with_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for key, value in DEFAULTS.items():
        if isinstance(value, dict):
            merged = dict(value)
            merged.update(out.get(key) or {})
            out[key] = merged
        else:
            out.setdefault(key, value)
    return out


@dataclass(frozen=True)
class JobSpec:
    """The spec with defaults applied, in the shape the manifests need."""

    raw: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    @property
    def input_uri(self) -> str:
        inp = self.raw["input"]
        return inp["uri"].rstrip("/") + ("/" + inp["arrayPath"].strip("/") if inp.get("arrayPath") else "")

    @property
    def workdir(self) -> str:
        return (self.raw.get("workdir") or default_workdir(self.raw["output"]["uri"])).rstrip("/")

    @property
    def parts(self) -> int:
        return int(self.raw["parts"])

    @property
    def parallelism(self) -> int:
        return int(self.raw.get("parallelism") or self.parts)

    @property
    def device(self) -> str:
        """cuda or cpu; ``cuda:0``, which objects of earlier versions may hold, is the pod's one GPU: cuda."""
        device = str(self.raw["inference"].get("device") or "cuda")
        return "cuda" if device == "cuda:0" else device

    @property
    def gpus(self) -> int:
        """GPUs per predict pod, the other side of ``inference.device``: cuda uses one, cpu none
        (:func:`device_problems` refuses every spec where predict.gpus or the resources say otherwise)."""
        return 1 if self.device == "cuda" else 0


def parse(spec: dict[str, Any]) -> JobSpec:
    return JobSpec(with_defaults(spec or {}))


def validate(spec: JobSpec) -> list[str]:
    """Problems the CRD schema cannot catch (or that an API server without CEL let through)."""
    errors: list[str] = []
    for path, uri in (("input.uri", spec.get("input", {}).get("uri")), ("output.uri", spec.get("output", {}).get("uri")),
                      ("model.uri", spec.get("model", {}).get("uri"))):
        if not uri:
            errors.append(f"{path} is required")
        elif not uri.startswith(URI_SCHEMES + (("hf://",) if path == "model.uri" else ())):
            errors.append(f"{path} {uri!r} has no known scheme (s3://, gs://, http(s)://, file:// or /)")
    if errors:
        return errors
    for path, uri in (("output.uri", spec["output"]["uri"]), ("workdir", spec.workdir)):
        if uri.lower().startswith(READ_ONLY_SCHEMES):
            errors.append(f"{path} {uri!r} is read-only over http(s): use s3://, gs://, file:// or /")
    if errors:
        return errors
    clash = overlaps([Named("input.uri", spec["input"]["uri"]), Named("model.uri", spec["model"]["uri"]),
                      Named("output.uri", spec["output"]["uri"], WRITE), Named("workdir", spec.workdir, WRITE)])
    if clash:  # the same rule the pods apply (locations.py): every spelling of a place is that place
        errors.append(f"{clash}: give each its own place (the workdir is deleted afterwards)")
    if not 1 <= spec.parts <= 100000:
        errors.append(f"parts must be in 1..100000, got {spec.parts}")
    errors += _partition_errors(str(spec["partition"]), spec.parts)
    if spec.parallelism > spec.parts:
        errors.append(f"parallelism {spec.parallelism} exceeds parts {spec.parts}")
    inf = spec["inference"]
    if not 0 <= float(inf["overlap"]) < 1:
        errors.append(f"inference.overlap is a fraction in [0, 1), got {inf['overlap']}")
    ps = inf.get("patchSize")
    if ps is not None and (len(ps) != 3 or min(ps) < 1):
        errors.append(f"inference.patchSize needs three positive integers, got {ps}")
    folds = inf.get("folds")
    if folds is not None and len(set(folds)) != len(folds):
        errors.append(f"inference.folds has duplicates: {folds}")
    errors += _compute_errors(spec)
    if spec["mode"] not in ("binary", "multiclass"):
        errors.append(f"mode must be binary or multiclass, got {spec['mode']!r}")
    for stage in ("blend", "finalize"):
        if int(spec[stage]["parallelism"]) < 1:
            errors.append(f"{stage}.parallelism must be >= 1")
    codes = spec["retry"]["nonRetryableExitCodes"]
    if 0 in codes:
        errors.append("retry.nonRetryableExitCodes must not contain 0 (success)")
    return errors


def device_problems(spec: JobSpec) -> list[str]:
    """The device and the GPUs a predict pod asks for are one setting seen from both sides.

    A predict part runs its model on one device (predict_part.PartRun): ``cuda`` is the one GPU its pod
    asks for (the device plugin exposes it as cuda:0 whatever its number on the node), ``cpu`` asks for
    none. So ``auto`` (a pod that got no GPU would run 10-100x slower on the CPU while the GPU it holds
    idles), ``cuda:N`` (the pod never sees GPU N), a GPU count other than the device's (a second GPU
    would idle: more parts, one GPU each, use them instead) and anything else are refused before any
    Job exists. The CRD refuses the same at apply time (enum and CEL rules)."""
    errors: list[str] = []
    device = spec.device
    if device not in DEVICES:
        if device == "auto":
            why = ("auto would let a pod that got no GPU run 10-100x slower on the CPU while its GPU request holds a "
                   "GPU idle")
        elif device.startswith("cuda:"):
            why = "a predict pod sees only the GPU Kubernetes gave it, always as cuda"
        else:
            why = "it is not a device"
        return [f"inference.device {device!r} is refused ({why}): say cuda (one GPU per predict pod) or cpu (none)"]
    predict = spec.get("predict") or {}
    asked = predict.get("gpus")
    want = 1 if device == "cuda" else 0
    # predict.gpus 1 with cpu: the CRD's default before the device decided the count, so objects stored
    # then hold it; it is ignored (a cpu pod asks for no GPU), not refused, or those runs would break
    if asked is not None and int(asked) != want and not (device == "cpu" and int(asked) == 1):
        if device == "cpu":
            errors.append(f"predict.gpus {asked} with inference.device cpu: a CPU run uses no GPU; leave predict.gpus "
                          "out (or 0), or set inference.device cuda")
        elif int(asked) == 0:
            errors.append("predict.gpus 0 with inference.device cuda: a cuda part needs its GPU; set inference.device "
                          "cpu to run without one")
        else:
            errors.append(f"predict.gpus {asked}: a predict part runs its model on one GPU, so {int(asked) - 1} of "
                          f"{asked} would idle; use more parts (parts, parallelism), one GPU each")
    res = predict.get("resources") or {}
    for kind in ("requests", "limits"):
        named = (res.get(kind) or {}).get(GPU)
        if named is not None and str(named).strip() != str(want):
            errors.append(f"predict.resources.{kind}[{GPU}] {named} contradicts inference.device {device} (which "
                          f"uses {want}): leave {GPU} out of resources, the device decides it")
    return errors


def _compute_errors(spec: JobSpec) -> list[str]:
    """What a predict pod would refuse at start (prechecks.py), refused here instead: odd chunks with a
    pyramid exit 2 in every pod (the device is device_problems')."""
    inf, errors = spec["inference"], []
    chunks, levels = inf.get("chunkSize"), (spec.get("output") or {}).get("levels")
    if chunks and levels != 1 and any(int(c) % 2 for c in chunks):
        errors.append(f"inference.chunkSize {chunks}: the output's pyramid needs even chunk sizes on every axis; "
                      "choose even ones, or set output.levels: 1")
    return errors


def _partition_errors(partition: str, parts: int) -> list[str]:
    """An ``NZxNY`` partition must make exactly ``parts`` parts (a product the schema's pattern cannot check)."""
    try:
        blocks = blocks_of(partition_choice(partition))
    except ValueError as e:
        return [f"partition: {e}"]
    if blocks is not None and blocks[0] * blocks[1] != parts:
        return [f"partition {partition} makes {blocks[0] * blocks[1]} parts, but parts is {parts}: "
                f"choose NZxNY with NZ*NY = {parts}, or auto"]
    return []
