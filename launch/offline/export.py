"""``stonk export``: a run's adapter as files others can use without this project.

``OUT/adapter``: the peft adapter alone (with a model card); ``OUT/merged``: the adapter
merged into its base in bf16 (``merge_and_unload``), with the tokenizer, loadable by plain
``transformers`` and ``vllm``. The merged folder's ``generation_config.json`` keeps the
base's token ids but neutral sampling (temperature 1, top_p 1, top_k 0, no repetition
penalty): the model was trained and evaluated that way (rollout workers run vLLM with
``--generation-config vllm``), and Qwen's own file (repetition_penalty 1.1, top_k 20) would
change even greedy answers. The folder is written beside OUT and renamed into place, so a
failed export leaves no half folder; an existing OUT is refused.

``--push-to-hub REPO`` uploads the merged folder (and the adapter under ``adapter/``) with
``huggingface_hub``; it needs network and a token (``HF_TOKEN`` or ``huggingface-cli login``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.files import read_json
from trainer.config import ConfigError, StageConfig
from trainer.run_folder import RunFolder

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
NEUTRAL_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                    "min_p": 0.0, "repetition_penalty": 1.0}


def _section(report: str, title: str) -> str:
    """The markdown section of ``report`` headed ``title`` (up to the next heading of the
    same or a higher level), or ""."""
    lines = report.splitlines()
    for i, line in enumerate(lines):
        if line.lstrip("#").strip() == title and line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("#")
                        and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
            return "\n".join(lines[i + 1:end]).strip()
    return ""


def card_base(base: str) -> tuple[str, str]:
    """(the card's ``base_model``, how its text names the base): a hub id as it is; a local
    folder by its name, said to be local (its absolute path means nothing to a reader and
    would leak this machine's layout)."""
    if Path(base).is_dir():
        name = Path(base).resolve().name
        return name, f"`{name}` (a local model folder, not a hub model)"
    return base, f"`{base}`"


def model_card(cfg: StageConfig, run: Path | None, adapter: Path, base: str) -> str:
    """README.md for the exported folders: base, data and splits, stage and gate verdict,
    the run's evaluation with its same-sample baselines, intended use, and what it is not."""
    folder = RunFolder(run) if run else None
    gate = (read_json(folder.gate) or None) if folder else None
    stage2 = (read_json(folder.stage2) or None) if folder else None
    report = folder.report.read_text() if folder and folder.report.is_file() else ""
    if gate is not None:
        verdict = "passed" if gate.get("passed") else "failed: " + ", ".join(
            i["label"] for i in gate.get("indicators", []) if not i.get("passed"))
    elif stage2 is not None:  # Stage II has no gate of its own: say what it started from
        verdict = (f"Stage I's ({stage2.get('stage1_run')}) "
                   f"{'passed' if stage2.get('passed') else 'failed'}"
                   f"{', Stage II forced' if stage2.get('forced') else ''}")
    else:
        verdict = "no gate result in the run folder"
    if stage2 is not None:  # the adapter sits on the merged Stage I model, not the hub base
        base = stage2.get("stage1_base") or base
    base, named = card_base(base)
    trained_on = named if stage2 is None else (
        f"the merged Stage I model (from {named}); the adapter alone loads only on that "
        "model: use `merged/`")
    from trainer.tasks.registry import task_usage

    task = task_usage(cfg).card()
    what, data_lines, use = task.what, task.data_lines, task.use
    lines = [
        "---", f"base_model: {base}", "library_name: transformers",
        f"tags: [{', '.join(('grpo', 'lora', *task.tags, 'stonk-trainer'))}]", "---", "",
        f"# Stonk-Trainer stage {cfg.stage} model", "",
        f"A LoRA adapter (r={cfg.lora.r}, alpha={cfg.lora.alpha}) trained with GRPO by "
        f"Stonk-Trainer on {trained_on}, exported from `{adapter}`. {what}", "",
        "## Data and splits", "", *data_lines,
        f"- promotion gate: {verdict}", "",
        "## Evaluation (from the run's report.md)", "",
        "As the run's report.md last had it: training's final evaluation, or the last "
        "`stonk eval` written into the run folder.", "",
        _section(report, "Evaluation") or "The run folder holds no report.", "",
    ]
    for title in ("On the model's own", "Promotion gate (Super Saiyan)"):
        hits = [h for h in report.splitlines() if h.startswith("#") and title in h]
        for h in hits:
            lines += [f"### {h.lstrip('#').strip()}", "", _section(report, h.lstrip("#").strip()),
                      ""]
    lines += [
        "## Intended use", "", *use,
        "## Sampling", "",
        "`generation_config.json` states neutral sampling, as in training; the figures above "
        "are greedy (temperature 0).", "",
    ]
    return "\n".join(lines)


def neutral_sampling(model_dir: Path) -> None:
    """Rewrite ``model_dir``'s generation_config.json: its token ids, neutral sampling."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(model_dir).to_dict()
    ids = {k: gen[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in gen}
    GenerationConfig(**ids, **NEUTRAL_SAMPLING).save_pretrained(model_dir)


def export(cfg: StageConfig, run: Path | None, adapter: Path, out: Path) -> Path:
    from launch.run.stage2 import merge_adapter  # Stage II's merge: safetensors only, atomic

    if out.exists():
        raise ConfigError(f"--out {out}: exists; remove it or choose another folder")
    base = cfg.model.name_or_path
    card = model_card(cfg, run, adapter, base)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "adapter").mkdir(parents=True)
    try:
        for name in ADAPTER_FILES:
            if (adapter / name).is_file():
                shutil.copy2(adapter / name, tmp / "adapter" / name)
        (tmp / "adapter" / "README.md").write_text(card.replace(
            "library_name: transformers", "library_name: peft"))
        print(f"[export] merging {adapter} into {base} (bf16)", flush=True)
        merge_adapter(base, adapter, tmp / "merged", "bfloat16", cfg.model.trust_remote_code)
        neutral_sampling(tmp / "merged")
        (tmp / "merged" / "README.md").write_text(card)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[export] {out}/adapter (peft) and {out}/merged (bf16, transformers and vLLM)",
          flush=True)
    return out


def push_to_hub(out: Path, repo: str, private: bool) -> str:
    """Upload ``out/merged`` (and ``out/adapter`` under ``adapter/``) to the Hub repo
    ``repo``; returns its URL. Needs network and a token."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(out / "merged"),
                      commit_message="Stonk-Trainer export: merged model")
    api.upload_folder(repo_id=repo, folder_path=str(out / "adapter"), path_in_repo="adapter",
                      commit_message="Stonk-Trainer export: LoRA adapter")
    return str(url)
