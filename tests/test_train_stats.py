"""Dataset statistics: the streaming estimate against numpy's exact values on the real cases; the CLI file."""
import json

import numpy as np
import pytest

from infer.engine.cases import load_volume
from conventions.tasks import BRASYN, BRASYN_NORMALIZATION
from train.__main__ import main
from train.data.cases import find_cases
from train.config import load_config
from train.run import normalization
from train.data.stats import StreamingHistogram, dataset_statistics, load_stats


def test_statistics_match_numpy_on_the_real_cases(brats_data):
    cases = find_cases([brats_data], BRASYN)
    stats = dataset_statistics(cases, BRASYN.modalities, progress=False)
    for m in BRASYN.modalities:
        v = np.concatenate([load_volume(c.name, c.files[m])[1].ravel() for c in cases])
        v = v[v > 0].astype(np.float64)
        clip = np.percentile(v, 99.5)
        clipped = np.minimum(v, clip)
        s = stats[m]
        assert np.isfinite([s.clip_max, s.mean, s.std]).all()
        assert s.clip_max == pytest.approx(clip, rel=2e-4)
        assert s.mean == pytest.approx(clipped.mean(), rel=1e-4)
        assert s.std == pytest.approx(clipped.std(), rel=1e-4)


def test_histogram_percentile_and_clipped_moments_on_known_data():
    values = np.arange(1, 10001, dtype=np.float64)
    hist = StreamingHistogram()
    for part in np.array_split(values, 7):  # streamed in pieces
        hist.add(part)
    assert hist.total == 10000
    assert hist.percentile(50) == pytest.approx(np.percentile(values, 50), rel=1e-4)
    assert hist.percentile(99.5) == pytest.approx(np.percentile(values, 99.5), rel=1e-4)
    mean, std = hist.clipped_mean_std(5000.0)
    assert mean == pytest.approx(np.minimum(values, 5000).mean(), rel=1e-4)
    assert std == pytest.approx(np.minimum(values, 5000).std(), rel=1e-4)


def test_cli_writes_statistics_that_training_reads(brats_data, tmp_path):
    out = tmp_path / "stats.json"
    assert main(["stats", "--data", str(brats_data), "--output", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["provenance"]["cases"] == 2
    norms = load_stats(out, BRASYN.modalities)
    assert set(norms) == set(BRASYN.modalities) and all(n.background == -1.0 for n in norms.values())
    assert normalization(load_config(None, [f"data.stats={out}"]), BRASYN) == norms
    assert normalization(load_config(None), BRASYN) == BRASYN_NORMALIZATION  # the fallback


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["stats", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "s.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data folder not found") and "\n" not in err
