"""The benchmark runs the real runner on small cases and prints every figure (no timing is asserted)."""
import json

import pytest

from infer.benchmark import main
from infer.engine.runner import STAGES

from helpers import write_case


def small_cases(root):
    write_case(root, "a")
    write_case(root, "b", ("t1n", "t2f", "t2w"), seed=1)
    return root


def test_benchmark_prints_every_stage_and_target(small_checkpoint, tmp_path, capsys):
    argv = ["--weights", str(small_checkpoint), "--input", str(small_cases(tmp_path / "in")), "--cases", "3",
            "--device", "cpu", "--workdir", str(tmp_path / "work"), "--json", str(tmp_path / "figures.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for line in [*STAGES.values(), "end to end (wall / cases)", "throughput: ", "peak RSS: ",
                 "target 1: end to end / model forward = ", "target 3: 3 cases / one case = "]:
        assert line in out, out
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["cases"] == 3 and figures["shape"] == [14, 12, 9] and figures["batch_size"] == 8
    assert set(figures["stage_median_seconds"]) == set(STAGES) and figures["peak_rss_bytes"] > 0
    assert sorted(p.name for p in (tmp_path / "work" / "out").iterdir()) == [  # cases cycle through the input
        "bench-000-t2f.nii.gz", "bench-001-t1c.nii.gz", "bench-002-t2f.nii.gz"]


def test_memory_check_runs_each_count_in_a_fresh_process(small_checkpoint, tmp_path, capfd):
    argv = ["--weights", str(small_checkpoint), "--input", str(small_cases(tmp_path / "in")), "--device", "cpu",
            "--memory-check", "1,2", "--json", str(tmp_path / "figures.json"), "--no-overlap"]
    assert main(argv) == 0
    out = capfd.readouterr().out
    assert out.count("peak RSS: ") == 2 and "overlap off" in out
    assert "target 2: peak RSS 2 cases / 1 cases = " in out
    assert set(json.loads((tmp_path / "figures.json").read_text())["peak_rss_bytes"]) == {"1", "2"}


def test_compare_times_fp32_every_slice_against_the_defaults_per_view(small_checkpoint, tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.setattr("infer.engine.precision.cpu_has_native_bf16", lambda: True)
    argv = ["--weights", str(small_checkpoint), "--input", str(small_cases(tmp_path / "in")), "--cases", "2",
            "--device", "cpu", "--views", "axial,sagittal", "--compare", "--json", str(tmp_path / "figures.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fp32, every slice against defaults (background slices skipped, --precision auto)" in out
    assert "target: sagittal end to end after / before = " in out and "target: axial brain SSIM" in out
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert list(figures["views"]) == ["axial", "sagittal"]
    for view, row in figures["views"].items():
        old, new = row["runs"].values()
        assert (old["precision"], old["skip_background"], new["precision"], new["skip_background"]) == (
            "fp32", False, "bf16", True)
        assert row["end_to_end_ratio"] == new["seconds_per_case"] / old["seconds_per_case"] > 0
        assert row["forward_ratio"] == new["forward_seconds_per_case"] / old["forward_seconds_per_case"] > 0
        assert 0.5 < row["min_ssim_brain"] <= 1 and row["min_psnr"] > 20  # bf16 outputs near the fp32 ones
        assert any(line.startswith(f"{view} ") and "bf16" in line for line in out.splitlines())


def test_compare_and_memory_check_are_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["--compare", "--memory-check", "1,2"])
    assert "not allowed with argument" in capsys.readouterr().err
