"""InferenceJob spec: defaults (the CRD's, applied again so old objects and tests agree) and the
checks the schema cannot express. Pure: dicts in, dataclasses and messages out."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..config import blocks_of, partition_choice
from ..paths import default_workdir
from ..storage import READ_ONLY_SCHEMES

DEFAULTS: dict[str, Any] = {
    "mode": "binary", "threshold": False, "parts": 1, "partition": "auto", "suspend": False, "keepIntermediates": False,
    "retryFailedParts": 0,
    "inference": {"overlap": 0.5, "batchSize": 1, "tta": True, "skipEmptyPatches": True, "cacheGb": 4,
                  "device": "cuda", "patchOrder": "tiled", "checkpointSeconds": 600, "intensityCheck": "warn",
                  "compile": False, "leaseSeconds": 60},
    "input": {"level": 0},
    "blend": {"parallelism": 1, "cacheGb": 4}, "finalize": {"parallelism": 1, "cacheGb": 4}, "predict": {"gpus": 1},
    "retry": {"perPartLimit": 2, "nonRetryableExitCodes": [2, 3], "maxDisruptionsPerPart": 5},
    "storage": {"anonymousInput": False, "waitSeconds": 300},
}
URI_SCHEMES = ("s3://", "gs://", "http://", "https://", "file://", "/")


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
    out, work = spec["output"]["uri"].rstrip("/"), spec.workdir
    if out == spec.input_uri.rstrip("/") or out == spec["input"]["uri"].rstrip("/"):
        errors.append("output.uri must differ from input.uri")
    if work in (out, spec["input"]["uri"].rstrip("/")) or out.startswith(work + "/"):
        errors.append("workdir must not be the output, the input, or contain the output (it is deleted afterwards)")
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
    if spec["mode"] not in ("binary", "multiclass"):
        errors.append(f"mode must be binary or multiclass, got {spec['mode']!r}")
    for stage in ("blend", "finalize"):
        if int(spec[stage]["parallelism"]) < 1:
            errors.append(f"{stage}.parallelism must be >= 1")
    codes = spec["retry"]["nonRetryableExitCodes"]
    if 0 in codes:
        errors.append("retry.nonRetryableExitCodes must not contain 0 (success)")
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
