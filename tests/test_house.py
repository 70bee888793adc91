"""The shape of the package: no import circles (module- and function-level imports alike), no
function too long to read on one screen, the control plane free of the engine, blend free of finalize."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "operator" / "vesuvius_inference"
MAX_FUNCTION_LINES = 80
# Over the limit today, being rewritten as observe -> decide -> act (issue 17/19): remove when they are.


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - node.level + 1]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod)
    return {m for m in found if m in mods and m != name}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_import_circles():
    graph = _graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_no_function_over_the_limit():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PKG)}:{node.name} ({n} lines)")
    assert not long, long


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen


def test_layers():
    graph = _graph()
    engine = {"vesuvius_inference." + m for m in ("predict", "predict_part", "model", "runner", "devicestep",
                                                  "blend", "finalize", "pipeline")}
    for name in graph:
        if name.startswith("vesuvius_inference.k8s"):
            assert not (graph[name] & engine), f"{name} imports the engine: {graph[name] & engine}"
    assert "vesuvius_inference.stages.finalize" not in _reachable("vesuvius_inference.stages.blend", graph), "blend runs finalize"


def test_every_option_is_in_the_readme():
    from vesuvius_inference.contract.config import (
        BlendConfig,
        FinalizeConfig,
        PipelineConfig,
        PlanConfig,
        PredictConfig,
    )
    from vesuvius_inference.contract.settings import options

    readme = (PKG.parents[1] / "README.md").read_text()
    missing = [(cls.command, opt.names + opt.off) for cls in (PredictConfig, PipelineConfig, BlendConfig,
                                                               FinalizeConfig, PlanConfig)
               for _, opt in options(cls) if not opt.positional
               and not any(n in readme or n.replace("_", "-") in readme for n in opt.names + opt.off)]
    assert not missing, missing
