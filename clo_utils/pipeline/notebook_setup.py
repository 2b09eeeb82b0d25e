"""What the notebooks share: Trainer arguments built from the training notebooks' parameters (02 SFT /
SFT+DPO, 03 CLO), the inline loss-curve plot, notebook 01's `column_map` parameter, the `runs_root`
parameter (a Google Drive folder on Colab), and the Colab installs that every notebook's setup cell
runs after installing the kit.

Both notebooks declare the same typed training parameters (papermill reads each notebook's own
`parameters` cell, and the batch runner checks a recipe's `train:` keys against them); this module
turns them into `transformers.TrainingArguments` keywords once, so SFT, DPO and CLO runs train
with the same schedule, logging and checkpointing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# The notebook parameters `training_arguments` reads, shared by 02 and 03.
TRAINING_PARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "gradient_accumulation_steps",
    "warmup",
    "lr_scheduler_type",
    "save_steps",
    "seed",
    "report_to",
)
REPORT_TO_EXTRAS = {"tensorboard": ("tensorboard", "pip install -e '.[tensorboard]'")}


def report_to_list(report_to: str) -> list[str]:
    """'none' -> []; 'tensorboard' or 'tensorboard,wandb' -> the integrations transformers reports to."""
    names = [name.strip() for name in report_to.split(",") if name.strip() and name.strip() != "none"]
    for name in names:
        module, install = REPORT_TO_EXTRAS.get(name, (name, f"pip install {name}"))
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"report_to={report_to!r}: the {name!r} integration needs the package {module!r}, "
                f"which is not installed ({install})"
            )
    return names


def training_arguments(params: Mapping, output_dir: str | os.PathLike) -> dict:
    """TrainingArguments keywords from a training notebook's parameters (its globals()).

    Logs every step under TRL's metric names; checkpoints only when save_steps > 0 (for resuming a
    killed run). TensorBoard, when asked for, writes to <output_dir>/tensorboard: the Trainer's own
    output folder holds checkpoints only and is removed once the run is saved.
    """
    missing = [name for name in TRAINING_PARAMETERS if name not in params]
    if missing:
        raise KeyError(
            f"training_arguments needs the notebook parameters {missing} (clo_utils.pipeline.notebook_setup."
            "TRAINING_PARAMETERS)"
        )
    report_to = report_to_list(params["report_to"])
    if "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(output_dir) / "tensorboard")
    save_steps = params["save_steps"]
    return {
        "learning_rate": params["learning_rate"],
        "num_train_epochs": params["num_train_epochs"],
        "gradient_accumulation_steps": params["gradient_accumulation_steps"],
        "warmup_steps": params["warmup"],
        "lr_scheduler_type": params["lr_scheduler_type"],
        "seed": params["seed"],
        "logging_steps": 1,
        "disable_tqdm": False,
        "report_to": report_to or "none",
        "save_strategy": "steps" if save_steps else "no",
        "save_steps": save_steps or 500,
        "save_total_limit": 1,
    }


# Loss-curve panels: the losses, then the preference margins (CLO per direction, DPO one).
LOSS_CURVES = {"loss": "total loss", "nll_loss": "target NLL", "cl_loss": "cross-lingual loss"}
MARGIN_CURVES = {
    "rewards_en/margins": "margin, English triples",
    "rewards_tgt/margins": "margin, target triples",
    "rewards/margins": "margin, all pairs",
}


def plot_loss_curves(histories: Mapping[str, list[dict]]):
    """One figure of a run's training curves from Trainer log histories ({stage: log_history}).

    Left: total loss and, for CLO, its target NLL and cross-lingual terms; right (when logged): the
    chosen-minus-rejected reward margins per direction. Steps of a later stage (DPO after SFT)
    continue the step axis.
    """
    import matplotlib.pyplot as plt

    rows, offset = [], 0
    for stage, history in histories.items():
        logged = [h for h in history if "loss" in h and "step" in h]
        rows += [(stage, offset + h["step"], h) for h in logged]
        offset += max((h["step"] for h in logged), default=0)
    has_margins = any(key in h for _, _, h in rows for key in MARGIN_CURVES)
    figure, axes = plt.subplots(1, 2 if has_margins else 1, figsize=(11 if has_margins else 6, 3.5), squeeze=False)
    for ax, curves, ylabel in zip(axes[0], (LOSS_CURVES, MARGIN_CURVES), ("nats", "β-scaled nats")):
        for stage in histories:
            for key, label in curves.items():
                points = [(step, h[key]) for s, step, h in rows if s == stage and key in h]
                if points:
                    ax.plot(*zip(*points), marker=".", label=f"{stage}: {label}" if len(histories) > 1 else label)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        if curves is MARGIN_CURVES:
            ax.axhline(0.0, color="0.5", linewidth=0.8)
        if ax.lines:
            ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def parse_column_map(column_map: str) -> dict | str | None:
    """Notebook 01's `column_map` parameter: "" (the source's own columns), a preset name, or a JSON object."""
    text = column_map.strip()
    if not text:
        return None
    if not text.startswith("{"):
        return text  # a preset name, checked by the loader against the known presets
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"column_map is not valid JSON ({err.msg} at column {err.colno}): {column_map!r}; expected a "
            'preset name or an object such as {"instruction": "question", "output": "answer"}'
        ) from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"column_map must map fields to column names (strings), got {column_map!r}")
    return mapping


# ------------------------------------------------------------------------------------------- Colab


# Apertium pair packages by Debian's current names, with the older names some Ubuntu releases
# (Colab's system) still carry. Debian 12 ships both; the old ones are transitional there.
APERTIUM_PACKAGES = {
    "apertium-eng-cat": ("apertium-eng-cat", "apertium-en-ca"),
    "apertium-eng-spa": ("apertium-eng-spa", "apertium-en-es"),
    "apertium-eo-en": ("apertium-eo-en",),
    "apertium-hbs-eng": ("apertium-hbs-eng",),
}


def on_colab() -> bool:
    return "google.colab" in sys.modules


COLAB_DRIVE = Path("/content/drive")  # where Colab mounts Google Drive (MyDrive/ inside)


def runs_root_folder(runs_root: str) -> Path:
    """The notebooks' `runs_root` parameter as a folder (relative: from the repository root, outside a
    checkout from the working folder).

    A folder on Google Drive (under /content/drive) lets notebooks run in separate Colab sessions share
    their run folders: on Colab, Drive is mounted here when it is not yet (Colab asks for access once).
    Elsewhere an unmounted Drive path is an error, not a folder created on the local disk.
    """
    from ..common.runfiles import run_path

    folder = run_path(runs_root)
    if folder.is_relative_to(COLAB_DRIVE) and not (COLAB_DRIVE / "MyDrive").is_dir():
        if not on_colab():
            raise FileNotFoundError(
                f"runs_root={runs_root!r} is on Google Drive, which is not mounted at {COLAB_DRIVE}: on Colab, "
                f"run `from google.colab import drive; drive.mount('{COLAB_DRIVE}')` in the notebook first, "
                "or set runs_root to a local folder"
            )
        from google.colab import drive

        drive.mount(str(COLAB_DRIVE))
    return folder


def apertium_modes() -> set[str]:
    """The English -> X modes `apertium -l` lists (empty when Apertium is not installed)."""
    if shutil.which("apertium") is None:
        return set()
    listed = subprocess.run(["apertium", "-l"], capture_output=True, text=True, timeout=60)
    return set(listed.stdout.split())


def _apt_has(package: str) -> bool:
    return subprocess.run(["apt-cache", "show", package], capture_output=True).returncode == 0


def install_apertium_pairs() -> dict[str, str]:
    """Install Apertium and the kit's English -> X pairs through apt (Colab: root, Ubuntu).

    Returns {language code: "ready" | why not}. A pair that cannot be installed leaves notebook 01
    to fall back to a translation model (see `translator_fallback`).
    """
    from ..common.languages import apertium_languages

    wanted = apertium_languages()
    status = {code: "ready" for code, lang in wanted.items() if lang.apertium in apertium_modes()}
    missing = {code: lang for code, lang in wanted.items() if code not in status}
    if not missing:
        return status
    if shutil.which("apt-get") is None:
        return {**status, **dict.fromkeys(missing, "apt-get not available")}
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
    packages = {}
    for code, lang in missing.items():
        names = APERTIUM_PACKAGES.get(lang.apertium_package, (lang.apertium_package,))
        found = next((name for name in names if _apt_has(name)), None)
        if found:
            packages[code] = found
        else:
            status[code] = f"no apt package among {', '.join(names)}"
    if packages:
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "apertium", *packages.values()],
            capture_output=True,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        modes = apertium_modes()
        for code, package in packages.items():
            ok = wanted[code].apertium in modes
            status[code] = (
                "ready" if ok else f"{package} gave no {wanted[code].apertium} mode ({done.stderr.strip()[-200:]})"
            )
    for code, reason in status.items():
        if reason != "ready":
            print(f"Apertium English -> {code}: {reason}; notebook 01 falls back to translator='m2m100'")
    return status


def translator_fallback(translator: str, language: str) -> str:
    """The translator notebook 01 uses: on Colab, m2m100 when Apertium has no pair for `language`.

    Elsewhere the requested translator is kept, and a missing Apertium pair is the translator's
    own error (which says what to install).
    """
    if translator != "apertium" or not on_colab():
        return translator
    from ..common.languages import get_language

    if get_language(language).apertium in apertium_modes():
        return translator
    print(
        f"Apertium has no English -> {language} pair installed here (see the setup cell's output): translating "
        "with translator='m2m100' (facebook/m2m100_1.2B, the paper's translator) instead"
    )
    return "m2m100"
