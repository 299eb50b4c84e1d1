"""envs/*.yaml (per-stage conda environments for `snakemake --sdm conda`) agree with pyproject.toml,
and every rule points at one that exists."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import REPO

ENVS = sorted((REPO / "envs").glob("*.yaml"))
NOT_PACKAGES = {"python", "pip"}  # the interpreter and installer, not project dependencies


def pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    return {canonicalize_name(r.name): r.specifier for r in requirements}


def env_packages(path) -> dict[str, SpecifierSet]:
    """{name: specifier} of an env file's conda and pip entries (`-e ..` is the project itself)."""
    packages = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            if spec.startswith("-e"):
                continue
            spec = re.sub(r"^([A-Za-z0-9_.-]+)=(?=[0-9])", r"\1==", spec)  # conda's `name=1.2` pin
            requirement = Requirement(spec)
            packages[canonicalize_name(requirement.name)] = requirement.specifier
    return packages


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_packages_agree_with_pyproject(env):
    wanted = pyproject_requirements()
    for name, specifier in env_packages(env).items():
        if name in NOT_PACKAGES:
            continue
        assert name in wanted, f"{env.name}: {name} is not a dependency in pyproject.toml"
        pins = [s.version for s in specifier if s.operator == "=="]
        if pins:
            assert wanted[name].contains(pins[0]), f"{env.name}: {name}=={pins[0]} violates {wanted[name]}"
        else:
            assert specifier == wanted[name], f"{env.name}: {name}{specifier} differs from pyproject's {wanted[name]}"


def test_envs_exist_and_train_pins_torch():
    assert {p.name for p in ENVS} >= {"convert.yaml", "train.yaml", "hub.yaml"}
    assert str(env_packages(REPO / "envs" / "train.yaml")["torch"]) == "==2.13.0"
    assert "torch" not in env_packages(REPO / "envs" / "convert.yaml")  # data stages stay light


def test_every_rule_uses_an_existing_env():
    checked = 0
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for match in re.finditer(r"^( *)rule (\w+):\n(.*?)(?=^\1?rule |\Z)", smk.read_text(), re.M | re.S):
            rule, body = match.group(2), match.group(3)
            conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
            assert conda, f"{smk.name}: rule {rule} has no conda: env"
            assert (smk.parent / conda.group(1)).resolve().is_file(), f"{smk.name}: rule {rule}: {conda.group(1)}"
            checked += 1
    assert checked >= 10
