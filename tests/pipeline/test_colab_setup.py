"""The notebooks' setup cell as Colab runs it, here: Colab's marker faked, the kit installed from this
checkout into a throwaway environment that already holds a torch of another build.

Colab's torch is a CUDA build (its version carries a label such as +cu126). The environment here gets
this machine's torch relabelled `+colab` (its files linked, its metadata and torch.version rewritten),
a build pip cannot find anywhere: if the install tried to replace it, pip would either fail or
install this checkout's pinned CPU build, and the test sees the label change.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from test_plain_clone import checkout_files

ROOT = Path(__file__).resolve().parents[2]
COLAB_LABEL = "colab"

FAKE_COLAB_THEN_SETUP = """
import sys, types
sys.modules["google"] = types.ModuleType("google")
sys.modules["google.colab"] = types.ModuleType("google.colab")
exec(compile(open(sys.argv[1]).read(), "setup cell", "exec"))
"""

AFTER_SETUP = """
import importlib.metadata, json, torch
import clo_utils
from clo_utils.models import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer("embedded:smollm2-135m-instruct")
ids = tokenizer("Hello", return_tensors="pt").input_ids
print(json.dumps({"torch_dist": importlib.metadata.version("torch"), "torch": torch.__version__,
                  "kit": clo_utils.__file__, "logits": list(model(ids).logits.shape)}))
"""


def link_tree(src: Path, dst: Path) -> None:
    """Hard links where possible (fast, no extra disk); pip replaces files by unlinking, never in place."""

    def link(s, d):
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


def purelib_of(python: Path) -> Path:
    """The site-packages folder of the environment whose interpreter is `python`."""
    paths = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(paths.stdout.strip())


def venv_with_relabelled_torch(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    site = purelib_of(python)
    dist = importlib.metadata.distribution("torch")
    version = dist.version
    relabelled = f"{version.split('+')[0]}+{COLAB_LABEL}"
    package = Path(dist.locate_file("torch"))
    link_tree(package, site / "torch")
    info = Path(dist._path)  # the .dist-info folder
    new_info = site / f"torch-{relabelled}.dist-info"
    shutil.copytree(info, new_info)  # copied, not linked: rewritten below
    metadata = new_info / "METADATA"
    metadata.write_text(re.sub(r"^Version: .*$", f"Version: {relabelled}", metadata.read_text(), count=1, flags=re.M))
    version_py = site / "torch" / "version.py"
    text = version_py.read_text().replace(version, relabelled)
    version_py.unlink()  # a link to this environment's file: replace it, never write through it
    version_py.write_text(text)
    for extra in ("functorch", "torchgen"):
        if (Path(dist.locate_file(extra))).is_dir():
            link_tree(Path(dist.locate_file(extra)), site / extra)
    return python


@pytest.mark.slow
def test_setup_cell_on_fake_colab_keeps_torch_and_loads_the_embedded_model(tmp_path):
    pytest.importorskip("torch")
    setup = "".join(json.loads((ROOT / "notebooks" / "01_translate_data.ipynb").read_text())["cells"][1]["source"])
    (tmp_path / "setup.py").write_text(setup)
    python = venv_with_relabelled_torch(tmp_path / "colab")
    torch_init = next((tmp_path / "colab").glob("lib/python*/site-packages/torch/__init__.py"))
    before = torch_init.stat().st_ino
    source = tmp_path / "checkout"  # the checkout's files only: pip builds there, not in the working tree
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    env = {
        **os.environ,
        "CLO_KIT_SOURCE": source.as_uri(),
        "CLO_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [python, "-c", FAKE_COLAB_THEN_SETUP, tmp_path / "setup.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "colab" / "clo-kit-installed").exists()

    after = subprocess.run(
        [python, "-c", AFTER_SETUP], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert after.returncode == 0, after.stderr[-3000:]
    result = json.loads(after.stdout.strip().splitlines()[-1])
    assert result["torch_dist"].endswith(f"+{COLAB_LABEL}") and result["torch"].endswith(f"+{COLAB_LABEL}")
    assert torch_init.stat().st_ino == before, "torch's files were replaced"
    assert "site-packages" in result["kit"]  # installed from the checkout, not imported from it
    assert result["logits"][0] == 1 and result["logits"][2] > 1000  # one sequence, logits over the vocabulary

    again = subprocess.run(
        [python, "-c", FAKE_COLAB_THEN_SETUP, tmp_path / "setup.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "pip" not in again.stdout, "a second run of the cell installs nothing"
