"""`make gpu-check`: the production path's first run on one GPU, in one script, no network.

`make gpu-check` first installs the GPU profile (`make setup PROFILE=gpu`, from carried wheels
with `WHEELS=dir`), then runs this, which:
1. runs `pytest -m gpu` (NCCL collectives, a 4-bit CUDA learner, a CUDA vLLM worker);
2. builds a random-init model of Qwen2.5-1.5B-Instruct's exact architecture (its 151,936-row
   vocabulary, bf16, Qwen's sampling defaults in generation_config.json) with the embedded
   tokenizer: no hub needed, and a random model writes to max_tokens every time, the worst
   case for memory and time;
3. runs 3 colocated Stage I steps at configs/stage1.yaml's settings through `stonk stage1`
   (the users' path: launcher, vLLM worker, accelerate + DeepSpeed learner, 4-bit base),
   sampling each GPU process's memory with nvidia-smi;
4. runs the learner alone at the same settings (benchmarks/gpu_learner.py under accelerate
   launch: DeepSpeed ZeRO-2, bf16, NCCL, the plan's worst-case batch); where vLLM is not
   installed (a GPU machine without the rollout engine), this replaces part 3;
5. prints, and writes to OUT/summary.json and OUT/summary.md: per process the peak GPU
   memory beside `stonk plan`'s figure, the learner's own torch peak, step 1's learner/worker
   log-prob gap (nf4 base vs the bf16 base the worker serves) and the step time.
Each part says how long it took; the whole is meant to finish within 10 minutes.

    .venv/bin/python benchmarks/gpu_check.py [--out runs/gpu-check] [--steps 3] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, median_after_warmup, run_timed, stage1_command  # noqa: E402
from benchmarks.common import table as md_table  # noqa: E402

CONFIG = "configs/stage1.yaml"
MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
# the plan's table of its config.json (launch/planning/model_shape.py) and the fields it leaves out
QWEN_EXTRA = {"max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6}


def qwen_architecture(name: str = MODEL) -> dict:
    """Qwen2Config fields of a hub model the plan knows, without its files."""
    from launch.planning.model_shape import KNOWN_MODELS

    arch = {k: v for k, v in KNOWN_MODELS[name].items() if k != "torch_dtype"}
    return {**arch, **QWEN_EXTRA}


def build_random_model(out: Path, arch: dict, dtype: str = "bfloat16",
                       device: str = "cpu") -> Path:
    """A random-init Qwen2 model of architecture ``arch`` with the embedded tokenizer (its
    ids are a prefix of the vocabulary) and Qwen2.5-Instruct's sampling defaults, saved like a
    hub checkpoint. Built on ``device`` (a GPU initialises 1.5B parameters in seconds)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from launch.embedded.tiny_model import QWEN_SAMPLING_DEFAULTS, build_tokenizer

    tok = build_tokenizer(1024, 0)
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<|endoftext|>", "<|im_end|>")}
    config = Qwen2Config(**arch, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=tok.pad_token_id,
                         dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=[config.eos_token_id, config.bos_token_id],
        pad_token_id=config.pad_token_id, **QWEN_SAMPLING_DEFAULTS)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def parse_compute_apps(text: str) -> dict[int, int]:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits`` ->
    {pid: MiB}."""
    out = {}
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def role_of_pid(pid: int) -> str:
    """worker / learner rank / ... for a process, from it or its nearest named ancestor (a
    vLLM engine core runs as a child of its server)."""
    import psutil

    from benchmarks.memory import ROLES

    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.parents()]:
            text = " ".join(p.cmdline())
            for needle, role in ROLES:
                if needle in text:
                    return role
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    return f"pid {pid}"


class GpuSampler:
    """Polls nvidia-smi in a thread: the peak MiB per role (its processes summed) and of the
    whole GPU."""

    def __init__(self, every: float = 0.5):
        self.every = every
        self.peak_by_role: dict[str, int] = {}
        self.peak_used = 0
        self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _query(self, *args: str) -> str:
        return subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20).stdout

    def sample(self) -> None:
        by_role: dict[str, int] = {}
        for pid, mib in parse_compute_apps(
                self._query("--query-compute-apps=pid,used_memory")).items():
            role = role_of_pid(pid)
            by_role[role] = by_role.get(role, 0) + mib
        for role, mib in by_role.items():
            self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), mib)
        used, total = (int(x) for x in self._query(
            "--query-gpu=memory.used,memory.total").splitlines()[0].split(","))
        self.peak_used, self.total = max(self.peak_used, used), total

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def plan_figures(config: str, sets: list[str]) -> dict[str, float]:
    """`stonk plan`'s per-process figures (GiB) for the run's config."""
    from launch.planning.memory import plan_memory
    from trainer.config import load_config

    plan = plan_memory(load_config(config, sets))
    return {"worker": plan.worker.total_gib, "learner rank": plan.learner.total_gib}


def summary(result: dict, sampler: GpuSampler, plan: dict[str, float]) -> dict:
    rows = result["rows"]
    first = rows[0] if rows else {}
    return {
        "exit_code": result["exit_code"], "command": result["command"],
        "steps": len(rows),
        "step1_logp_gap": first.get("logp_gap"),
        "step_seconds_median_after_step1": median_after_warmup(result["wall"], 1),
        "step_seconds": result["wall"],
        "learner_torch_peak_reserved_gib": max(
            (r.get("memory/peak_reserved_gib") or 0.0 for r in rows), default=None),
        "gpu_peak_used_mib": sampler.peak_used, "gpu_total_mib": sampler.total,
        "processes": [{"role": role, "peak_gib": mib / 1024, "plan_gib": plan.get(role)}
                      for role, mib in sorted(sampler.peak_by_role.items())],
    }


def render(s: dict, tests: str, env: dict) -> str:
    procs = md_table(["process", "peak GPU memory (GiB, nvidia-smi)", "plan (GiB)"],
                     [[p["role"], p["peak_gib"], p["plan_gib"]] for p in s["processes"]])
    return "\n".join([
        f"# gpu-check ({env['gpu']}, driver {env['driver']})", "",
        f"versions: {env['versions']}", f"pytest -m gpu: {tests}", "",
        f"3 colocated Stage I steps at {CONFIG}: exit code {s['exit_code']}, "
        f"{s['steps']} step(s) logged", "", procs, "",
        f"whole GPU: peak {s['gpu_peak_used_mib'] / 1024:.2f} of "
        f"{s['gpu_total_mib'] / 1024:.2f} GiB; learner torch peak reserved "
        f"{s['learner_torch_peak_reserved_gib']} GiB",
        f"step 1 logp_gap (nf4 learner vs bf16 worker, adapter zero): {s['step1_logp_gap']}",
        f"step time: {s['step_seconds']} s (median after step 1: "
        f"{s['step_seconds_median_after_step1']})",
        f"command: {s['command']}", "",
        f"the learner alone (benchmarks/gpu_learner.py): {json.dumps(s.get('learner'))}"])


def environment() -> dict:
    import importlib.metadata as md

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    name, _, driver = smi.strip().splitlines()[0].partition(",") if smi.strip() else ("?", "", "?")
    versions = {}
    for pkg in ("torch", "vllm", "transformers", "deepspeed", "bitsandbytes", "peft",
                "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    from rollout.vllm_compat import range_note

    note = range_note(versions["vllm"])  # a run outside the checked range says so
    if note:
        print(f"[gpu-check] {note}", flush=True)
    return {"gpu": name.strip(), "driver": driver.strip(), "python": platform.python_version(),
            "versions": versions, "vllm_range_note": note}


def learner_only(model: Path, out: Path, t0: float) -> dict:
    """benchmarks/gpu_learner.py under accelerate launch on one GPU; its learner.json, or the
    exit code where it wrote none."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           "launch/accelerate/gpu_single.yaml", "benchmarks/gpu_learner.py",
           "--model", str(model), "--out", str(out), "--config", CONFIG]
    print(f"[gpu-check] 4/4 the learner alone ({time.perf_counter() - t0:.0f} s in): "
          f"{' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=True)
    print("\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                    if "[gpu-learner]" in line or "Error" in line)[-4000:], flush=True)
    if proc.returncode != 0:
        (out.parent / "learner.log").write_text(proc.stdout + proc.stderr)
    path = out / "learner.json"
    return (json.loads(path.read_text()) if path.is_file()
            else {"ok": False, "exit_code": proc.returncode})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu-check")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--skip-tests", action="store_true", help="leave out pytest -m gpu")
    p.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    model = out / "qwen2.5-1.5b-random"
    sets = [f"model.name_or_path={model}", f"train.steps={a.steps}",
            f"run.output_dir={out}", "run.name=stage1", f"run.checkpoint_every={a.steps}",
            "eval.every_steps=0", "eval.final_samples=16"]
    tests_cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    run_cmd = stage1_command(CONFIG, sets)
    if a.dry_run:
        print(" ".join(tests_cmd), f"build {model} ({qwen_architecture()})", " ".join(run_cmd),
              sep="\n")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("error: gpu-check needs a CUDA GPU (torch.cuda.is_available() is false)",
              file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    env, t0 = environment(), time.perf_counter()
    tests = "skipped (--skip-tests)"
    if not a.skip_tests:
        print("[gpu-check] 1/4 pytest -m gpu", flush=True)
        proc = subprocess.run(tests_cmd, cwd=REPO, capture_output=True, text=True)
        print(proc.stdout[-3000:], proc.stderr[-2000:], flush=True)
        tests = (proc.stdout.strip().splitlines() or ["?"])[-1]
    print(f"[gpu-check] 2/4 building {model} ({time.perf_counter() - t0:.0f} s in)", flush=True)
    if not (model / "config.json").is_file():
        build_random_model(model, qwen_architecture(), device="cuda")
        torch.cuda.empty_cache()
    plan = plan_figures(CONFIG, sets)
    learner = learner_only(model, out / "learner", t0)
    if env["versions"]["vllm"] is None:
        print("[gpu-check] vllm is not installed: no Stage I run (parts 1 and 4 only)")
        s = {"exit_code": None, "learner": learner, "environment": env, "tests": tests,
             "seconds_total": time.perf_counter() - t0}
        (out / "summary.json").write_text(json.dumps(s, indent=1))
        print(json.dumps(learner, indent=1), f"\npytest -m gpu: {tests}", flush=True)
        return 0 if learner.get("ok") and "failed" not in tests else 1
    print(f"[gpu-check] 3/4 {a.steps} Stage I steps ({time.perf_counter() - t0:.0f} s in)",
          flush=True)
    with GpuSampler() as sampler:
        result = run_timed(run_cmd, out / "stage1")
    s = summary(result, sampler, plan)
    s.update(environment=env, tests=tests, seconds_total=time.perf_counter() - t0,
             learner=learner)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    text = render(s, tests, env)
    (out / "summary.md").write_text(text + "\n")
    print(text, f"\n[gpu-check] done in {time.perf_counter() - t0:.0f} s; {out}/summary.md",
          flush=True)
    return 0 if result["exit_code"] == 0 and "failed" not in tests else 1


if __name__ == "__main__":
    sys.exit(main())
