"""The container: Dockerfile consistent with the tree, and each task's entrypoint run as the image runs it.

No Docker engine exists on development or CI machines, so the image's /app is rebuilt in a temporary folder
from the Dockerfile's COPY lines, the entrypoint gets the Dockerfile's ENV (with /app, /opt/venv, /input and
/output mapped to real folders), and runs as a non-root uid with a read-only input folder.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infer.phantoms.head import make_head_case
from infer.phantoms.brain import SampleCase, write_case
from conventions.tasks import TASKS
from infer.phantoms.ultrasound import make_us_case
from models.checkpoint import CheckpointMeta, kind_of, read_config, save_checkpoint
from models.generator import GeneratorConfig, HFGANGenerator
from models.unet import Pix2PixUNet, UNetConfig

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
"""Drop to uid/gid 65534 as `brats` would run us (its caller's uid). CAP_DAC_READ_SEARCH only lets it read and
traverse (the interpreter may live under a private home such as /root); it grants no write permission."""


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions (keyword, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), args.strip()))
    return stages


def copies(stage: list[tuple[str, str]], task: str) -> list[tuple[str | None, str, str]]:
    """(from-stage or None, source, destination) of each COPY, with ${TASK} substituted."""
    out = []
    for keyword, args in stage:
        if keyword == "COPY":
            parts = args.replace("${TASK}", task).split()
            origin = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), None)
            src, dst = [p for p in parts if not p.startswith("--")]
            out.append((origin, src, dst))
    return out


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in args.split():
                key, value = item.split("=", 1)
                env[key] = value
    return env


def task_names() -> list[str]:
    return sorted(p.parent.name for p in (REPO / "docker").glob("*/entrypoint.sh"))


def test_every_task_has_an_entrypoint():
    assert task_names() == sorted(TASKS)


@pytest.mark.parametrize("task", task_names())
def test_dockerfile_matches_the_tree(task):
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    for stage in stages:
        for origin, src, _ in copies(stage, task):
            if origin is None:
                assert (REPO / src).exists(), f"COPY source {src} missing from the tree"
    entrypoint = REPO / "docker" / task / "entrypoint.sh"
    assert entrypoint.stat().st_mode & stat.S_IXUSR, f"{entrypoint} is not executable"
    final = stages[-1]
    assert ("ENTRYPOINT", '["/app/entrypoint.sh"]') in final
    assert (None, f"docker/{task}/entrypoint.sh", "/app/entrypoint.sh") in copies(final, task)
    assert (REPO / "weights" / task / "config.json").is_file(), f"weights/{task} must hold the task's checkpoint"


def test_versions_are_pinned_once():
    """The image installs requirements.txt (the one place for pins); the Dockerfile pins nothing itself."""
    requirements = (REPO / "requirements.txt").read_text()
    assert re.search(r"^torch==\d+\.\d+\.\d+$", requirements, re.M)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY requirements.txt /tmp/requirements.txt" in dockerfile
    assert "-r /tmp/requirements.txt" in dockerfile
    assert not re.search(r"\b[\w-]+==\d", dockerfile), "version pins belong in requirements.txt"


def test_dockerignore_keeps_what_the_image_copies():
    ignore = (REPO / ".dockerignore").read_text().split()
    assert ignore[0] == "*" or "*" in ignore
    for origin, src, _ in copies(dockerfile_stages()[0], "brasyn") + copies(dockerfile_stages()[-1], "brasyn"):
        if origin is not None:
            continue
        top = src.split("/")[0]
        assert f"!{top}" in ignore or f"!{top}/" in ignore, f"{src} is excluded from the build context"


def build_app(root: Path, task: str) -> tuple[Path, dict[str, str]]:
    """Lay out the image's /app under `root` and return it with the image's environment mapped onto it."""
    stages = dockerfile_stages()
    build_sources = {dst: src for origin, src, dst in copies(stages[0], task) if origin is None}
    app = root / "app"
    for origin, src, dst in copies(stages[-1], task):
        if not dst.startswith("/app/"):
            continue
        source = REPO / (build_sources[src] if origin else src)
        target = app / dst.removeprefix("/app/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/bin:/bin"}
    for key, value in image_env(stages[-1]).items():
        env[key] = value.replace("$PATH", env["PATH"]).replace("/opt/venv/bin", venv_bin).replace("/app", str(app))
    return app, env


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def readonly(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)


def tiny_model(task: str) -> torch.nn.Module:
    """A small random network of the kind the task's bundled checkpoint holds (fast; the container contract
    does not depend on the weights)."""
    kind = read_config(REPO / "weights" / task)["kind"]
    spec = TASKS[task]
    if kind == "unet":
        return Pix2PixUNet(UNetConfig(num_modalities=len(spec.modalities), channels=(8, 16, 32), image_size=64))
    return HFGANGenerator(GeneratorConfig(dim=8, num_modalities=len(spec.modalities)))


def task_inputs(task: str, folder: Path, brats_data: Path) -> tuple[str, Path]:
    """One case of `task` written into `folder`: (the expected output name, the input whose grid it takes)."""
    if task == "mr2ct":
        case = make_head_case("HEAD-SYN-00001-000", 1, (96, 96, 8))
        write_case(case, folder, drop="ct")
        return f"{case.name}-ct.nii.gz", folder / case.name / f"{case.name}-t1.nii.gz"
    if task == "us2mr":
        case = make_us_case("US-SYN-00001-000", 1, (64, 64, 24))
        write_case(SampleCase(case.name, {"us": case.images["us"]}, None, case.affine), folder)
        return f"{case.name}-t2w.nii.gz", folder / case.name / f"{case.name}-us.nii.gz"
    case = "BraTS-GLI-00000-000"
    (folder / case).mkdir(parents=True)
    for modality in ("t1c", "t1n", "t2f"):
        shutil.copy(brats_data / case / f"{case}-{modality}.nii.gz", folder / case)
    return f"{case}-t2w.nii.gz", brats_data / case / f"{case}-t1c.nii.gz"


def entrypoint_tasks() -> list:
    """Each task; brasyn's real 240 x 240 x 155 case takes over a minute on a 2-core CPU: a slow test."""
    return [pytest.param(t, marks=pytest.mark.slow) if t == "brasyn" else t for t in task_names()]


@pytest.mark.parametrize("task", entrypoint_tasks())
def test_entrypoint_runs_like_the_image(task, brats_data):
    root = Path(tempfile.mkdtemp(prefix="brainsyn-image-"))
    try:
        root.chmod(0o755)
        app, env = build_app(root, task)
        weights = app / "weights" / task
        shutil.rmtree(weights)
        model = tiny_model(task)
        spec = TASKS[task]
        save_checkpoint(model, weights, CheckpointMeta(kind=kind_of(model), task=task, modalities=spec.modalities,
                                                       normalization=dict(spec.normalization)))
        inputs, outputs = root / "input", root / "output"
        inputs.mkdir()
        expected, grid = task_inputs(task, inputs, brats_data)
        outputs.mkdir()
        outputs.chmod(0o777)
        readonly(inputs)
        readonly(app)
        before_app, before_in = tree_state(app), tree_state(inputs)
        env.update(BRAINSYN_INPUT=str(inputs), BRAINSYN_OUTPUT=str(outputs))
        as_root = os.geteuid() == 0
        command = (AS_NOBODY if as_root else []) + [str(app / "entrypoint.sh")]
        result = subprocess.run(command, env=env, cwd=app, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        written = sorted(p.name for p in outputs.iterdir())
        assert written == [expected]
        out = nib.load(outputs / written[0])
        ref = nib.load(grid)
        assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
        assert np.isfinite(np.asarray(out.dataobj)).all()
        if as_root:
            assert (outputs / written[0]).stat().st_uid == NOBODY
        assert tree_state(app) == before_app, "the entrypoint wrote into the image's /app"
        assert tree_state(inputs) == before_in, "the entrypoint wrote into /input"
    finally:
        for p in [root, *root.rglob("*")]:
            if p.is_dir():
                p.chmod(0o755)
        shutil.rmtree(root)


@pytest.mark.parametrize("parameters", [["--parameters_file=/mlcube_io3/p.yml"], ["--parameters_file", "/p.yml"]])
def test_legacy_brats_command_line(tmp_path, parameters):
    """`IMAGE infer --data_path=... --output_path ... --parameters_file[= ]...` reaches the engine's options."""
    script = REPO / "docker" / "run_task.sh"
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = subprocess.run([str(script), "brasyn", "infer", "--data_path=/mlcube_io0", *parameters, "--output_path",
                             "/mlcube_io2"], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["-m", "infer", "--task", "brasyn", "--input", "/input", "--output", "/output",
                                     "--data_path=/mlcube_io0", "--output_path", "/mlcube_io2"]


CACHE_VARIABLES = ("HOME", "TMPDIR", "TORCH_HOME", "TRITON_CACHE_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME")
READ_ONLY_TMP = "mount -t tmpfs -o ro tmpfs /tmp && mount -t tmpfs -o ro tmpfs /var/tmp && cd /tmp && exec \"$@\""
"""`docker run --read-only` without --tmpfs: /tmp, /var/tmp and the working directory cannot be written."""


def test_image_caches_live_where_read_only_alone_allows():
    """Under `--read-only` only the mounts and /dev/shm (which Docker mounts in every container) are writable;
    /output must hold the outputs only."""
    env = image_env(dockerfile_stages()[-1])
    for key in CACHE_VARIABLES:
        assert env[key] == "/dev/shm" or env[key].startswith("/dev/shm/"), f"{key}={env[key]}"


@pytest.mark.parametrize("matplotlib_dir", ["image", "unwritable"])
def test_the_package_starts_without_a_writable_tmp(matplotlib_dir):
    namespace = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    if subprocess.run([*namespace, "true"], capture_output=True).returncode:
        pytest.skip("no mount namespaces here")
    if any(Path(p).resolve().is_relative_to("/tmp") for p in (REPO, sys.prefix, sys.base_prefix)):
        pytest.skip("the code or the interpreter lies under /tmp, which this emulation hides")
    env = {**image_env(dockerfile_stages()[-1]), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if matplotlib_dir == "unwritable":
        env["MPLCONFIGDIR"] = "/tmp/matplotlib"
    command = [sys.executable, "-c", "import infer.cli, matplotlib; print(matplotlib.get_cachedir())"]
    result = subprocess.run([*namespace, "sh", "-c", READ_ONLY_TMP, "sh", *command], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Matplotlib created a temporary cache directory" not in result.stderr
    assert result.stdout.startswith("/dev/shm/")


def test_read_only_run_is_documented_as_the_image_needs_it():
    for readme in (REPO / "README.md", REPO / "docker" / "README.md"):
        text = readme.read_text()
        assert "--read-only" in text and "/dev/shm" in text and "--tmpfs /tmp" not in text, readme
