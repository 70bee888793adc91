"""The CRD's setting fields are generated from config.py's declarations, and a bound lives in one place.

Each bounded setting with a spec path is refused outside its declared bounds, and accepted at its ends,
by all three routes from the one declaration: the CLI (exit 2, one ``error:`` line), the API server (the
generated CRD, validated as the API server does: tests/k8s/crd_check.py) and the operator (spec.validate,
for objects a server let through).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import run_cli
from k8s.crd_check import CompiledSchema, apply_defaults, schema
from vesuvius_inference import cli
from vesuvius_inference.contract.config import STAGE_CONFIGS, PredictConfig
from vesuvius_inference.contract.errors import BadArguments
from vesuvius_inference.contract.settings import Bounds, options, setting
from vesuvius_inference.k8s import crdschema
from vesuvius_inference.k8s import spec as specmod

REPO = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((REPO / "crds/samples/minimal.yaml").read_text())
ARGS = {"predict": ["--model", "m", "--input", "i", "--output_dir", "o"], "blend": ["p", "o"],
        "finalize": ["i", "o"]}


@functools.cache
def _api_server() -> CompiledSchema:
    return CompiledSchema(schema())  # the CEL rules compiled once for the module (crd_check.validate: per call)


def crd_errors(obj: dict) -> list[str]:
    """What the API server says to creating ``obj`` (structural defaulting, schema, CEL)."""
    return _api_server().errors(apply_defaults(_api_server().schema, copy.deepcopy(obj)))


def test_committed_crd_and_chart_copy_equal_the_generated_one():
    text = (REPO / crdschema.CRD_FILE).read_text()
    assert crdschema.generate(text) == text, (
        f"crds/inferencejob.yaml differs from config.py's settings: run {crdschema.REGENERATE} from the repository root")
    for copy_name in crdschema.CRD_COPIES:
        assert (REPO / copy_name).read_text() == text, f"{copy_name} differs: run {crdschema.REGENERATE}"
    assert crdschema.main(["--check", "--root", str(REPO)]) == 0


def test_every_spec_path_of_a_setting_is_a_generated_field():
    schema = yaml.safe_load((REPO / crdschema.CRD_FILE).read_text())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]
    fields = crdschema.spec_fields()
    for command, cls in STAGE_CONFIGS.items():
        for f, opt in options(cls):
            path = opt.crd_path(command)
            if path is None or path in crdschema.NOT_GENERATED:
                continue
            node = schema
            for key in path.split("."):
                node = node["properties"][key]
            assert node == {**fields[path].schema, **({"x-kubernetes-validations": node.get(
                "x-kubernetes-validations")} if "." not in path else {})}, (command, f.name)


def _bounded():
    seen, out = set(), []
    for command, cls in STAGE_CONFIGS.items():
        for f, opt in options(cls):
            path = opt.crd_path(command)
            if opt.bounds is not None and path and path not in seen:
                seen.add(path)
                out.append(pytest.param(command, f, opt, id=path))
    return out


def _values(f: dataclasses.Field, b: Bounds) -> tuple[list, list]:
    """(inside, outside): the bounds' ends where they are included, the nearest values past them."""
    integer = "int" in str(f.type) and "float" not in str(f.type)
    step = 1 if integer else 0.5
    inside, outside = [], []
    if b.low is not None:  # an open end: the end itself is out, a hair above it in
        inside += [b.low + step / 100] if b.low_open else [b.low]
        outside += [b.low] if b.low_open else [b.low - step]
    if b.high is not None:
        inside += [b.high - step / 100] if b.high_open else [b.high]
        outside += [b.high] if b.high_open else [b.high + step]
    cast = int if integer else float
    return [cast(v) for v in inside], [cast(v) for v in outside]


def _spec_with(path: str, value) -> dict:
    obj = copy.deepcopy(SAMPLE)
    *head, last = path.split(".")
    node = obj["spec"]
    for key in head:
        node = node.setdefault(key, {})
    node[last] = value
    return obj


@pytest.mark.parametrize("command,f,opt", _bounded())
def test_one_declared_bound_is_refused_by_the_cli_the_crd_and_the_operator(command, f, opt):
    path = opt.crd_path(command)
    tuple_valued = "tuple" in str(f.type)
    inside, outside = _values(f, opt.bounds)
    assert outside, path
    for value, ok in [(v, True) for v in inside] + [(v, False) for v in outside]:
        given = (value,) * 3 if tuple_valued else value
        argv = [*ARGS[command], opt.names[0], opt.render(given)]
        if ok:
            assert getattr(cli.parse(command, argv), f.name) == given
        else:
            with pytest.raises(BadArguments, match=rf"^(each value of )?{opt.names[0]} must be in "):
                cli.parse(command, argv)
        obj = _spec_with(path, list(given) if tuple_valued else value)
        api = crd_errors(obj)
        assert (api == []) if ok else api, (path, value, api)
        operator = [e for e in specmod.validate(specmod.parse(obj["spec"])) if f"{path} must be in" in e]
        assert (operator == []) if ok else operator, (path, value)


def test_batch_size_past_256_is_one_error_line_and_exit_2(tmp_path):
    """The CRD bounded batchSize at 256 while the CLI took any value; now both refuse 257."""
    r = run_cli("predict", "--model", tmp_path / "m", "--input", tmp_path / "in.zarr", "--output_dir",
                tmp_path / "o", "--batch_size", "257")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0] == "error: --batch_size must be in [1, 256], got 257", lines
    assert not (tmp_path / "o").exists()


def test_a_bound_from_the_environment_is_refused_too(tmp_path):
    r = run_cli("predict", "--model", tmp_path / "m", "--input", tmp_path / "in.zarr", "--output_dir",
                tmp_path / "o", env={"VESUVIUS_LEASE_S": "0.5"})
    assert r.returncode == 2 and r.stderr.strip() == "error: --lease_s must be in [1, 86400], got 0.5", r.stderr


def test_overlap_is_bounded_once():
    """[0, 1): the declaration's, in the CLI, the CRD, the operator and the patch grid alike."""
    from vesuvius_inference.contract.config import OVERLAP, Grid
    from vesuvius_inference.geometry.grid import PatchGrid

    assert Grid.__dataclass_fields__["overlap"].metadata["opt"].bounds is OVERLAP
    assert str(OVERLAP) == "[0, 1)" and 0.0 in OVERLAP and 0.99 in OVERLAP and 1.0 not in OVERLAP
    with pytest.raises(ValueError, match=r"overlap must be in \[0, 1\), got 1.0"):
        PatchGrid((8, 8, 8), (4, 4, 4), 1.0)
    schema = crdschema.spec_fields()["inference.overlap"].schema
    assert (schema["minimum"], schema["maximum"], schema["exclusiveMaximum"]) == (0, 1, True)


def test_operator_defaults_are_the_declarations():
    """spec.DEFAULTS holds the settings' defaults (from config.py) and only the non-setting fields by hand."""
    for command, cls in STAGE_CONFIGS.items():
        for f, opt in options(cls):
            path = opt.crd_path(command)
            if path is None or path in crdschema.NOT_GENERATED or f.default is None:
                continue
            node = specmod.DEFAULTS
            for key in path.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            want = opt.fallback if opt.env else f.default
            assert node == (None if want is None else want), (command, path)
    assert PredictConfig.__dataclass_fields__["batch_size"].default == specmod.DEFAULTS["inference"]["batchSize"]


# ---- the generator itself ---------------------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class _Toy:
    command = "predict"
    speed: float = setting(2.0, "--speed", parse=float, crd="inference.speed", bounds=Bounds(0.5, 8.0, high_open=True),
                           crd_help="How fast.", help="how fast")
    colour: str = setting("red", "--colour", choices=("red", "off"), crd="inference.colour", crd_help="Which colour.",
                          help="colour")
    sizes: tuple[int, int, int] | None = setting(None, "--sizes", crd="inference.sizes", bounds=Bounds(1, 9),
                                                 crd_help="z, y, x: sizes.", help="sizes")


TOY_CRD = """\
spec:
  inference:
    properties:
      # generated from config.py (python -m vesuvius_inference.k8s.crdschema): spec.inference
      stale: {type: string}
      # end of generated spec.inference
      handWritten: {type: string}
"""


def test_a_new_declaration_becomes_its_crd_field():
    fields = crdschema.spec_fields({"predict": _Toy})
    text = crdschema.generate(TOY_CRD, fields)
    assert text.splitlines()[4:8] == [
        "      speed: {type: number, minimum: 0.5, maximum: 8, exclusiveMaximum: true, default: 2, "
        "description: How fast.}",
        '      colour: {type: string, enum: [red, "off"], default: red, description: Which colour.}',
        '      sizes: {type: array, items: {type: integer, minimum: 1, maximum: 9}, minItems: 3, maxItems: 3, '
        'description: "z, y, x: sizes."}',
        "      # end of generated spec.inference",
    ]
    assert "stale" not in text and "handWritten" in text
    loaded = yaml.safe_load(text)["spec"]["inference"]["properties"]
    assert loaded["colour"]["enum"] == ["red", "off"] and loaded["speed"]["default"] == 2
    assert crdschema.defaults({"predict": _Toy}) == {"inference": {"speed": 2, "colour": "red"}}
    with pytest.raises(ValueError, match=r"spec\.inference\.speed is declared .* no generated region for "
                                         r"spec\.inference"):
        crdschema.generate("spec: {}\n", fields)


def test_check_fails_on_a_stale_copy_and_the_command_rewrites_it(tmp_path, capsys):
    for name in (crdschema.CRD_FILE, *crdschema.CRD_COPIES):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    crd = tmp_path / crdschema.CRD_FILE
    good = crd.read_text()
    crd.write_text(good.replace("batchSize: {type: integer, minimum: 1, maximum: 256",
                                "batchSize: {type: integer, minimum: 1, maximum: 512"))
    assert crdschema.main(["--check", "--root", str(tmp_path)]) == 1
    assert f"run {crdschema.REGENERATE}" in capsys.readouterr().err
    assert crdschema.main(["--root", str(tmp_path)]) == 0
    assert crd.read_text() == good and (tmp_path / crdschema.CRD_COPIES[0]).read_text() == good
    assert crdschema.main(["--check", "--root", str(tmp_path)]) == 0
