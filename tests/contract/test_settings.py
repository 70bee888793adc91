"""Every predict setting, declared once in config.py, reaches predict unchanged by every route.

The routes: the pipeline in one process (``stageplan.predict_config``), the pipeline's worker processes
(``pipeline.worker_command``: argv and environment, parsed back by the real ``predict`` parser), the
Python API (``Inferer``), and Kubernetes (the operator's manifest args from an InferenceJob spec,
parsed by the same parser). Each test fails if a setting is added without reaching a route, or if a
route drops or changes one (as the worker processes once dropped ``--storage-options``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from vesuvius_inference import cli
from vesuvius_inference.contract import stageplan
from vesuvius_inference.contract.config import BlendConfig, FinalizeConfig, PipelineConfig, PredictConfig
from vesuvius_inference.contract.settings import crd_values, options, static_default, to_argv
from vesuvius_inference.k8s import manifests
from vesuvius_inference.k8s import spec as specmod
from vesuvius_inference.predict.stage import Inferer
from vesuvius_inference.stages import pipeline

REPO = Path(__file__).resolve().parents[2]

# A value other than the default for every predict setting the pipeline shares with predict.
NON_DEFAULT = {
    "storage_options": {"endpoint_url": "http://minio.example:9000", "key": "AKIA-test", "secret": "s3cr3t-value"},
    "model_path": "s3://models/surface", "folds": ("0", "2"), "model_cache_dir": "/var/cache/models",
    "input_dir": "s3://scans/scroll.zarr", "level": 1, "bbox": "0:64,8:72,0:40", "input_anon": True,
    "overlap": 0.25, "patch_size": (32, 48, 48), "chunk_size": (16, 48, 48), "do_tta": False,
    "skip_empty_patches": False, "batch_size": 3, "input_cache_gb": 0.5, "patch_order": "rowmajor",
    "checkpoint_s": 30.0, "intensity_check": "error", "compile": True, "cache_gb": 2.5, "mode": "multiclass",
    "threshold": True, "levels": 3, "quiet": True, "overwrite": True, "lease_s": 17.0, "progress_s": 5.0,
    "ngff_version": "0.4", "debug": True, "storage_wait_s": 45.0,
    "partition": "4x2",
}
SINGLE_VALUED = {"tta_type"}  # nnU-Net has one kind; no other value exists to carry
PER_PART = {"output_dir", "part_id", "part_ids", "num_parts", "device", "blended_output", "final_output",  # the route's
            "part_ids_file", "disruptions", "max_disruptions"}  # Kubernetes pods': the downward API, spec.retry
# Predict settings a Kubernetes spec does not set, and why.
NOT_IN_SPEC = {
    "storage_options": "credentials and endpoint reach pods as env from spec.storage (secretName, endpointUrl)",
    "model_cache_dir": "the operator points it at the pod's cache volume",
    "input_dir": "input.uri plus input.arrayPath",
    "quiet": "pods always log progress lines",
    "overwrite": "a rerun pod resumes; it never replaces a part",
    "progress_s": "the operator reads the default interval",
    "ngff_version": "outputs take the scan's format (auto); the InferenceJob has no field to choose another yet",
    "debug": "a pod's failure is its one error line (the termination message); tracebacks only when run by hand",
    "mode": None, "threshold": None, "levels": None,  # set, but by spec.mode/threshold/output.levels (below)
}


def _pipeline() -> PipelineConfig:
    shared = {k: v for k, v in NON_DEFAULT.items() if k in {f.name for f in dataclasses.fields(PipelineConfig)}}
    return PipelineConfig(output="s3://out/surface.zarr", fuse_blend_finalize=True, **copy.deepcopy(shared))


def test_every_shared_setting_has_a_test_value():
    predict = {f.name for f in dataclasses.fields(PredictConfig)}
    pipe = {f.name for f in dataclasses.fields(PipelineConfig)}
    assert predict - pipe == PER_PART
    assert set(NON_DEFAULT) | SINGLE_VALUED == (predict & pipe), "a new predict setting needs a value here"
    for f, _ in options(PredictConfig):
        if f.name in NON_DEFAULT:
            assert NON_DEFAULT[f.name] != static_default(f), f.name


def test_one_process_route_carries_every_setting():
    pc = stageplan.predict_config(_pipeline(), 2, 5, "cpu")
    for k, v in NON_DEFAULT.items():
        assert getattr(pc, k) == v, k
    assert (pc.part_id, pc.num_parts, pc.device, pc.final_output) == (2, 5, "cpu", "s3://out/surface.zarr")


def test_worker_process_route_carries_every_setting_and_keeps_keys_out_of_argv(monkeypatch):
    cfg = _pipeline()
    argv, env = pipeline.worker_command(cfg, 2, 5, "cuda:1")
    assert argv[1:4] == ["-m", "vesuvius_inference.cli", "predict"]
    assert not any("s3cr3t" in a or "AKIA" in a for a in argv), "credentials must not show in a process list"
    monkeypatch.delenv("VESUVIUS_STORAGE_OPTIONS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for name in ("VESUVIUS_LEASE_S", "VESUVIUS_PROGRESS_S", "VESUVIUS_MODEL_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # the worker must not depend on the parent's environment
    parsed = cli.parse("predict", argv[4:])
    assert parsed == stageplan.predict_config(cfg, 2, 5, "cuda:1")


def test_python_api_route_carries_every_setting():
    kw = copy.deepcopy(NON_DEFAULT)
    inf = Inferer(kw.pop("model_path"), kw.pop("input_dir"), "work/parts", part_id=1, num_parts=2, device="cpu",
                  not_a_setting=1, **kw)
    for k, v in NON_DEFAULT.items():
        assert getattr(inf.config, k) == v, k
    assert inf.ignored == {"not_a_setting": 1}


def _spec_form(value):
    if isinstance(value, tuple):
        return [int(x) if isinstance(x, str) and x.isdigit() else x for x in value]
    return value


def _set(tree: dict, path: str, value) -> None:
    *head, last = path.split(".")
    for key in head:
        tree = tree.setdefault(key, {})
    tree[last] = value


def test_kubernetes_route_carries_every_setting_the_spec_holds():
    from k8s.crd_check import validate as crd_errors

    raw = yaml.safe_load((REPO / "crds/samples/minimal.yaml").read_text())
    body = copy.deepcopy(raw)
    in_spec = {}
    for f, opt in options(PredictConfig):
        path = opt.crd_path("predict")
        if f.name in NON_DEFAULT and path and f.name not in ("model_path",):
            _set(body["spec"], path, _spec_form(NON_DEFAULT[f.name]))
            in_spec[f.name] = NON_DEFAULT[f.name]
        elif path is None and f.name not in PER_PART | SINGLE_VALUED:
            assert f.name in NOT_IN_SPEC, f"{f.name}: map it to the InferenceJob spec (crd=) or say why not"
    body["spec"]["parts"] = 8  # NON_DEFAULT's partition 4x2 makes 8 parts
    assert crd_errors(body) == [], "the test spec must be one the API server accepts"
    args = manifests.predict_args(specmod.parse(body["spec"]))
    parsed = cli.parse("predict", [a.replace("$(JOB_COMPLETION_INDEX)", "4") for a in args[1:]])
    for k, v in in_spec.items():
        assert getattr(parsed, k) == v, k
    assert (parsed.part_id, parsed.num_parts, parsed.model_path) == (4, 8, raw["spec"]["model"]["uri"])
    assert parsed.final_output == raw["spec"]["output"]["uri"] and parsed.model_cache_dir == manifests.MODEL_CACHE


def _schema_default(schema: dict, path: str):
    node = schema["properties"]["spec"]
    for key in path.split("."):
        node = node["properties"][key]
    return node.get("default", None)


@pytest.mark.parametrize("cls", [PredictConfig, BlendConfig, FinalizeConfig])
def test_crd_and_operator_defaults_equal_the_settings_defaults(cls):
    from k8s.crd_check import schema

    crd = schema()
    defaults = specmod.with_defaults({})
    for f, opt in options(cls):
        path = opt.crd_path(cls.command)
        if path is None or path in ("model.uri", "parts"):
            continue
        want = static_default(f)
        got = _schema_default(crd, path)
        if got is not None:
            norm = opt.parse(opt.render(got)) if opt.parse else got
            assert norm == want, (cls.command, path, got, want)
        assert crd_values(cls, cls.command, defaults).get(f.name, want) == want, (cls.command, path)


def test_to_argv_leaves_defaults_out_and_round_trips_blend_and_finalize():
    b = BlendConfig(parts_dir="p", output="o", num_parts=3, part_id=2, seams_only=True, cache_gb=1.5)
    assert to_argv(b) == ["p", "o", "--num_parts", "3", "--part_id", "2", "--cache_gb", "1.5", "--seams_only"]
    assert cli.parse("blend", to_argv(b)) == b
    f = FinalizeConfig(input_path="p", output_path="o", input_kind="parts", delete_intermediates=True,
                       also_delete=("a", "b"), levels=2)
    assert cli.parse("finalize", to_argv(f)) == f


def test_environment_defaults_are_read_when_a_configuration_is_made(monkeypatch):
    monkeypatch.setenv("VESUVIUS_LEASE_S", "7")
    monkeypatch.setenv("VESUVIUS_STORAGE_OPTIONS", json.dumps({"anon": True, "endpoint_url": "http://a"}))
    c = cli.parse("predict", ["--model", "m", "--input", "i", "--output_dir", "o",
                              "--storage-options", '{"endpoint_url": "http://b"}'])
    assert c.lease_s == 7.0 and c.storage_options == {"anon": True, "endpoint_url": "http://b"}
    monkeypatch.setenv("VESUVIUS_LEASE_S", "soon")
    from vesuvius_inference.contract.errors import BadArguments

    with pytest.raises(BadArguments, match="VESUVIUS_LEASE_S"):
        PredictConfig(model_path="m", input_dir="i", output_dir="o")


def test_stage_order_is_one_description():
    assert stageplan.STAGES == ("predict", "blend", "finalize")
    assert stageplan.next_stage(()) == "predict" and stageplan.next_stage({"predict"}) == "blend"
    assert stageplan.next_stage({"predict", "blend"}) == "finalize" and stageplan.next_stage(set(stageplan.STAGES)) is None
    fused, two = _pipeline(), dataclasses.replace(_pipeline(), fuse_blend_finalize=False)
    assert stageplan.finalize_config(fused).input_kind == "parts" and stageplan.finalize_config(two).input_kind == "blended"
    assert stageplan.blend_config(fused).output == fused.output
    assert stageplan.blend_config(two).output == stageplan.finalize_config(two).input_path
