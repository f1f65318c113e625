"""The benchmark runs the real runner on small cases and prints every figure (no timing is asserted)."""
import json

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
