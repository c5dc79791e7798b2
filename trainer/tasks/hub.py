"""Opening a ``datasets`` dataset for a task: a hub id, a folder written by
``Dataset.save_to_disk``, or a local ``.parquet``/``.jsonl``/``.json``/``.csv`` file; and
:class:`DataError`, the one error a task raises for unusable data (the launcher prints it as
one line).
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_BUILDERS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json",
                  ".csv": "csv"}
HUB_HELP = (
    "The Hugging Face hub is unreachable from here, or the dataset needs a login. Fix: run "
    "`huggingface-cli login` (or set HF_TOKEN) if it is gated or private, and check the "
    "network; or download it where the hub is reachable and point {setting} at the copy "
    "(a folder written by Dataset.save_to_disk, or a .parquet/.jsonl/.csv file)"
)


class DataError(ValueError):
    """Unusable data or data configuration; the message names the file, row and field."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def open_dataset(name: str, split: str, *, config_name: str = "", setting: str = "data.dataset",
                 split_setting: str = "data.split", also: str = ""):
    """The rows of ``split`` of a hub dataset (``config_name``: its configuration) or a local
    copy, or a DataError saying why not, naming the config ``setting`` (and ``also``: what
    else would do, appended to the hub's help)."""
    import datasets

    local = Path(name)
    try:
        if local.is_dir():
            ds = datasets.load_from_disk(str(local))
        elif local.is_file():
            builder = LOCAL_BUILDERS.get(local.suffix.lower())
            if builder is None:
                raise DataError(f"{name}: unknown dataset file type; use "
                                f"{', '.join(LOCAL_BUILDERS)} or a save_to_disk folder")
            ds = datasets.load_dataset(builder, data_files=str(local), split="train")
        else:
            ds = datasets.load_dataset(name, config_name or None, split=split)
    except DataError:
        raise
    except Exception as exc:  # the boundary to the hub and to foreign files: say what failed
        if local.exists():
            raise DataError(f"{name}: cannot read this local dataset: {first_line(exc)}") \
                from None
        help_text = HUB_HELP.format(setting=setting) + (f"; {also}" if also else "")
        raise DataError(f"{setting}: cannot load {name!r} (split {split!r}) from the Hugging "
                        f"Face hub: {first_line(exc)}. {help_text}.") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{name}: no split {split!r} ({split_setting}); splits: "
                            f"{', '.join(ds)}")
        ds = ds[split]
    return ds


def missing_dataset(name: str, setting: str, instead: str = "") -> str | None:
    """Why ``name`` cannot be read before a run starts (a local path that does not exist, a
    hub dataset neither cached here nor reachable), naming ``setting``; None when it can."""
    if Path(name).exists():
        return None
    if name.startswith((".", "/")) or Path(name).suffix.lower() in LOCAL_BUILDERS:
        return f"{setting}: {name} does not exist"
    cache = Path(os.environ.get("HF_DATASETS_CACHE", Path.home() / ".cache/huggingface/datasets"))
    if list(cache.glob(name.replace("/", "___") + "*")):
        return None
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(name, timeout=10)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means we cannot fetch it
        return (f"{setting}: dataset {name!r} is not cached here and the hub cannot be "
                f"reached ({type(exc).__name__}); download it on a connected machine "
                f"(`datasets.load_dataset(...).save_to_disk(DIR)`) and set {setting}: DIR"
                + (f", {instead}" if instead else ""))
