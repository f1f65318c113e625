"""The bundled models' outputs on real inputs against a file recorded from the same weights: the segmenter's
labels exactly, the synthesis to float32 rounding (1e-6 of its range: CPUs of other instruction sets round
float32 sums differently, about 2e-7 of the range seen between two machines here; a code change moves it far more).

Guards refactoring (the outputs must not move while code moves). The reference is recorded with
`python -m pytest tests/test_reference_outputs.py --record-reference`, only when the bundled weights are
deliberately retrained; then say so in the commit.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conventions.tasks import BRASYN, SEGMENT
from infer import cli, segment
from models.checkpoint import WEIGHTS_FILE

REFERENCE = Path(__file__).parent / "data" / "reference-outputs.npz"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "brasyn" / "BraTS-GLI-00001-000"
AXIAL_SLAB = slice(70, 76)
"""Axial slices of the real case that the bundled models run on (a slab keeps the test to seconds)."""
FIXED_ARITHMETIC = ("--batch-size", "1", "--precision", "fp32")
"""Float32, one slice per forward pass: other batch sizes move float32 results by about 1e-6 when the slices a
batch holds change (skipping empty slices changes them), and bf16 (the default on CPUs that have it) is another
arithmetic."""

ROUNDING = 1e-6
"""Largest gap allowed in a float output, as a fraction of the recorded output's largest magnitude."""
RECORDED_FROM = {"brasyn_t2f": cli.default_weights(BRASYN) / WEIGHTS_FILE,
                 "segment": cli.default_weights(SEGMENT) / WEIGHTS_FILE}
"""The bundled weights each recorded output comes from; the reference keeps their SHA-256 beside the outputs."""


def weights_digest(path: Path) -> np.ndarray:
    """SHA-256 of a weights file, as an array the reference file can hold."""
    return np.frombuffer(hashlib.sha256(path.read_bytes()).digest(), dtype=np.uint8)


def crop_case(source: Path, destination: Path, box: tuple[slice, ...]) -> Path:
    """Copy every NIfTI file of case folder `source` to `destination`, cropped to `box` (affine kept as is)."""
    destination.mkdir(parents=True)
    for path in sorted(source.glob("*.nii.gz")):
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)[box]
        nib.save(nib.Nifti1Image(data, image.affine, image.header), destination / path.name)
    return destination


def run_cli(main, args: list[str], output: Path) -> np.ndarray:
    assert main(args) == 0
    (path,) = sorted(output.glob("*.nii.gz"))
    return np.asanyarray(nib.load(path).dataobj)


def bundled_outputs(work: Path, brats18: Path) -> dict[str, np.ndarray]:
    """The brasyn model's t2f on a slab of the bundled sample case, and the segmenter's labels on a cropped
    validation case."""
    brasyn_in = crop_case(SAMPLE, work / "brasyn-in" / SAMPLE.name, (slice(None), slice(None), AXIAL_SLAB))
    segment_case = brats18 / "Brats18_CBICA_AME_1"
    segment_in = crop_case(segment_case, work / "segment-in" / segment_case.name,
                           (slice(56, 184), slice(48, 208), slice(40, 104)))
    (segment_in / f"{segment_case.name}_seg.nii.gz").unlink()
    return {
        "brasyn_t2f": run_cli(cli.main, ["--input", str(brasyn_in.parent), "--output", str(work / "brasyn-out"),
                                         "--device", "cpu", *FIXED_ARITHMETIC], work / "brasyn-out"),
        "segment": run_cli(segment.main, ["--input", str(segment_in.parent), "--output",
                            str(work / "segment-out"), "--device", "cpu"], work / "segment-out"),
    }


def test_bundled_outputs_unchanged(tmp_path, brats18_data, request):
    outputs = bundled_outputs(tmp_path, brats18_data)
    if request.config.getoption("--record-reference"):
        digests = {f"{name}_weights_sha256": weights_digest(path) for name, path in RECORDED_FROM.items()}
        np.savez_compressed(REFERENCE, **outputs, **digests)
        pytest.skip(f"recorded {REFERENCE}")
    reference = np.load(REFERENCE)
    for name, output in outputs.items():
        expected = reference[name]
        assert output.dtype == expected.dtype and output.shape == expected.shape, name
        tolerance = ROUNDING * float(np.abs(expected).max()) if expected.dtype.kind == "f" else 0.0
        gap = np.abs(output.astype(np.float64) - expected)
        differ = int(np.count_nonzero(gap > tolerance))
        assert differ == 0, f"{name}: {differ} voxels differ from the recorded output, by up to {gap.max():.3g}"


def test_reference_recorded_from_the_bundled_weights():
    """Fails fast, without running a model, when bundled weights were retrained but the reference was not."""
    reference = np.load(REFERENCE)
    for name, path in RECORDED_FROM.items():
        assert np.array_equal(reference[f"{name}_weights_sha256"], weights_digest(path)), (
            f"{path} is not the file {REFERENCE.name} was recorded from: after deliberately retraining it, "
            "re-record with python -m pytest tests/test_reference_outputs.py --record-reference")
