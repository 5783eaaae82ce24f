"""Installing this project into an environment that already has its torch, torchvision and jax.

- `supported_ranges`: the torch/torchvision/jax ranges, read from pyproject.toml (the one place for them).
- `check_frameworks`: are they installed, and new enough? One line naming the fix if not.
- `system_install`: `bash scripts/setup.sh system [--wheelhouse DIR]`, the path of the Colab notebooks and of
  offline machines. The frameworks are pinned to their installed versions for every pip call, so pip can add
  packages but never replace them, and each step is resolved (`--dry-run`) before anything is installed.
- `build_wheelhouse`: `python scripts/wheelhouse.py DIR`, every wheel the project needs beyond torch,
  torchvision, jax and what they bring, for this Python or another one (`--python-version 3.12`).

This file runs under the target environment's own Python before anything is installed, so it needs only the
standard library and `packaging` (pip's vendored copy will do).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a bare environment: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("torch", "torchvision", "jax")  # the environment's own builds (CUDA, TPU, CPU): never ours to pick
# Installed with the frameworks and built for them: pinned where present, so that pip leaves them as well.
COMPANIONS = ("torchaudio", "jaxlib")
COMPANION_PREFIXES = ("jax-cuda", "libtpu")  # jax-cuda12-plugin, jax-cuda12-pjrt, jax-cuda13-..., libtpu(-nightly)
SYSTEM_EXTRAS = "vit,seg,dev"
BUILD_ENV = {"SAM2_BUILD_CUDA": "0"}  # sam2: skip the optional CUDA extension, so the wheel is pure Python
# Wheels that run wherever torch's own Linux wheels do (they need glibc 2.28).
MANYLINUX_GLIBC_MINOR = 28
FIXES = {
    "torch": "install the PyTorch build for this machine first, with its torchvision "
             "(https://pytorch.org/get-started/locally/), then run this again",
    "torchvision": "install the torchvision release that pairs with the installed torch "
                   "(https://pytorch.org/get-started/previous-versions/), then run this again",
    "jax": 'install JAX for this machine first (pip install -U "jax[cuda12]" on an NVIDIA GPU, "jax[tpu]" on a '
           'TPU, "jax" on a CPU), then run this again',
}


class InstallError(Exception):
    """A problem with the environment or the inputs; the message is one line that names the fix."""


# ---------------------------------------------------------------------------------------------- the ranges

def read_pyproject(root: Path = ROOT) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        found = re.search(r'^requires-python\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
        raise InstallError(f"Python {sys.version.split()[0]} is too old for this project (requires-python "
                           f"{found.group(1) if found else '?'}): use a newer Python") from None
    with open(root / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def check_python(pyproject: dict, version: str | None = None) -> None:
    spec = SpecifierSet(pyproject["project"]["requires-python"])
    version = version or ".".join(map(str, sys.version_info[:3]))
    if not spec.contains(version):
        raise InstallError(f"Python {version} is outside this project's range (requires-python {spec}): "
                           f"use a Python in that range")


def supported_ranges(pyproject: dict) -> dict[str, SpecifierSet]:
    """torch, torchvision, jax -> the range the extras in pyproject.toml give them."""
    ranges = {name: SpecifierSet() for name in FRAMEWORKS}
    for requirements in pyproject["project"].get("optional-dependencies", {}).values():
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name in ranges:
                ranges[name] &= requirement.specifier
    return ranges


def project_requirements(pyproject: dict, extras: str = SYSTEM_EXTRAS) -> list[str]:
    """The dependencies and the named extras' requirements, this project's own extras left out."""
    name = canonicalize_name(pyproject["project"]["name"])
    texts = list(pyproject["project"].get("dependencies", []))
    for extra in extras.split(","):
        texts += pyproject["project"]["optional-dependencies"][extra]
    return [t for t in texts if canonicalize_name(Requirement(t).name) != name]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_frameworks(ranges: dict[str, SpecifierSet], version_of=installed_version) -> dict[str, str]:
    """name -> installed version for torch, torchvision and jax; InstallError if one is missing or too old."""
    found = {}
    for name in FRAMEWORKS:
        version = version_of(name)
        spec = ranges[name]
        if version is None:
            raise InstallError(f"{name} is not installed: {FIXES[name]}")
        if not spec.contains(Version(version), prereleases=True):
            older = any(s.operator in (">=", ">", "~=", "==") and Version(version) < Version(s.version.rstrip(".*"))
                        for s in spec)
            raise InstallError(f"{name} {version} is {'older than' if older else 'outside'} this project's range "
                               f"({name}{spec}): {FIXES[name]}")
        found[name] = version
    return found


def kept_pins() -> list[str]:
    """`name==version` for every installed framework and companion: the constraints that keep them as they are."""
    pins = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name in FRAMEWORKS or name in COMPANIONS or name.startswith(COMPANION_PREFIXES):
            pins.setdefault(name, f"{name}=={dist.version}")  # the first one on sys.path is the one imported
    return sorted(pins.values())


# ----------------------------------------------------------------------------------------- system install

def _tool(pyproject: dict) -> dict:
    return pyproject["tool"]["vit-sam2-lab"]


def wheel_names(folder: Path) -> set[str]:
    """Canonical project names of the wheels in `folder`."""
    return {canonicalize_name(p.name.split("-")[0]) for p in folder.glob("*.whl")}


def install_steps(pyproject: dict, root: Path, wheelhouse: Path | None) -> list[list[str]]:
    """The pip install arguments, in order: the project with its extras, sam2, the packages pip must not
    resolve. With a wheelhouse sam2 is a wheel already, so it joins the project's resolution."""
    tool = _tool(pyproject)
    project = ["-e", f"{root}[{SYSTEM_EXTRAS}]"]
    without_deps = list(tool["install-without-deps"])
    vocabulary = tool["offline-vocabulary"]
    if wheelhouse is None:
        return [project, ["--no-build-isolation", *tool["build-without-isolation"]],
                ["--no-deps", *without_deps, vocabulary]]
    if canonicalize_name(vocabulary) in wheel_names(wheelhouse):
        without_deps.append(vocabulary)
    return [[*project, *tool["build-without-isolation"]], ["--no-deps", *without_deps]]


def _pip_failure(output: str, wheelhouse: Path | None, what: str = "install the project") -> str:
    """pip's error as one line that names the fix."""
    missing = re.search(r"No matching distribution found for (\S+)", output)
    if missing and wheelhouse is not None:
        return (f"the wheelhouse {wheelhouse} has no wheel for {missing.group(1)}: build it again with "
                f"python scripts/wheelhouse.py {wheelhouse} --python-version {sys.version_info[0]}.{sys.version_info[1]}")
    if "externally-managed-environment" in output:
        return ("this Python is managed by the system (PEP 668): make a venv that sees its packages, "
                "python3 -m venv --system-site-packages .venv-system, and run "
                "PYTHON=.venv-system/bin/python bash scripts/setup.sh system")
    errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR:")]
    detail = errors[0].removeprefix("ERROR:").strip() if errors else (output.strip().splitlines() or ["?"])[-1]
    if "conflict" in output.lower() or "ResolutionImpossible" in output:
        detail += " (torch, torchvision and jax are pinned to what is installed)"
    return f"pip could not {what}: {detail}"


def _run_pip(python: str, args: list[str], wheelhouse: Path | None) -> None:
    index = ["--no-index", "--find-links", str(wheelhouse)] if wheelhouse is not None else []
    command = [python, "-m", "pip", "install", "--disable-pip-version-check", *index, *args]
    done = subprocess.run(command, env={**os.environ, **BUILD_ENV}, capture_output=True, text=True)
    if done.returncode != 0:
        raise InstallError(_pip_failure(done.stdout + done.stderr, wheelhouse))


def framework_versions(python: str) -> dict[str, str | None]:
    """The frameworks' versions as `python` sees them, read in a fresh process (after pip has changed things)."""
    code = ("import json, importlib.metadata as m\n"
            "def v(n):\n    try: return m.version(n)\n    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {list(FRAMEWORKS)!r}}}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def system_install(wheelhouse: Path | None = None, root: Path = ROOT, log=print) -> dict[str, str]:
    """Install the project (editable) with its extras into the running Python's environment. Returns the
    framework versions, the same before and after."""
    pyproject = read_pyproject(root)
    check_python(pyproject)
    before = check_frameworks(supported_ranges(pyproject))
    if wheelhouse is not None:
        wheelhouse = Path(wheelhouse).resolve()
        if not any(wheelhouse.glob("*.whl")):
            raise InstallError(f"no wheels in {wheelhouse}: build a wheelhouse with python scripts/wheelhouse.py "
                               f"{wheelhouse} --python-version {sys.version_info[0]}.{sys.version_info[1]}")
    python = sys.executable
    log("keeping " + ", ".join(f"{n} {v}" for n, v in before.items()) + f" ({sys.prefix})")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "keep-installed.txt")
        constraints.write_text("\n".join(kept_pins()) + "\n")
        steps = install_steps(pyproject, root, wheelhouse)
        for args in steps:  # every step must resolve before anything is installed
            _run_pip(python, ["--dry-run", "-c", str(constraints), *args], wheelhouse)
        for args in steps:
            log("pip install " + " ".join(args))
            _run_pip(python, ["-c", str(constraints), *args], wheelhouse)
    after = framework_versions(python)
    changed = [f"{n} {before[n]} -> {after[n]}" for n in FRAMEWORKS if after[n] != before[n]]
    if changed:
        raise InstallError(f"pip changed {', '.join(changed)} although they were pinned: report this")
    if wheelhouse is not None and canonicalize_name(_tool(pyproject)["offline-vocabulary"]) not in wheel_names(wheelhouse):
        log(f"note: {_tool(pyproject)['offline-vocabulary']} is not in the wheelhouse: random-weight GroundingDINO "
            f"runs then need --text-encoder DIR (a bert-base-uncased tokenizer folder)")
    return before


# -------------------------------------------------------------------------------------------- wheelhouse

@dataclass
class Wheelhouse:
    folder: Path
    wheels: list[Path]
    target: str  # "Python 3.12, manylinux_2_28 x86_64" or "this Python and machine"

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.wheels)

    def summary(self) -> str:
        return (f"wheelhouse {self.folder}: {len(self.wheels)} wheels, {self.size_bytes / 1e6:.1f} MB "
                f"({self.target}); install with bash scripts/setup.sh system --wheelhouse {self.folder}")


def target_flags(python_version: str | None) -> list[str]:
    """pip's options for binary wheels that run on `python_version` (CPython, Linux x86_64); none for this Python."""
    if python_version is None:
        return []
    if not re.fullmatch(r"3\.\d+", python_version):
        raise InstallError(f"--python-version {python_version!r}: give major.minor, e.g. 3.12")
    abi = "cp" + python_version.replace(".", "")
    platforms = [f"manylinux_2_{minor}_x86_64" for minor in range(MANYLINUX_GLIBC_MINOR, 4, -1)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    flags = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
             "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        flags += ["--platform", platform]
    return flags


def read_present(path: Path) -> dict[str, str]:
    """`pip list --format=freeze` of the target: name -> version of what is there already."""
    present = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*(\S+)", line)
        if not found:
            raise InstallError(f"{path} line {number} ({line!r}): write name==version, as "
                               f"python -m pip list --format=freeze prints it")
        present[canonicalize_name(found.group(1))] = found.group(2)
    return present


def _write_stub(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A dist-info with nothing but metadata: pip takes `name` as installed without downloading it, and a
    constraint keeps it at `version` (as the target has it)."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *[f"Requires-Dist: {r}" for r in requires]]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    (info / "RECORD").write_text("")
    with open(folder / "constraints.txt", "a") as constraints:
        constraints.write(f"{name}=={version}\n")


def _lowest_allowed(spec: SpecifierSet) -> str | None:
    lows = [s.version for s in spec if s.operator in (">=", "==", "~=")]
    return max(lows, key=Version) if lows else None


def _stubs(folder: Path, ranges: dict[str, SpecifierSet], present: dict[str, str]) -> dict[str, list[str]]:
    """Stub the frameworks (with the running environment's requirements where it has them) and what the target
    has already. Returns name -> requirements of each stub."""
    stubbed = {}
    for name in [*FRAMEWORKS, "jaxlib"]:
        version, requires = present.get(name), []
        try:
            dist = metadata.distribution(name)
            if version in (None, dist.version):  # another version's requirements may not fit
                version = dist.version
                requires = [r for r in (dist.requires or []) if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            version = version or _lowest_allowed(ranges.get(name, SpecifierSet()))
        if version:
            _write_stub(folder, name, version, requires)
            stubbed[name] = requires
    for name, version in present.items():
        if name not in stubbed:
            _write_stub(folder, name, version, [])
            stubbed[name] = []
    return stubbed


@dataclass
class _Tools:
    """A recent pip and a setuptools that builds wheels, each in its own folder, put on PYTHONPATH for the calls
    that need them. pip 23 takes --python-version only with --target, which ignores the stubs; pip 26 takes it
    with --dry-run."""
    pip: Path
    setuptools: Path

    @classmethod
    def install(cls, folder: Path) -> "_Tools":
        tools = cls(folder / "pip", folder / "setuptools")
        for target, requirements in ((tools.pip, ["pip>=26"]), (tools.setuptools, ["setuptools>=70.1", "wheel"])):
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                   "--target", str(target), *requirements], capture_output=True, text=True)
            if done.returncode != 0:
                raise InstallError(_pip_failure(done.stdout + done.stderr, None,
                                                f"fetch {' '.join(requirements)} (the wheelhouse needs PyPI)"))
        return tools

    def run(self, python: str, args: list[str], *paths: Path, what: str) -> None:
        env = {**os.environ, **BUILD_ENV, "PYTHONPATH": os.pathsep.join(map(str, [self.pip, *paths]))}
        done = subprocess.run([python, "-m", "pip", *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise InstallError(_pip_failure(done.stdout + done.stderr, None, what))


def _resolve(tools: _Tools, python: str, requirements: list[str], flags: list[str], find_links: Path, stubs: Path,
             report: Path) -> dict[str, dict]:
    """pip's resolution of `requirements` in the empty environment `python` plus the stubs: name -> report item."""
    tools.run(python, ["install", "--dry-run", "--quiet", "--disable-pip-version-check", "--report", str(report),
                       "--find-links", str(find_links), "-c", str(stubs / "constraints.txt"), *flags, *requirements],
              stubs, what="resolve the wheelhouse")
    items = json.loads(report.read_text())["install"]
    return {canonicalize_name(item["metadata"]["name"]): item for item in items}


def _closure(roots: dict[str, list[str]], resolved: dict[str, dict]) -> set[str]:
    """Names in `resolved` that the stubbed `roots` need, directly or through each other."""
    seen, todo = set(), [Requirement(r) for requires in roots.values() for r in requires]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or name not in resolved:
            continue
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        seen.add(name)
        extras = set(requirement.extras)
        for text in resolved[name]["metadata"].get("requires_dist") or []:
            child = Requirement(text)
            if not child.marker or any(child.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(Requirement(str(child).split(";")[0]))
    return seen


def _pip_wheel(tools: _Tools, args: list[str], dest: Path) -> None:
    # --no-build-isolation builds use the tools' setuptools; the others build as usual, in isolation.
    tools.run(sys.executable, ["wheel", "--quiet", "--disable-pip-version-check", "--no-deps", "--wheel-dir", str(dest),
                               *args], tools.setuptools, what=f"build {' '.join(args)}")


def _copy_project(root: Path, pyproject: dict, dest: Path) -> Path:
    """The files a wheel of this project is built from (so the build leaves the checkout as it is)."""
    source = dest / "project"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in patterns:
        for folder in root.glob(pattern.rstrip("*")):
            if (folder / "__init__.py").is_file():
                shutil.copytree(folder, source / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def build_wheelhouse(dest: Path, python_version: str | None = None, present_file: Path | None = None,
                     with_vocabulary: bool = False, root: Path = ROOT, log=print) -> Wheelhouse:
    """Collect into `dest` every wheel the project needs beyond torch, torchvision, jax and what they bring,
    building sam2, the sdist-only packages and the project itself here."""
    pyproject = read_pyproject(root)
    tool = _tool(pyproject)
    ranges = supported_ranges(pyproject)
    present = read_present(present_file) if present_file else {}
    flags = target_flags(python_version)
    target = (f"Python {python_version}, manylinux_2_{MANYLINUX_GLIBC_MINOR} x86_64" if python_version
              else f"Python {sys.version_info[0]}.{sys.version_info[1]} on this machine")
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stubs = tmp / "stubs"
        roots = _stubs(stubs, ranges, present)
        venv.EnvBuilder(with_pip=False).create(tmp / "empty")  # resolve as into a new environment
        empty_python = str(tmp / "empty" / "bin" / "python")
        tools = _Tools.install(tmp / "tools")
        log(f"building sam2, groundingdino-py and this project as wheels ({target}) ...")
        _pip_wheel(tools, ["--no-build-isolation", *tool["build-without-isolation"]], dest)
        _pip_wheel(tools, ["--no-build-isolation", str(_copy_project(root, pyproject, tmp))], dest)
        _pip_wheel(tools, list(tool["install-without-deps"]), dest)
        build_requires = list(pyproject["build-system"]["requires"])
        requirements = [*project_requirements(pyproject), *tool["build-without-isolation"], *build_requires]
        log("resolving ...")
        resolved = _resolve(tools, empty_python, requirements, [], dest, stubs, tmp / "here.json")
        sdists = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in resolved.values()
                  if not item["download_info"]["url"].endswith(".whl")]
        if sdists:  # published only as source: pure Python so far, so one wheel serves every target
            _pip_wheel(tools, sdists, dest)
        if flags:
            resolved = _resolve(tools, empty_python, requirements, flags, dest, stubs, tmp / "target.json")
        brought = _closure(roots, resolved) - {canonicalize_name(Requirement(r).name) for r in build_requires}
        built = wheel_names(dest)
        fetch = [f"{item['metadata']['name']}=={item['metadata']['version']}" for name, item in resolved.items()
                 if name not in brought and name not in built]
        if with_vocabulary:
            fetch.append(tool["offline-vocabulary"])
        log(f"downloading {len(fetch)} wheels ...")
        if fetch:
            tools.run(sys.executable, ["download", "--quiet", "--disable-pip-version-check", "--no-deps",
                                       "--only-binary=:all:", *[f for f in flags if f != "--only-binary=:all:"],
                                       "--dest", str(dest), *fetch], what="download the wheels")
    strangers = [w.name for w in dest.glob("*.whl") if flags and not _runs_on(w.name, python_version)]
    if strangers:
        raise InstallError(f"{strangers[0]} in {dest} is not for Python {python_version}: remove it, or build the "
                           f"wheelhouse into an empty folder")
    return Wheelhouse(dest, sorted(dest.glob("*.whl")), target)


def _runs_on(wheel_name: str, python_version: str) -> bool:
    """Does a wheel's tag fit CPython `python_version` on manylinux x86_64 (pure wheels fit all)?"""
    python_tag, abi_tag, platform_tag = wheel_name[:-4].split("-")[-3:]
    if platform_tag == "any":
        return True
    cp = "cp" + python_version.replace(".", "")
    pythons = python_tag.split(".")
    fits_python = cp in pythons or (abi_tag == "abi3" and any(p.startswith("cp3") and int(p[3:]) <= int(cp[3:])
                                                              for p in pythons))
    return fits_python and "x86_64" in platform_tag and "linux" in platform_tag


# ------------------------------------------------------------------------------------ for scripts/setup.sh

def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="bash scripts/setup.sh system [--wheelhouse DIR]")
    parser.add_argument("command", choices=["system"])
    parser.add_argument("--wheelhouse", type=Path, metavar="DIR", help="install from DIR only (no network)")
    args = parser.parse_args(argv)
    try:
        system_install(args.wheelhouse)
    except InstallError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"ready: vit-sam2-lab[{SYSTEM_EXTRAS}] in {sys.prefix} (torch, torchvision and jax unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
