"""The package's structure from its imports: modules per folder, arrows between folders, climbing ones.

``python tools/structure.py`` prints the figures the README's layout section quotes. An arrow is a
module of one folder importing a module of another (each module pair counted once); it climbs when
it goes from a lower layer to a higher one in LAYERS (the order the import contract enforces).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "operator" / "vesuvius_inference"
LAYERS = ["cli", "demo", "k8s", "stages", "predict", "model", "store", "geometry", "contract"]  # top -> bottom
RANK = {"cli": 0, "demo": 1, "k8s": 1, "stages": 2, "predict": 3, "model": 4, "store": 5, "geometry": 6, "contract": 7}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(mods: dict[str, Path]) -> set[tuple[str, str]]:
    edges = set()
    for name, path in mods.items():
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(pkg[: len(pkg) - node.level + 1] + [node.module or ""]) if node.level else node.module
                base = (base or "").rstrip(".")
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name and t.startswith("vesuvius_inference"):
                    edges.add((name, t))
    return edges


def folder(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 else ("(root)" if len(parts) == 1 else parts[1] if parts[1] in RANK else "(root)")


def main() -> int:
    mods = modules()
    edges = imports(mods)
    per = Counter(folder(m) for m in mods if not m.endswith("__init__") and mods[m].name != "__init__.py")
    print("modules per folder:", ", ".join(f"{k} {v}" for k, v in sorted(per.items())))
    between = Counter((folder(a), folder(b)) for a, b in edges if folder(a) != folder(b))
    print(f"module imports: {len(edges)}; across folders: {sum(between.values())} in {len(between)} folder pairs")
    climbing = [(a, b) for a, b in edges if folder(a) in RANK and folder(b) in RANK and RANK[folder(a)] > RANK[folder(b)]]
    print(f"climbing (a lower layer importing a higher one): {len(climbing)}", *(f"  {a} -> {b}" for a, b in sorted(climbing)),
          sep="\n")
    for (a, b), n in sorted(between.items()):
        print(f"  {a:>9} -> {b:<9} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
