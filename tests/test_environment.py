"""environment.yml (conda) and pyproject.toml agree.

The rule: conda brings only the interpreter and pip; pip installs the project itself, editable, with every
extra pyproject.toml defines (`-e .[test,cluster]`), and so every dependency pyproject.toml lists, at the
versions it allows. Anything else pip is told to install directly must be one of pyproject's dependencies
(or of its extras), pinned inside pyproject's range: torch and torchvision, pinned exactly (==). So:

- the conda python is X.Y, the lowest version requires-python allows;
- the conda dependencies are python and pip, nothing else;
- exactly one pip entry is the project's editable install, naming exactly pyproject's extras;
- every other pip entry is a pyproject dependency, and its pinned version satisfies pyproject's specifier;
- torch and torchvision are among them, each pinned with ==.

test_a_drift_is_caught makes one change at a time to the repository's two files and asserts that the
check for it fails, so none of these checks passes vacuously.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EDITABLE = re.compile(r"^-e\s+\.(?:\[(?P<extras>[^\]]*)\])?$")
PINNED = ("torch", "torchvision")


def parse(pyproject_text: str, environment_text: str):
    pyproject = tomllib.loads(pyproject_text)["project"]
    env = yaml.safe_load(environment_text)
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert list(dep) == ["pip"], f"unexpected entry in dependencies: {dep}"
            pip.extend(dep["pip"])
        else:
            conda.append(dep)
    return pyproject, conda, pip


def requirements(pyproject) -> dict[str, Requirement]:
    """pyproject's dependencies and those of its extras, by canonical name."""
    reqs = [Requirement(r) for r in pyproject["dependencies"]]
    for extra in pyproject.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return {canonicalize_name(r.name): r for r in reqs}


def check_python(pyproject, conda, pip):
    specs = [d for d in conda if re.match(r"^python\b", d)]
    assert len(specs) == 1, conda
    m = re.fullmatch(r"python\s*=?=\s*(\d+\.\d+)", specs[0])
    assert m, f"conda python must be pinned to a minor version (python=X.Y): {specs[0]}"
    version = m.group(1)
    allowed = SpecifierSet(pyproject["requires-python"])
    assert f"{version}.0" in allowed, f"python={version} outside requires-python {allowed}"
    lower = [Version(s.version) for s in allowed if s.operator in (">=", "==", "~=")]
    assert lower and f"{lower[0].major}.{lower[0].minor}" == version, (
        f"environment.yml's python={version} is not requires-python's lowest version ({allowed})"
    )


def check_conda_only_python_and_pip(pyproject, conda, pip):
    names = sorted(re.split(r"[=<>!\s]", d, maxsplit=1)[0] for d in conda)
    assert names == ["pip", "python"], (
        f"conda dependencies besides python and pip (install them with pip): {conda}"
    )


def check_project_with_every_extra(pyproject, conda, pip):
    editable = [m for m in map(EDITABLE.match, pip) if m]
    assert len(editable) == 1, f"one `-e .[extras]` line expected among the pip entries: {pip}"
    named = {e.strip() for e in (editable[0]["extras"] or "").split(",") if e.strip()}
    defined = set(pyproject.get("optional-dependencies", {}))
    assert named == defined, (
        f"environment.yml installs extras {sorted(named)}, pyproject defines {sorted(defined)}"
    )


def check_direct_pins(pyproject, conda, pip):
    declared = requirements(pyproject)
    direct = {}
    for line in pip:
        if EDITABLE.match(line):
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in declared, f"environment.yml installs {req.name}, which pyproject.toml does not list"
        direct[name] = req
    for name in PINNED:
        assert name in direct, f"environment.yml does not pin {name}"
        ops = [s.operator for s in direct[name].specifier]
        assert ops == ["=="], f"{name} must be pinned exactly in environment.yml: {direct[name]}"
    for name, req in direct.items():
        for pin in [s.version for s in req.specifier if s.operator == "=="]:
            assert declared[name].specifier.contains(pin, prereleases=True), (
                f"environment.yml pins {name}=={pin}, outside pyproject.toml's {declared[name]}"
            )


CHECKS = [check_python, check_conda_only_python_and_pip, check_project_with_every_extra, check_direct_pins]


def repo_texts() -> tuple[str, str]:
    return (ROOT / "pyproject.toml").read_text(), (ROOT / "environment.yml").read_text()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_environment_agrees_with_pyproject(check):
    check(*parse(*repo_texts()))


# Drifts, each made on the repository's own two files (a regular expression, replaced once): the check
# named must catch it.
DRIFTS = {
    "python raised in pyproject": (check_python, "pyproject", r'requires-python = "[^"]*"', 'requires-python = ">=3.99"'),
    "python changed in environment": (check_python, "environment", r"python=\d+\.\d+", "python=3.0"),
    "numpy from conda": (check_conda_only_python_and_pip, "environment", r"\n  - pip\n", "\n  - pip\n  - numpy\n"),
    "new extra in pyproject": (
        check_project_with_every_extra, "pyproject", r"\[project.optional-dependencies\]\n",
        '[project.optional-dependencies]\ndocs = ["sphinx"]\n',
    ),
    "extra dropped from environment": (check_project_with_every_extra, "environment", r"-e \.\[[^\]]*\]", "-e ."),
    "torch range moved": (check_direct_pins, "pyproject", r'"torch[<>=!~][^"]*"', '"torch>=99"'),
    "torchvision pin out of range": (check_direct_pins, "environment", r"torchvision==\S+", "torchvision==99.0"),
    "torch no longer pinned": (check_direct_pins, "environment", r"- torch==\S+", "- torch>=2"),
    "package pyproject does not list": (
        check_direct_pins, "environment", r"  - pip:\n", "  - pip:\n      - requests==2.32.0\n",
    ),
}  # fmt: skip


@pytest.mark.parametrize("drift", DRIFTS)
def test_a_drift_is_caught(drift):
    check, which, old, new = DRIFTS[drift]
    pyproject, environment = repo_texts()
    texts = {"pyproject": pyproject, "environment": environment}
    texts[which], n = re.subn(old, new.replace("\\", "\\\\"), texts[which], count=1)
    assert n == 1, f"the drift no longer applies to {which}: {old!r}"
    with pytest.raises(AssertionError):
        check(*parse(texts["pyproject"], texts["environment"]))
