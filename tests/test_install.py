"""Installing the project: the ranges in pyproject.toml, `bash scripts/setup.sh system` into an environment that
has its torch, torchvision and jax (kept as they are, refused when missing or too old), the wheelhouse installed
with no network, and the one-line messages for a missing package.

The environments here are new venvs that see this environment's torch, torchvision and jax (and what they
bring) through a .pth file, as a Colab runtime or the GPU machine has its own; pip never removes packages that lie
outside the venv, so nothing here can change the environment the suite runs in.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("install_env", ROOT / "scripts" / "install_env.py")
install_env = sys.modules["install_env"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install_env)

PYPROJECT = install_env.read_pyproject()
TOOL = PYPROJECT["tool"]["vit-sam2-lab"]
# pip with no configuration files (no local mirrors) and every network address dead: nothing can be fetched.
OFFLINE = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def _closure(names: list[str]) -> dict[str, metadata.Distribution]:
    """This environment's distributions of `names` and everything they require."""
    found, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def _frameworks_venv(folder: Path) -> Path:
    """A new venv that has this environment's torch, torchvision and jax, and nothing of the project. Returns
    its python."""
    if any(installed_version is None for installed_version in map(install_env.installed_version,
                                                                   install_env.FRAMEWORKS)):
        pytest.skip("this environment lacks torch, torchvision or jax, which the new environments borrow")
    site = folder / "frameworks"
    site.mkdir(parents=True)
    for dist in _closure([*install_env.FRAMEWORKS, "jaxlib"]).values():
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if top != "__pycache__" and not top.endswith(".pth") and not (site / top).exists():
                (site / top).symlink_to(base / top)
    venv.EnvBuilder(with_pip=True).create(folder / "venv")
    python = folder / "venv" / "bin" / "python"
    (_site_packages(python) / "frameworks.pth").write_text(f"{site}\n")
    return python


def _site_packages(python: Path) -> Path:
    return next((python.parent.parent / "lib").glob("python3*/site-packages"))


def _versions(python: Path, names) -> dict[str, str | None]:
    code = ("import importlib.metadata as m, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: print(n, None)")
    out = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=True).stdout
    return {name: None if version == "None" else version for name, version in (l.split() for l in out.splitlines())}


def _setup_system(python: Path, *args, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "system", *map(str, args)],
                          env={**os.environ, **OFFLINE, "PYTHON": str(python), **env}, capture_output=True, text=True,
                          timeout=900)


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """A wheelhouse for this Python, built once (needs PyPI, as CI has)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    install_env.build_wheelhouse(folder, log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> Path:
    """A new venv with only pip: torch, torchvision and jax come from stub metadata on PYTHONPATH per test."""
    folder = tmp_path_factory.mktemp("bare")
    venv.EnvBuilder(with_pip=True).create(folder)
    return folder / "bin" / "python"


def _stubs(folder: Path, versions: dict[str, str]) -> Path:
    for name, version in versions.items():
        info = folder / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


# ------------------------------------------------------------------------------------------------ the ranges

def test_the_suites_environment_lies_inside_every_range_pyproject_declares():
    """The lower bounds are proven: what the suite runs on satisfies them (and requires-python)."""
    install_env.check_python(PYPROJECT)
    outside = []
    for text in install_env.project_requirements(PYPROJECT, "vit,seg,bench,dev"):
        requirement = Requirement(text)
        version = install_env.installed_version(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            outside.append(f"{text} (installed: {version})")
    assert not outside


def test_setup_sh_and_the_missing_package_messages_install_what_pyproject_names():
    """The pins pip metadata cannot carry live in pyproject.toml; setup.sh's venv path and torch_seg's messages
    repeat them (they cannot read pyproject.toml) and must agree."""
    from torch_seg import _deps

    setup_sh = (ROOT / "scripts" / "setup.sh").read_text()
    for pin in [*TOOL["build-without-isolation"], "groundingdino-py==0.4.0"]:
        assert pin in setup_sh and pin in TOOL["build-without-isolation"] + TOOL["install-without-deps"]
    assert TOOL["offline-vocabulary"] in setup_sh
    assert all(pin in _deps.AFTER_EXTRA["sam2"] for pin in TOOL["build-without-isolation"])
    assert all(pin in _deps.AFTER_EXTRA["groundingdino"] for pin in TOOL["install-without-deps"])


# --------------------------------------------------------------------------------------- refused up front

def _floor(name: str) -> str:
    return install_env._lowest_allowed(install_env.supported_ranges(PYPROJECT)[name])


@pytest.mark.parametrize("versions, problem", [
    ({"torch": "2.0.0", "torchvision": "0.28.0", "jax": "0.10.2"}, "torch 2.0.0 is older than this project's range"),
    ({"torch": "2.13.0", "torchvision": "0.28.0", "jax": "0.4.30"}, "jax 0.4.30 is older than this project's range"),
    ({"torch": "2.13.0", "torchvision": "0.28.0"}, "jax is not installed"),
    ({"jax": "0.10.2"}, "torch is not installed"),
], ids=["old-torch", "old-jax", "no-jax", "no-torch"])
def test_setup_system_refuses_missing_or_too_old_frameworks_before_pip_runs(bare_venv, tmp_path, versions, problem):
    before = sorted(os.listdir(_site_packages(bare_venv)))
    done = _setup_system(bare_venv, PYTHONPATH=str(_stubs(tmp_path / "stubs", versions)))
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert problem in line and "then run this again" in line
    name = problem.split()[0]
    if "older" in problem:
        assert f"({name}>={_floor(name)})" in line  # the range as pyproject.toml gives it
    assert sorted(os.listdir(_site_packages(bare_venv))) == before


def test_setup_sh_keeps_wheelhouses_for_the_system_target(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "cpu", "--wheelhouse", str(tmp_path)],
                          env={**os.environ, "VENV": str(tmp_path / "venv")}, capture_output=True, text=True)
    assert done.returncode == 2 and "system" in done.stderr
    assert not (tmp_path / "venv").exists()


# -------------------------------------------------------------------------------------------- the wheelhouse

def test_the_extras_ask_for_nothing_over_installed_torch_torchvision_and_jax(wheelhouse, tmp_path):
    """Plain `pip install -e ".[vit,seg,dev]"` (no pins, no constraints) where the frameworks are installed."""
    python = _frameworks_venv(tmp_path)
    report = tmp_path / "report.json"
    done = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                           "--no-index", "--find-links", str(wheelhouse), "-e", f"{ROOT}[vit,seg,dev]"],
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    names = {canonicalize_name(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]}
    assert "vit-sam2-lab" in names and "transformers" in names
    assert not names & {"torch", "torchvision", "jax", "jaxlib"}


@pytest.mark.slow
def test_setup_system_installs_a_wheelhouse_with_no_network_and_keeps_the_frameworks(wheelhouse, tmp_path):
    python = _frameworks_venv(tmp_path)
    kept = [*install_env.FRAMEWORKS, "jaxlib"]
    before = _versions(python, kept)
    done = _setup_system(python, "--wheelhouse", wheelhouse)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _versions(python, kept) == before
    imports = ("import jax_vit.train, torch_seg.pipeline, torch_seg, sam2.build_sam, groundingdino.models, "
               "pycocotools.mask, tensorflow_datasets, supervision; print(torch_seg.__file__)")
    done = subprocess.run([str(python), "-c", imports], env={**os.environ, **OFFLINE}, capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(ROOT / "torch_seg" / "__init__.py")  # the checkout, editable


def test_a_wheelhouse_missing_a_wheel_is_refused_and_nothing_is_installed(wheelhouse, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("pycocotools-"):
            shutil.copy(wheel, partial / wheel.name)
    python = _frameworks_venv(tmp_path / "env")
    before = sorted(os.listdir(_site_packages(python)))
    done = _setup_system(python, "--wheelhouse", partial)
    assert done.returncode == 2
    line = _one_error_line(done.stderr)
    assert re.search(r"has no wheel for pycocotools.*python scripts/wheelhouse\.py", line), line
    assert sorted(os.listdir(_site_packages(python))) == before


# ------------------------------------------------------------------------------------ a package not installed

def test_missing_sam2_is_an_error_naming_its_install_command(monkeypatch):
    from torch_seg import _deps
    from torch_seg.errors import UserError
    from torch_seg.sam import build_sam2_model

    monkeypatch.setitem(sys.modules, "sam2", None)
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(UserError) as error:
        build_sam2_model(random_weights=True)
    assert isinstance(error.value, ImportError)
    assert str(error.value).startswith("sam2 is not installed: " + _deps.AFTER_EXTRA["sam2"])
    assert 'pip install "vit-sam2-lab[seg]"' in str(error.value)


def _script_without(module: str, script: str, *args) -> subprocess.CompletedProcess:
    """Run scripts/`script` in a process where `module` cannot be imported."""
    code = (f"import runpy, sys; sys.modules[{module!r}] = None; sys.argv = {[script, *map(str, args)]!r}; "
            f"runpy.run_path({str(ROOT / 'scripts' / script)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_segment_without_groundingdino_says_how_to_install_it(tmp_path, seg_dir):
    done = _script_without("groundingdino", "segment.py", "--image", seg_dir / "truck.jpg", "--prompt", "truck",
                           "--out", tmp_path / "out", "--random-weights")
    assert done.returncode == 2
    line = [l for l in done.stderr.splitlines() if l.startswith("error: ")]
    assert len(line) == 1 and "Traceback" not in done.stderr, done.stderr
    assert line[0].startswith("error: groundingdino-py is not installed: pip install --no-deps groundingdino-py==")
    assert 'pip install "vit-sam2-lab[seg]"' in line[0]
    assert not (tmp_path / "out").exists()


def test_train_without_jax_is_one_line_naming_the_vit_extra(tmp_path):
    done = _script_without("jax", "train.py", "--workdir", tmp_path / "run")
    assert done.returncode != 0
    assert _one_error_line(done.stderr).startswith('error: jax is not installed: pip install "vit-sam2-lab[vit]"')
    assert not (tmp_path / "run").exists()
