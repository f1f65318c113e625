"""BraTS tumour segmentation with a 3D segmenter checkpoint, behind the runner of `python -m infer`.

    python -m infer.segment --input IN --output OUT [--weights CKPT] [--shard I/N] [--overwrite] [--qc]

runs the segmentation task (`conventions.tasks.SEGMENT`): every case of IN with its four modalities (either
naming convention) gets `OUT/<case>-seg.nii.gz`, uint8 BraTS 2023 labels (1 NETC, 2 ED, 3 ET) on the inputs'
grid, written atomically; a bad case costs one line and is skipped, as for synthesis. The predictor is
`infer.engine.segmentation`; `load_segmenter` gives the evaluation's downstream protocol its segmenter (a
checkpoint or an algorithm of the `brats` package).
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from conventions.tasks import BRATS_MODALITIES, SEGMENT
from infer import cli
from infer.engine.segmentation import SegmentationPredictor
from infer.evaluate.downstream import Segmenter
from models.checkpoint import load_model


BRATS_PREFIX = "brats:"
"""`--segmenter brats:<algorithm>[:singularity]` names a segmentation algorithm of the `brats` package."""


def load_segmenter(spec: str | Path | None = None, device: str = "auto") -> Segmenter:
    """A segmenter function (`infer.evaluate.downstream.Segmenter`): `brats:<algorithm>[:singularity]` (see
    `brats_segmenter`), else a "segmenter3d" checkpoint folder, by default the bundled one (`weights/segment`)."""
    if spec is not None and str(spec).startswith(BRATS_PREFIX):
        name, _, backend = str(spec).removeprefix(BRATS_PREFIX).partition(":")
        return brats_segmenter(name, backend or "docker", force_cpu=device == "cpu")
    path = Path(spec) if spec is not None else cli.default_weights(SEGMENT)
    target = torch.device(cli.pick_device(device))
    predictor = SegmentationPredictor(load_model(path, device=target, kind="segmenter3d"), device=target)
    return lambda volumes, _affine: predictor.predict(volumes, SEGMENT.product)


def brats_segmenter(algorithm: str, backend: str = "docker", force_cpu: bool = False) -> Segmenter:
    """A BraTS adult-glioma (pre-treatment) segmentation algorithm of the `brats` package, run through its own
    `infer_single` (its container via Docker or Singularity): the volumes are written as NIfTI files with the
    given affine in a temporary folder; the algorithms write 2023 labels. ValueError for an unknown algorithm."""
    from brats import AdultGliomaPreTreatmentSegmenter
    from brats.constants import AdultGliomaPreTreatmentAlgorithms, Backends

    known = [a.value for a in AdultGliomaPreTreatmentAlgorithms]
    if algorithm not in known:
        raise ValueError(f"unknown brats segmentation algorithm {algorithm!r}; known: {', '.join(known)}")
    backends = {b.value: b for b in Backends}
    if backend not in backends:
        raise ValueError(f"unknown brats backend {backend!r}; known: {', '.join(backends)}")
    segmenter = AdultGliomaPreTreatmentSegmenter(AdultGliomaPreTreatmentAlgorithms(algorithm), force_cpu=force_cpu)

    def segment(volumes: Mapping[str, np.ndarray], affine: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory(prefix="brainsyn-brats-") as tmp:
            files = {}
            for modality in BRATS_MODALITIES:
                files[modality] = Path(tmp) / f"{modality}.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(volumes[modality], dtype=np.float32), affine), files[modality])
            output = Path(tmp) / "seg.nii.gz"
            segmenter.infer_single(**files, output_file=output, backend=backends[backend])
            return np.asarray(nib.load(output).dataobj).astype(np.uint8)

    return segment


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, fixed_task=SEGMENT)


if __name__ == "__main__":
    sys.exit(main())
