"""The gpu profile for a GPU machine, checked and fetched from any machine with .venv.

Owns: resolving the gpu profile (``make check-gpu-deps [VLLM=X]``: a pip dry run for CPython
3.12 manylinux x86_64, installing nothing), downloading the set it resolved with the deepspeed
sdist (``make gpu-wheels``), and downloading only a requirements file's exact pins
(``make gpu-wheels MIN=file`` or ``TORCH=X``: the minimal worker set of launch/install/gpu/ for a
machine that already has that torch). The profile's pins and VLLM=X's come from
launch/install/setup_profile.py. Run by the Makefile with the system python
(``python3 -m launch.install.gpu.wheels``): standard library only. Errors are one line, exit code 2.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from launch.install.setup_profile import (
    BOOTSTRAP,
    KEY_PACKAGES,
    SDIST,
    VLLM_RANGE,
    SetupError,
    canonical,
    gpu_pins,
    load_project,
    pin,
    req_name,
    venv_pip,
)


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


def gpu_requirements(pyproject: Path, sdist: Path, vllm: str | None = None) -> list[str]:
    """What a GPU machine installs from wheels: the project's needs, the gpu and dev extras,
    the sdist's own needs in its place, and the venv bootstrap."""
    project = load_project(pyproject)
    extras = project.get("optional-dependencies", {})
    reqs = list(project.get("dependencies", []))
    reqs += [r for r in gpu_pins(pyproject, vllm) if req_name(r) != SDIST]
    reqs += extras.get("dev", []) + sdist_requires(sdist) + BOOTSTRAP
    return reqs


def check_gpu_deps(venv: Path, pyproject: Path, python_version: str, report: Path,
                   vllm: str | None = None) -> dict:
    """Resolve the gpu profile for CPython ``python_version`` on manylinux x86_64, installing
    nothing; fast-deps reads each wheel's metadata with range requests instead of downloading
    it (this index serves no separate metadata files). Returns {name: version}."""
    pip = venv_pip(venv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = fetch_sdist(pip, pyproject, Path(tmp))
        reqs = gpu_requirements(pyproject, sdist, vllm)
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
    gpu = gpu_pins(pyproject, vllm)
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


def min_file(pyproject: Path, torch: str) -> Path:
    """``launch/install/gpu/vllm-X-min.txt`` of the checked vLLM release that pins ``torch``."""
    found = [v for v, pins in VLLM_RANGE.items() if pins.get("torch") == torch]
    path = pyproject.parent / "launch" / "install" / "gpu" / f"vllm-{found[0]}-min.txt" if found else None
    if path is None or not path.is_file():
        raise SetupError(f"TORCH={torch}: no minimal wheel set for it in launch/install/gpu/ "
                         f"(checked releases: {', '.join(VLLM_RANGE)})")
    return path


def download_listed(venv: Path, reqs: Path, python_version: str, dest: Path) -> int:
    """The wheels of ``reqs``' exact pins alone (``--no-deps``: the file is the closure), for
    a machine that already has the rest; returns their bytes."""
    if not reqs.is_file():
        raise SetupError(f"MIN={reqs}: no such requirements file")
    specs = [ln.split("#")[0].strip() for ln in reqs.read_text().splitlines()]
    specs = [x for x in specs if x]
    loose = [x for x in specs if "==" not in x]
    if loose:
        raise SetupError(f"{reqs}: {loose[0]!r} is not an exact pin (name==version)")
    dest.mkdir(parents=True, exist_ok=True)
    argv = [venv_pip(venv), "download", "-q", "--no-deps", *platform_args(python_version),
            "-d", str(dest), *specs]
    print(f"gpu-wheels: downloading the {len(specs)} wheels of {reqs} into {dest}", flush=True)
    if subprocess.run(argv, env=pip_env(), check=False).returncode:
        raise SetupError(f"pip download of {reqs} into {dest} failed (see above)")
    names = {canonical(x.split("==")[0]) for x in specs}
    size = sum(f.stat().st_size for f in dest.glob("*.whl")
               if canonical(f.name.split("-")[0]) in names)
    print(f"gpu-wheels: {len(specs)} wheels, {size / 2**20:.0f} MiB in {dest}; carry them with "
          f"benchmarks/gpu_carry.py (docs/gpu.md)")
    return size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="launch.install.gpu.wheels", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["gpu-deps", "gpu-wheels"])
    ap.add_argument("--venv", type=Path, default=Path(".venv"))
    ap.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    ap.add_argument("--python", default="3.12", help="the GPU machine's Python")
    ap.add_argument("--report", type=Path, help="pip's resolution report")
    ap.add_argument("--dest", type=Path, default=Path(".whl"), help="gpu-wheels' folder")
    ap.add_argument("--only", nargs="*", help="gpu-wheels: only these names of the set")
    ap.add_argument("--vllm", default=os.environ.get("VLLM") or None,
                    help=f"the gpu profile's vLLM release (one of {', '.join(VLLM_RANGE)})")
    ap.add_argument("--min", type=Path, help="gpu-wheels: only this file's pins, --no-deps")
    ap.add_argument("--torch", help="gpu-wheels: launch/install/gpu/'s minimal set for this torch")
    args = ap.parse_args(argv)
    tag = f"-vllm{args.vllm}" if args.vllm else ""
    report = args.report or args.venv / f"gpu-deps-py{args.python}{tag}.json"
    try:
        if args.command == "gpu-deps":
            check_gpu_deps(args.venv, args.pyproject, args.python, report, args.vllm)
        elif args.min or args.torch:
            reqs = args.min or min_file(args.pyproject, args.torch)
            download_listed(args.venv, reqs, args.python, args.dest)
        else:
            download_wheels(args.venv, args.pyproject, args.python, report, args.dest,
                            args.only)
    except SetupError as e:
        print(f"{'check-gpu-deps' if args.command == 'gpu-deps' else 'gpu-wheels'}: {e}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
