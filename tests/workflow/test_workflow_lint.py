"""Workflow hygiene: lint, formatting, rule directives, conda envs that cover every import."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from support.paths import ROOT
from support.workflow import SNAKEFILE, write_config

RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
# import name -> conda-forge package name, where they differ
CONDA_NAME = {
    "cv2": "py-opencv",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "torch": "pytorch",
    "pytorch_lightning": "pytorch-lightning",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "matplotlib": "matplotlib-base",
    "openslide": "openslide-python",
}
# pip distribution name -> conda-forge package name, where they differ
PIP_TO_CONDA = {
    "torch": "pytorch",
    "opencv-python-headless": "py-opencv",
    "matplotlib": "matplotlib-base",
    "openslide-bin": "openslide",
}
STDLIB = set(sys.stdlib_module_names)
TARGETS = {"all", "review"}  # rules that only ask for other rules' outputs: no job of their own


def _rule_blocks() -> dict[str, str]:
    blocks = {}
    for path in RULES:
        for match in re.finditer(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", path.read_text(), re.S | re.M):
            blocks[match[1]] = match[2]
    return blocks


def _imports(path: Path, seen: set[Path]) -> set[str]:
    """Top-level third-party modules imported by ``path``, following wsiseg imports."""
    if path in seen:
        return set()
    seen.add(path)
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    optional = _optional_imports(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside wsiseg
                base = path.parent / Path(*(node.module or "").split("."))
                targets = (
                    [base.with_suffix(".py")] if node.module else [path.parent / f"{a.name}.py" for a in node.names]
                )
                for target in targets:
                    if target.exists():
                        found |= _imports(target, seen)
                continue
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top == "wsiseg":
                module = ROOT / "src" / Path(*name.split(".")).with_suffix(".py")
                found |= _imports(module if module.exists() else ROOT / "src" / "wsiseg" / "__init__.py", seen)
            elif top not in STDLIB and top != "snakemake":
                found.add(top)
    return found


def _optional_imports(tree: ast.AST) -> set[int]:
    """Import nodes (ids) inside a ``try`` that catches ImportError: optional, with a fallback (e.g. the
    openslide-bin wheel's library, where conda's env has a system OpenSlide that openslide-python finds)."""

    def catches(handler: ast.ExceptHandler) -> bool:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types)

    return {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try) and any(catches(h) for h in node.handlers)
        for child in node.body
        for sub in ast.walk(child)
        if isinstance(sub, (ast.Import, ast.ImportFrom))
    }


def _env_packages(env: dict) -> dict[str, str]:
    """Conda packages of an env file and their pinned versions (pip itself and its section left out)."""
    packages = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict) or dep.strip() == "pip":
            continue
        name, _, version = dep.partition("=")
        packages[name.strip()] = version.strip("= ")
    return packages


ENV_FILES = sorted((ROOT / "workflow" / "envs").glob("*.yaml"))
# conda-forge package -> the pip distribution whose installed version the tests run
CONDA_TO_PIP = {
    "pytorch": "torch",
    "py-opencv": "opencv-python-headless",
    "matplotlib-base": "matplotlib",
    "openslide": "openslide-bin",
}


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_are_the_versions_the_tests_run(env_file):
    """One stack: each pin is the installed major.minor, and pyproject's requirement admits it."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    wanted = {
        Requirement(d).name.lower(): Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for name, pin in _env_packages(yaml.safe_load(env_file.read_text())).items():
        if name == "python":
            assert pin == f"{sys.version_info.major}.{sys.version_info.minor}", f"{env_file.name}: python {pin}"
            continue
        dist = CONDA_TO_PIP.get(name, name)
        installed = version(dist)
        assert ".".join(installed.split(".")[:2]) == pin, (
            f"{env_file.name}: {name} ={pin} but the tests run {dist} {installed}"
        )
        if dist.lower() in wanted:
            assert wanted[dist.lower()].specifier.contains(installed, prereleases=True), (
                f"pyproject's {wanted[dist.lower()]} excludes {installed}"
            )


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_wsiseg_from_this_repository(env_file, tmp_path, monkeypatch):
    """The pip section installs this repository editable; pip expands WSISEG_ROOT, which common.smk sets."""
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    env = yaml.safe_load(env_file.read_text())
    assert "pip" in env["dependencies"]
    (section,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    (tmp_path / "requirements.txt").write_text("\n".join(section) + "\n")  # what conda hands to pip
    monkeypatch.setenv("WSISEG_ROOT", str(ROOT))
    (requirement,) = parse_requirements(str(tmp_path / "requirements.txt"), session=PipSession())
    assert requirement.is_editable and Path(requirement.requirement) == ROOT
    assert "os.environ.update(WSISEG_ROOT=" in (ROOT / "workflow" / "rules" / "common.smk").read_text()


@pytest.mark.parametrize("rule", sorted(_rule_blocks()))
def test_every_rule_has_log_benchmark_threads_resources_conda_message(rule):
    block = _rule_blocks()[rule]
    if rule in TARGETS:
        return
    for directive in ("log:", "benchmark:", "threads:", "resources:", "conda:", "message:", "script:"):
        assert directive in block, f"rule {rule} lacks {directive}"
    assert re.search(r'"""[^"]+"""', block), f"rule {rule} lacks a docstring"
    assert "mem_mb=" in block and "runtime=" in block


@pytest.mark.parametrize("rule", ["train", "predict"])
def test_gpu_rules_request_a_gpu_resource(rule):
    assert "gpu=" in _rule_blocks()[rule]


@pytest.mark.parametrize("rule", sorted(set(_rule_blocks()) - TARGETS))
def test_conda_env_covers_every_import_of_the_rule_script(rule):
    block = _rule_blocks()[rule]
    env_file = ROOT / "workflow" / "rules" / re.search(r'conda:\s*"([^"]+)"', block)[1]
    script = ROOT / "workflow" / "rules" / re.search(r'script:\s*"([^"]+)"', block)[1]
    env = yaml.safe_load(env_file.read_text())
    assert env["channels"][0] == "conda-forge"
    packages = _env_packages(env)
    missing = sorted(m for m in _imports(script.resolve(), set()) if CONDA_NAME.get(m, m) not in packages)
    assert not missing, f"{env_file.name} lacks {missing} needed by {script.name}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_envs_are_pinned_major_minor_and_match_pyproject(env_file):
    packages = _env_packages(yaml.safe_load(env_file.read_text()))
    for name, version in packages.items():
        assert re.fullmatch(r"\d+\.\d+", version), f"{env_file.name}: {name} pinned as {version!r}, want major.minor"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name, _, floor = re.match(r"([A-Za-z0-9_.-]+)(>=)?([\d.]*)", dep).groups()
        conda = PIP_TO_CONDA.get(name, name)
        if conda in packages and floor:
            assert tuple(map(int, packages[conda].split("."))) >= tuple(map(int, floor.split(".")[:2])), (
                f"{env_file.name}: {conda} {packages[conda]} is older than pyproject's {dep}"
            )


def test_every_pyproject_dependency_is_in_some_env():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    in_envs = set().union(
        *(_env_packages(yaml.safe_load(p.read_text())) for p in (ROOT / "workflow" / "envs").glob("*.yaml"))
    )
    names = {PIP_TO_CONDA.get(n, n) for n in (re.match(r"[A-Za-z0-9_.-]+", d)[0] for d in deps)}
    assert names - {"snakemake"} <= in_envs, sorted(names - in_envs - {"snakemake"})


def test_snakemake_lint_is_clean(tmp_path):
    write_config(tmp_path, (ROOT / "config" / "config.yaml").read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--lint",
            "--snakefile",
            str(SNAKEFILE),
            "--directory",
            str(tmp_path),
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_check_passes():
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "workflow/"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_catalog_files_are_in_place():
    """What the Snakemake workflow catalog and snakedeploy look for."""
    assert (ROOT / "workflow" / "Snakefile").is_file() and not (ROOT / "Snakefile").exists()
    assert (ROOT / "config" / "config.yaml").is_file() and (ROOT / "config" / "README.md").is_file()
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    assert set(catalog["usage"]) >= {"mandatory-flags", "software-stack-deployment", "report"}
    assert catalog["usage"]["software-stack-deployment"]["conda"] is True
    license_text = (ROOT / "LICENSE").read_text()
    assert (
        license_text.startswith("MIT License")
        and tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "MIT"
    )
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()


def test_github_actions_lint_and_test_the_workflow():
    """.github/workflows/main.yml is valid YAML with lint (snakemake --lint, snakefmt) and test jobs."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "main.yml").read_text())
    trigger = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert trigger["push"]["branches"] == ["main"] and "pull_request" in trigger
    commands = {name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in workflow["jobs"].items()}
    assert "snakemake --lint" in commands["linting"] and "snakefmt --check workflow/" in commands["linting"]
    assert "python -m pytest" in commands["run-workflow"] and "snakemake --cores" in commands["run-workflow"]
    for job in workflow["jobs"].values():
        assert job["runs-on"] == "ubuntu-latest" and job["steps"][0]["uses"].startswith("actions/checkout@")
