"""The README's commands: the main job runs as written (parsed from the README, so the two cannot drift)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    """The fenced code block that follows `<!-- marker -->` in README.md."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert match, f"README.md has no code block after <!-- {marker} -->"
    return match.group(1)


def test_ci_runs_the_readme_test_command():
    assert "python -m pytest" in readme_block("ci:test")
    assert "<!-- ci:test -->" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow  # the bundled model on two full-size cases: 100 to 130 s on a 2-core CPU
def test_main_job_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("ci:main-job")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    outputs = sorted(p.name for p in (tmp_path / "sample-out").glob("*.nii.gz"))
    assert outputs == ["BraTS-SYN-00000-000-t2f.nii.gz", "BraTS-SYN-00001-000-t2f.nii.gz"]
    for name in outputs:
        case = name.removesuffix("-t2f.nii.gz")
        out = nib.load(tmp_path / "sample-out" / name)
        ref = nib.load(tmp_path / "sample-in" / case / f"{case}-t1c.nii.gz")
        assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
        data = np.asarray(out.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0
        assert data[np.asarray(ref.dataobj) == 0].max() == 0  # inputs agree on the background here
        assert data[np.asarray(ref.dataobj) > 0].mean() > 0
        assert (tmp_path / "sample-out" / "qc" / f"{case}.png").stat().st_size > 0


def test_quick_start_folders_are_ignored_by_git():
    folders = re.findall(r"--output (\S+)", readme_block("ci:main-job"))
    assert folders == ["sample-in", "sample-out"]
    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        return  # not a git checkout (an unpacked release): nothing to ignore
    paths = [f"{folder}/case/file.nii.gz" for folder in folders]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == paths
