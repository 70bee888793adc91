"""The operator's own settings are declared once (k8s/opsettings.py): every flag and environment variable
the chart's Deployment gives the operator is a declaration, --help shows each with its default, and a
variable that does not parse is one line naming it."""

from __future__ import annotations

import dataclasses

import pytest
from vesuvius_inference.k8s import manifests, observe, operator_main, opsettings, policy

from helm.scenarios import SCENARIOS, one


@pytest.fixture(scope="module")
def deployments(helm):
    return {name: one(helm.template(values), "Deployment") for name, values in SCENARIOS.items()}


def _declared_env() -> set[str]:
    return {f.metadata["opt"].env for f in dataclasses.fields(opsettings.OperatorEnv)}


def _declared_flags() -> set[str]:
    opts = [f.metadata["opt"] for f in dataclasses.fields(opsettings.OperatorFlags)]
    return {n for o in opts for n in (*o.names, *o.off)}


def test_what_the_chart_passes_the_operator_is_declared(deployments):
    for scenario, dep in deployments.items():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        extra = {e["name"] for e in SCENARIOS[scenario].get("extraEnv", [])}
        env = {e["name"] for e in container.get("env", [])} - extra
        assert env <= _declared_env() | {policy.ENV}, (scenario, env - _declared_env())
        flags = {a.split("=", 1)[0] for a in container.get("args", [])}
        assert flags <= _declared_flags(), (scenario, flags - _declared_flags())


def test_help_lists_every_variable_with_its_default_and_flags_keep_theirs():
    p = operator_main.parser()
    text = " ".join(p.format_help().split())
    for f in dataclasses.fields(opsettings.OperatorEnv):
        assert f"{f.metadata['opt'].env}=" in text, f.name
    assert "VESUVIUS_RESYNC_SECONDS=60:" in text and "VESUVIUS_QUEUE_NAME=unset:" in text
    for f in dataclasses.fields(opsettings.OperatorFlags):
        assert p.get_default(f.name) == f.metadata["opt"].fallback, f.name
    assert p.parse_args(["-n", "a", "--peering"]).standalone is False
    with pytest.raises(SystemExit):
        p.parse_args(["-n", "a", "-A"])  # --namespace and --all-namespaces exclude each other


def test_consumers_read_the_declarations():
    env = {"VESUVIUS_PROGRESS_SECONDS": "0", "VESUVIUS_STUCK_POD_SECONDS": "12", "VESUVIUS_QUEUE_NAME": ""}
    assert observe.Settings.from_env(env).stall_grace_s == 12.0
    assert observe.Settings() == observe.Settings.from_env({})
    d = manifests.defaults_from_env(env)
    assert not d.outage_budget and d.queue_name is None  # empty: the default
    assert manifests.defaults_from_env({}) == manifests.OperatorDefaults()
    with pytest.raises(ValueError, match="VESUVIUS_GPU_TOLERATIONS"):
        manifests.defaults_from_env({"VESUVIUS_GPU_TOLERATIONS": "{}"})
    with pytest.raises(ValueError, match="VESUVIUS_RESYNC_SECONDS"):
        opsettings.env_value("resync_s", {"VESUVIUS_RESYNC_SECONDS": "soon"})
