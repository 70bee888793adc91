"""A small Dockerfile parser: instructions with continuation lines joined and comments dropped."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "images" / "worker" / "Dockerfile"
OPERATOR = REPO / "images" / "operator" / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    args: str
    line: int  # first line, 1-based

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of ENTRYPOINT/CMD/RUN, or None for the shell form."""
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None


def parse(text: str) -> list[Instruction]:
    """Docker's rules: a trailing backslash continues the line; comment lines (also inside a
    continued instruction) and blank lines are dropped; parser directives are ignored."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not buf:
            start = n
        if line.endswith("\\"):
            buf.append(line[:-1].strip())
            continue
        buf.append(line)
        joined = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buf, "Dockerfile ends inside a continued line"
    return out


def load(path: Path) -> list[Instruction]:
    return parse(path.read_text())


def global_args(instructions: list[Instruction]) -> dict[str, str | None]:
    """The ARGs declared before the first FROM (the only ones FROM lines may use), with their defaults."""
    out: dict[str, str | None] = {}
    for ins in instructions:
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, eq, default = ins.args.partition("=")
            out[name.strip()] = shlex.split(default)[0] if eq and default.strip() else None
    return out


def base_images(instructions: list[Instruction], build_args: dict[str, str] | None = None) -> list[str]:
    """The image of every FROM, with `${NAME}`/`$NAME` replaced by the build arg or the ARG's default."""
    values = {k: v for k, v in global_args(instructions).items() if v is not None}
    values.update(build_args or {})

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"FROM uses ${name}, which no ARG before FROM defines (or has no default)")
        return values[name]

    return [re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, i.args.split()[0])
            for i in instructions if i.keyword == "FROM"]


def env_vars(instructions: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs (last one wins); the legacy `ENV key value` form too."""
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword != "ENV":
            continue
        if "=" not in ins.args.split()[0]:
            key, _, value = ins.args.partition(" ")
            env[key] = value.strip()
            continue
        for token in shlex.split(ins.args):
            key, _, value = token.partition("=")
            env[key] = value
    return env


def commands(ins: Instruction) -> list[list[str]]:
    """The simple commands of a shell-form RUN: words split on &&, ||, ; and | (quotes respected)."""
    lexer = shlex.shlex(ins.args, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            out.append([])
        else:
            out[-1].append(token)
    return [c for c in out if c]


def pip_install_extras(instructions: list[Instruction]) -> list[set[str]]:
    """Extras of every `pip install <local path>[extras]` in RUN instructions."""
    found = []
    for ins in instructions:
        if ins.keyword != "RUN":
            continue
        for words in commands(ins):
            if "pip" not in " ".join(words[:4]) or "install" not in words:
                continue
            for word in words[words.index("install") + 1:]:
                m = re.fullmatch(r"\.(?:/[^\[]*)?\[([^\]]*)\]", word)
                if m:
                    found.append({e.strip() for e in m.group(1).split(",") if e.strip()})
                elif word in (".", "./"):
                    found.append(set())
    return found


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context paths of every COPY/ADD (not those --from another stage)."""
    sources: list[str] = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = ins.exec_form() or shlex.split(ins.args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources += words[:-1]
    return sources
