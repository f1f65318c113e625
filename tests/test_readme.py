"""The README's commands: the main job runs as written in a fresh clone (parsed from the README, so the two
cannot drift), and CI runs the README's test command."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CASE = "BraTS-GLI-00001-000"  # the bundled sample case (samples/)


def readme_block(marker: str) -> str:
    """The fenced code block that follows `<!-- marker -->` in README.md."""
    match = re.search(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert match, f"README.md has no code block after <!-- {marker} -->"
    return match.group(1)


def test_ci_runs_the_readme_test_command():
    assert readme_block("ci:test").strip() == "./run test --all"
    assert "<!-- ci:test -->" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow  # a fresh clone: environment set up from the pinned requirements, then the bundled model
def test_main_job_command_in_a_fresh_clone(tmp_path):
    """The README's main-job command as written, in a fresh clone with ../shared beside it; a second call
    neither reinstalls nor recomputes."""
    if os.environ.get("BRAINSYN_CLONE_TEST"):
        pytest.skip("already inside the fresh-clone test's clone")  # no recursion
    clone = tmp_path / "brainsyn"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["BRAINSYN_CLONE_TEST"] = "1"
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(str(REPO)))

    def main_job() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("ci:main-job")], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=1800)

    first = main_job()
    assert first.returncode == 0, first.stderr[-2000:]
    assert "setting up" in first.stderr
    output = clone / "sample-out" / f"{CASE}-t2f.nii.gz"
    assert f"synthesised FLAIR: {output}" in first.stdout and f"{clone / 'sample-out' / 'qc' / CASE}.png" in first.stdout
    out, ref = nib.load(output), nib.load(clone / "samples" / "brasyn" / CASE / f"{CASE}-t1c.nii.gz")
    assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
    data = np.asarray(out.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data[np.asarray(ref.dataobj) > 0].mean() > 0
    assert (clone / "sample-out" / "qc" / f"{CASE}.png").stat().st_size > 0
    second = main_job()
    assert second.returncode == 0 and "setting up" not in second.stderr and "skipped" in second.stderr


def test_quick_start_folders_are_ignored_by_git():
    folders = re.findall(r"--output (\S+)", (REPO / "run").read_text())
    assert folders == ["sample-out"]
    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode:
        return  # not a git checkout (an unpacked release): nothing to ignore
    paths = [f"{folder}/case/file.nii.gz" for folder in folders]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.split() == paths
