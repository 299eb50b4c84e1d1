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


def extras() -> dict[str, list[Requirement]]:
    """pyproject's extras with `posttrain[x]` self-references expanded ('' is the core dependencies)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    raw = {"": project["dependencies"], **project["optional-dependencies"]}

    def expand(name: str) -> list[Requirement]:
        found = [] if name == "" else expand("")
        for spec in raw[name]:
            requirement = Requirement(spec)
            if canonicalize_name(requirement.name) == "posttrain":
                found += [r for extra in sorted(requirement.extras) for r in expand(extra)]
            else:
                found.append(requirement)
        return found

    return {name: expand(name) for name in raw}


def pyproject_requirements(extra: str = "all") -> dict[str, SpecifierSet]:
    return {canonicalize_name(r.name): r.specifier for r in extras()[extra]}


def env_extra(path) -> str:
    """The extra an env file installs this checkout with: `-e ..[data]` -> data."""
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else []:
            match = re.fullmatch(r"-e \.\.\[(\w+)\]", spec.split("#")[0].strip())
            if match:
                return match.group(1)
    raise AssertionError(f"{path.name}: no `-e ..[extra]` entry")


def env_packages(path) -> dict[str, SpecifierSet]:
    """{name: specifier} of an env file's conda and pip entries (`-e ..` is the project itself)."""
    packages = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            spec = spec.split("#")[0].strip()
            if spec.startswith("-e"):
                continue
            spec = re.sub(r"^([A-Za-z0-9_.-]+)=(?=[0-9])", r"\1==", spec)  # conda's `name=1.2` pin
            requirement = Requirement(spec)
            packages[canonicalize_name(requirement.name)] = requirement.specifier
    return packages


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_packages_agree_with_pyproject(env):
    """Each env lists its extra's packages (pinned as pyproject pins them) and nothing beyond it."""
    wanted = pyproject_requirements(env_extra(env))
    for name, specifier in env_packages(env).items():
        if name in NOT_PACKAGES:
            continue
        assert name in wanted, f"{env.name}: {name} is not in pyproject's [{env_extra(env)}] extra"
        pins = [s.version for s in specifier if s.operator == "=="]
        if pins:
            assert wanted[name].contains(pins[0]), f"{env.name}: {name}=={pins[0]} violates {wanted[name]}"
        else:
            assert specifier == wanted[name], f"{env.name}: {name}{specifier} differs from pyproject's {wanted[name]}"


def test_envs_exist_and_train_pins_torch():
    assert {p.name for p in ENVS} >= {"convert.yaml", "train.yaml", "hub.yaml"}
    assert str(env_packages(REPO / "envs" / "train.yaml")["torch"]) == "==2.13.0"
    assert "torch" not in env_packages(REPO / "envs" / "convert.yaml")  # data stages stay light
    assert {env_extra(p) for p in ENVS} == {"data", "train", "hub"}
    assert "torch" not in pyproject_requirements("data") and "snakemake" not in pyproject_requirements("data")


# Run the data stages with every package outside the `data` extra made unimportable: what a
# convert-only environment (envs/convert.yaml) would see.
BLOCK_NON_DATA = """
import sys
BLOCKED = {"torch", "accelerate", "safetensors", "tensorboard", "huggingface_hub", "snakemake", "jsonschema"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the data extra")
sys.meta_path.insert(0, Block())
from posttrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_data_stages_run_without_torch(tmp_path):
    import subprocess
    import sys

    def posttrain(*args):
        done = subprocess.run(
            [sys.executable, "-c", BLOCK_NON_DATA, *map(str, args)], capture_output=True, text=True, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-2000:]

    hdf5, dataset = tmp_path / "demos.hdf5", tmp_path / "lerobot"
    posttrain("synth", hdf5, "--episodes", 2, "--min-frames", 8, "--max-frames", 10, "--image-size", 64)
    posttrain("convert", "--input", hdf5, "--output", dataset, "--workers", 1)
    posttrain("stats", dataset)
    posttrain("verify", dataset, "--source", hdf5, "--output", tmp_path / "verify", "--sampled-frames", 2)
    assert (tmp_path / "verify" / "report.json").is_file()


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
