"""Stage II preparation: the promotion gate, the merged Stage I model, the Stage II record.

Stage II starts from the Stage I model: the adapter the promotion gate judged (the final one,
which the last step always checkpoints; ``checkpoints/best``, picked on the periodic
evaluation's small subset, stays for ``stonk eval/serve/predict``) is merged once into a
copy of the base loaded in ``model.dtype`` of the Stage II config (bfloat16 in production:
merging into a 4-bit base would be lossy), and saved with ``save_pretrained`` as ``<stage2
run>/base``. Workers serve it and the learner loads it (4-bit again if the config says so)
with a new, smaller adapter; the adapter disabled gives the Stage I model, which is the KL
reference.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from trainer.config import ConfigError, StageConfig, load_config
from trainer.run_folder import RunFolder


def stage1_adapter(stage1_run: Path) -> Path:
    """The final adapter: the one the final evaluation and the gate judged (a run's last
    step always checkpoints). Promoting best/ instead would start Stage II from a model
    the gate never saw (in the demo, step 12, 24 or 36's, picked on 64 windows)."""
    adapter = RunFolder(stage1_run).adapter("latest")
    if adapter is not None:
        return adapter
    raise ConfigError(f"{stage1_run}: no Stage I checkpoint (checkpoints/LATEST); is this a "
                      f"Stage I run folder?")


def check_promotion(stage1_run: Path, force: bool) -> dict:
    """The Stage I gate verdict; raises listing the failed indicators unless ``force``."""
    from trainer.gate import GateError, failed_indicators, read_gate

    try:
        gate = read_gate(stage1_run)
    except GateError as exc:  # a user's input: one error line, not a traceback
        raise ConfigError(f"{exc} (is {stage1_run} a finished Stage I run?)") from None
    failed = [] if gate.get("passed") else failed_indicators(gate)
    if failed and not force:
        lines = "\n".join(f"  - {f}" for f in failed)
        raise ConfigError(f"{stage1_run / 'gate.json'}: the Stage I promotion gate did not "
                          f"pass:\n{lines}\nTrain Stage I further, or override with FORCE=1 "
                          f"(recorded in the Stage II run).")
    return {"passed": bool(gate.get("passed")), "failed": failed, "forced": bool(failed)}


def merge_adapter(base: str, adapter: Path, out: Path, dtype: str,
                  trust_remote_code: bool = False) -> Path:
    """Merge ``adapter`` into ``base`` loaded in ``dtype``; save to ``out`` atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.policy import DTYPES

    model = AutoModelForCausalLM.from_pretrained(base, dtype=DTYPES[dtype],
                                                 trust_remote_code=trust_remote_code,
                                                 use_safetensors=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out


def prepare(cfg: StageConfig, stage1_run: Path, run_dir: Path, force: bool) -> StageConfig:
    """Gate, merge, and point the Stage II config at the merged model; records stage2.json."""
    if cfg.stage != 2:
        raise ConfigError(f"stage: a Stage II config says stage: 2, this one says {cfg.stage}")
    if not RunFolder(stage1_run).config.is_file():
        raise ConfigError(f"{stage1_run}: not a run folder (no config.yaml)")
    verdict = check_promotion(stage1_run, force)
    s1 = load_config(RunFolder(stage1_run).config)
    if s1.task != cfg.task:
        raise ConfigError(f"task: the Stage I run {stage1_run} trained task {s1.task!r}; this "
                          f"Stage II config names task {cfg.task!r} (a Stage II continues the "
                          f"same task)")
    adapter = stage1_adapter(stage1_run)
    run_dir.mkdir(parents=True, exist_ok=True)
    base = RunFolder(run_dir).base
    print(f"[stage2] merging {adapter} into {s1.model.name_or_path} ({cfg.model.dtype}) "
          f"-> {base}", flush=True)
    merge_adapter(s1.model.name_or_path, adapter, base, cfg.model.dtype,
                  s1.model.trust_remote_code)
    record = {"stage1_run": str(stage1_run), "stage1_adapter": str(adapter),
              "stage1_base": s1.model.name_or_path, "merged_base": str(base), **verdict}
    RunFolder(run_dir).stage2.write_text(json.dumps(record, indent=2))
    if verdict["forced"]:
        print(f"[stage2] FORCE=1: starting although the gate failed: {verdict['failed']}",
              flush=True)
    cfg.model.name_or_path = str(base)
    return cfg
