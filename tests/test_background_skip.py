"""Slices whose output is all background are not computed: the output is that of computing every slice (bit for
bit at batch size 1, within 1e-5 in normalised units at another batch size), at the edge of a real case, per
view, with a small random generator; with a 3D refiner, the refiner reads the same synthesis as before."""
import nibabel as nib
import numpy as np
import pytest
import torch

from infer.engine.slices import VolumePredictor, resolve_settings
from infer.engine.geometry import signal_box
from infer.engine.intensity import background_vote, foreground
from infer.engine.refine import SlidingWindowRefiner
from conventions.tasks import BRASYN, VIEWS
from infer.engine.patches import WindowSettings
from models.refiner import Refiner3D, RefinerConfig

from helpers import tiny_generator, tiny_meta

CASE = "BraTS-GLI-00000-000"
EDGE = (slice(140, 188), slice(32, 80), slice(40, 80))
"""48 x 48 x 40 voxels at the brain's edge along every axis: at least 8 background slices in each view, 23% brain."""
TARGET = "t2f"


@pytest.fixture(scope="module")
def edge(brats_data):
    folder = brats_data / CASE
    return {m: np.asarray(nib.load(folder / f"{CASE}-{m}.nii.gz").dataobj[EDGE], dtype=np.float32)
            for m in BRASYN.modalities if m != TARGET}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    generator = tiny_generator(image_size=48, context_slices=1)
    generator.meta = tiny_meta()
    return generator


class Counting:
    """Counts the slices that go through `model`."""

    def __init__(self, model):
        self.model, self.slices = model, 0

    def __call__(self, x, *args):
        self.slices += len(x)
        return self.model(x, *args)


def predict(model, volumes, view, batch_size, skip, refine=None):
    """The output and the number of slices computed."""
    predictor = VolumePredictor(model, resolve_settings(BRASYN, model, (view,)), batch_size=batch_size,
                                precision="fp32", skip_background=skip, refine=refine)
    predictor.forward = counter = Counting(predictor.forward)
    return predictor.predict(volumes, TARGET), counter.slices


@pytest.mark.parametrize("view", VIEWS)
def test_skipping_background_slices_keeps_the_output(edge, model, view):
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[view]
    background = background_vote([foreground(v) for v in edge.values()])
    brain_slices = int((~background).any(axis=tuple(a for a in range(3) if a != axis)).sum())
    assert 0 < brain_slices < background.shape[axis] - 3  # the edge has background slices to skip
    every, computed = predict(model, edge, view, 1, skip=False)
    assert computed == background.shape[axis]
    skipped, computed = predict(model, edge, view, 1, skip=True)
    assert computed == brain_slices
    np.testing.assert_array_equal(skipped, every)
    rebatched, _ = predict(model, edge, view, 5, skip=True)
    std = BRASYN.normalization[TARGET].std
    np.testing.assert_allclose(rebatched / std, every / std, rtol=0, atol=1e-5)


def test_a_refiner_reads_the_same_synthesis_with_skipping(edge, model):
    torch.manual_seed(1)
    network = Refiner3D(RefinerConfig(width=8, n_blocks=1))
    torch.nn.init.normal_(network.out_conv.weight, std=0.1)  # a non-zero correction that sees its neighbours
    refiner = SlidingWindowRefiner(network, WindowSettings((16, 16, 16), overlap=0.5), fill=-1.0)
    seen = []

    def recording(synthesis, inputs, target):
        seen.append(synthesis[signal_box(inputs, -1.0)].copy())
        return refiner(synthesis, inputs, target)

    volumes = {m: v.copy() for m, v in edge.items()}
    background = background_vote([foreground(v) for v in volumes.values()])
    empty = np.flatnonzero(background.all(axis=(1, 2)))  # sagittal slices without brain
    volumes["t1c"][empty[0]] = 500.0  # one input's signal where the vote says background: the refiner reads it
    every, computed_every = predict(model, volumes, "sagittal", 1, skip=False, refine=recording)
    skipped, computed = predict(model, volumes, "sagittal", 1, skip=True, refine=recording)
    assert computed < computed_every
    np.testing.assert_array_equal(seen[1], seen[0])
    np.testing.assert_array_equal(skipped, every)
