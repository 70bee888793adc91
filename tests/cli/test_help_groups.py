"""``--help`` in sections (input/output, model, performance, storage, Kubernetes) derived from the settings'
declarations: the pod-only flags under Kubernetes, every option in exactly one section."""

from __future__ import annotations

import re

import pytest
from vesuvius_inference.cli import COMMANDS, main
from vesuvius_inference.contract.settings import HELP_GROUPS, help_group_of, options


def sections(text: str) -> dict[str, list[str]]:
    """--help text -> section title -> the options (first spelling) listed under it."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^\S.*:$", line):
            current = line[:-1]
            out[current] = []
        elif current and (m := re.match(r"^  (--[a-z_]+)", line)):
            out[current].append(m.group(1))
    return out


def help_text(capsys, command: str) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "pipeline", "blend", "finalize", "plan"])
def test_help_is_grouped_and_every_option_is_in_one_section(capsys, command):
    found = sections(help_text(capsys, command))
    assert {"input/output", "model", "performance", "storage"} & set(found) and set(found) - {"general", "usage",
           "positional arguments"} <= set(HELP_GROUPS)
    listed = [o for opts in found.values() for o in opts if o != "--help"]
    assert len(listed) == len(set(listed))
    cls = COMMANDS[command].config
    expected = {opt.names[0] if opt.names else opt.off[0] for _, opt in options(cls) if not opt.positional
                and (opt.names or opt.off)}
    assert expected <= set(listed)
    for f, opt in options(cls):
        if opt.names and not opt.positional:
            group = help_group_of(cls, f.name, opt)
            assert opt.names[0] in found[group or "general"], (f.name, group)


def test_pod_only_flags_are_under_kubernetes(capsys):
    k8s = sections(help_text(capsys, "predict"))["Kubernetes"]
    assert {"--disruptions", "--max_disruptions", "--part_ids", "--part_ids_file"} <= set(k8s)
    assert {"--journal_s", "--seams_only", "--disruptions"} <= set(sections(help_text(capsys, "blend"))["Kubernetes"])
    found = sections(help_text(capsys, "predict"))
    assert "--storage_options" in found["storage"] and "--model_path" in found["model"]
    assert "--batch_size" in found["performance"] and "--input_dir" in found["input/output"]
