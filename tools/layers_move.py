"""The scripted move of the flat package into its layer folders (issue "The folders are the layers").

Kept so that branches written against the flat layout can be ported the same way: run it in a
checkout (``python tools/layers_move.py``); it is idempotent. It (1) turns the package's relative
imports into absolute ones, (2) ``git mv``s each flat module to its folder, (3) rewrites every
``vesuvius_inference.<old>`` reference (imports, strings, paths) in Python and text files.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "operator" / "vesuvius_inference"
LAYERS = {
    "contract": "errors failure settings config locations paths progress intensity podopts stageplan storagelines "
                "frame ngff prechecks k8s.ranges:ranges",
    "geometry": "grid partition layout partplan fixedpoint downsample",
    "store": "storage storagewait claims claimedwork createonce partstore output ownership preflight optioncheck "
             "whatsthere volume reader pieces seams checkpoint stagesplit cpuquota iopool",
    "model": "model:network model_files:files model_source:source nnunet_folder normalization",
    "predict": "predict:stage predict_part:part accumulate devicestep partwriter runner signals fixedpoint_torch",
    "stages": "blend finalize pipeline plan stagecheck finish pyramid throughput",
}
MOVES: dict[str, str] = {}  # old dotted name (below the package) -> new dotted name
for folder, spec in LAYERS.items():
    for item in spec.split():
        old, _, new = item.partition(":")
        MOVES[old] = f"{folder}.{new or old}"
FOLDERS = set(LAYERS)


def relative_to_absolute(path: Path) -> None:
    """``from .x import y`` -> ``from vesuvius_inference.x import y`` (by the file's place now)."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    here = path.relative_to(PKG.parent).with_suffix("").parts
    pkg = list(here[:-1]) if here[-1] != "__init__" else list(here[:-1])
    if here[-1] == "__init__":
        pkg = list(here[:-1])
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            edits.append((node, target))
    for node, target in sorted(edits, key=lambda e: -e[0].lineno):
        first = lines[node.lineno - 1]
        col = node.col_offset
        dots = "." * node.level + (node.module or "")
        seg = first[col:]
        new = seg.replace("from " + dots + " import", f"from {target} import", 1)
        assert new != seg, (path, node.lineno, seg)
        lines[node.lineno - 1] = first[:col] + new
    path.write_text("".join(lines))


def split_package_imports(path: Path) -> None:
    """``from vesuvius_inference import a, b`` with moved modules -> one import per folder."""
    text = path.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return
    lines = text.splitlines(keepends=True)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level
             and n.module in ("vesuvius_inference", "vesuvius_inference.k8s")]
    for node in sorted(nodes, key=lambda n: -n.lineno):
        prefix = "" if node.module == "vesuvius_inference" else "k8s."
        groups: dict[str, list[str]] = {}
        moved = False
        for a in node.names:
            new = MOVES.get(prefix + a.name)
            if new is None:
                groups.setdefault(node.module, []).append(a.name + (f" as {a.asname}" if a.asname else ""))
                continue
            moved = True
            folder, _, name = new.rpartition(".")
            local = a.asname or a.name
            groups.setdefault(f"vesuvius_inference.{folder}", []).append(name + (f" as {local}" if local != name else ""))
        if not moved:
            continue
        indent = " " * node.col_offset
        stmt = "".join(f"{indent}from {mod} import {', '.join(names)}\n" for mod, names in groups.items())
        lines[node.lineno - 1: node.end_lineno] = [stmt]
    path.write_text("".join(lines))


def rewrite_references(path: Path) -> None:
    text = path.read_text()
    out = text
    for old, new in sorted(MOVES.items(), key=lambda kv: -len(kv[0])):
        head = old.split(".")[0]
        guard = ""
        if head in FOLDERS:  # predict, model: an old module named like its new folder
            subs = "|".join(m.split(".", 1)[1] for m in MOVES.values() if m.startswith(head + "."))
            guard = rf"(?!\.(?:{subs})\b)(?! import (?:{subs})\b)"
        dotted = re.escape("vesuvius_inference." + old)
        out = re.sub(dotted + r"\b" + guard, "vesuvius_inference." + new, out)
        slashed = re.escape("vesuvius_inference/" + old.replace(".", "/") + ".py")
        out = re.sub(slashed, "vesuvius_inference/" + new.replace(".", "/") + ".py", out)
    if out != text:
        path.write_text(out)


def main() -> int:
    for p in sorted(PKG.rglob("*.py")):
        relative_to_absolute(p)
    for folder in LAYERS:
        (PKG / folder).mkdir(exist_ok=True)
        init = PKG / folder / "__init__.py"
        if not init.exists():
            init.write_text(f'"""The {folder} layer (see README "Layout")."""\n')
            subprocess.run(["git", "add", str(init)], cwd=ROOT, check=True)
    for old, new in MOVES.items():
        src = PKG / (old.replace(".", "/") + ".py")
        dst = PKG / (new.replace(".", "/") + ".py")
        if src.exists() and not dst.exists():
            subprocess.run(["git", "mv", str(src), str(dst)], cwd=ROOT, check=True)
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files += subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    for f in files:
        p = ROOT / f
        if not p.is_file() or f.startswith("tools/layers_move.py"):
            continue
        if p.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".txt", ".json") or \
                p.name in ("Makefile", ".importlinter") or p.name.startswith("Dockerfile") or p.name == "Containerfile":
            try:
                rewrite_references(p)
            except UnicodeDecodeError:
                pass
        if p.suffix == ".py":
            split_package_imports(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
