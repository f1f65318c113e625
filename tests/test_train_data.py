"""Training data: case discovery and split, prepared slabs and their disk cache, the slice dataset, sharding."""
import dataclasses

import nibabel as nib
import numpy as np
import pytest

from infer.engine.geometry import pad_to_square, to_slices, with_context
from infer.engine.intensity import normalize
from conventions.tasks import BRASYN, BRASYN_NORMALIZATION, VIEWS
from train.data.cache import load_slabs
from train.data.cases import find_cases, split_cases
from train.data.sampler import ShardedBatches
from train.data.slices import SliceDataset

VIEWS_USED = ["axial", "sagittal"]


@pytest.fixture(scope="module")
def cases(brats_data):
    return find_cases([brats_data], BRASYN)


@pytest.fixture(scope="module")
def labelled(cases):
    return [c for c in cases if c.seg is not None]


@pytest.fixture(scope="module")
def slabs(labelled):
    return load_slabs(labelled, BRASYN.modalities, BRASYN_NORMALIZATION, VIEWS_USED, None, progress=False)


@pytest.fixture(scope="module")
def volumes(labelled):
    case = labelled[0]
    raw = np.stack([nib.load(case.files[m]).get_fdata(dtype=np.float32) for m in BRASYN.modalities])
    seg = np.asarray(nib.load(case.seg).dataobj).astype(np.uint8)
    return raw, seg


def test_find_cases_and_seeded_case_level_split(cases):
    assert [c.name for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert cases[0].seg is not None and cases[1].seg is None
    train, val = split_cases(cases, 0.5, [], seed=3)
    assert len(train) == len(val) == 1 and {train[0].name, val[0].name} == {c.name for c in cases}
    assert split_cases(cases, 0.5, [], seed=3) == (train, val)
    assert [c.name for c in split_cases(cases, 0.0, ["BraTS-GLI-00001-000"], 0)[1]] == ["BraTS-GLI-00001-000"]
    with pytest.raises(ValueError, match="not among"):
        split_cases(cases, 0.0, ["nope"], 0)


@pytest.mark.parametrize("view", VIEWS_USED)
def test_sample_equals_direct_slicing_with_the_shared_geometry(slabs, volumes, view):
    raw, seg = volumes
    k = 1
    dataset = SliceDataset([s for s in slabs if s.view == view], context=k, slice_size=240, fill=-1.0,
                           min_brain_pixels=2000)
    norm = np.stack([normalize(raw[i], BRASYN_NORMALIZATION[m]) for i, m in enumerate(BRASYN.modalities)])
    slices = to_slices(norm, view)
    brain = to_slices(raw > 0, view).sum(axis=(2, 3)).min(axis=1)
    kept = dataset.items[:, 1]
    assert np.array_equal(kept, np.flatnonzero(brain >= 2000))  # the per-modality brain-area filter
    for j in (0, len(dataset) // 2, len(dataset) - 1):
        index = kept[j]
        expected = pad_to_square(with_context(slices, np.array([index]), k, -1.0)[0], 240, -1.0)
        sample = dataset[j]
        assert sample["image"].shape == (4 * (2 * k + 1), 240, 240) and sample["image"].dtype == np.float32
        np.testing.assert_allclose(sample["image"], expected, atol=6e-3)  # float16 storage
        assert np.array_equal(sample["image"] == -1.0, expected == -1.0)  # background stays exactly -1
        assert np.array_equal(sample["seg"], pad_to_square(to_slices(seg, view)[index], 240, 0))
        assert sample["view"] == VIEWS.index(view)


def test_disk_cache_matches_memory_and_is_reused(labelled, slabs, tmp_path):
    cached = load_slabs(labelled, BRASYN.modalities, BRASYN_NORMALIZATION, VIEWS_USED, tmp_path, progress=False)
    meta = tmp_path / labelled[0].name / "meta.json"
    stamp = meta.stat().st_mtime_ns
    again = load_slabs(labelled, BRASYN.modalities, BRASYN_NORMALIZATION, VIEWS_USED, tmp_path, progress=False)
    assert meta.stat().st_mtime_ns == stamp  # read, not prepared again
    assert isinstance(again[0].images, np.memmap)
    for a, b in zip(slabs, again):
        assert a.view == b.view and a.origin == b.origin and a.shape == b.shape
        assert np.array_equal(a.images, b.images) and np.array_equal(a.seg, b.seg)
    assert cached[0].images.nbytes < 0.5 * 4 * 240 * 240 * 155 * 2  # the brain box, not the whole volume
    other = {m: dataclasses.replace(n, mean=n.mean + 1) for m, n in BRASYN_NORMALIZATION.items()}
    with pytest.raises(ValueError, match="other intensity statistics"):
        load_slabs(labelled, BRASYN.modalities, other, VIEWS_USED, tmp_path, progress=False)


def test_crops_are_seeded_and_mostly_brain(slabs):
    dataset = SliceDataset(slabs, context=0, slice_size=240, fill=-1.0, min_brain_pixels=2000, crop=64, seed=1)
    a, b, c = dataset[(5, 0)], dataset[(5, 0)], dataset[(5, 1)]
    assert a["image"].shape == (4, 64, 64) and a["seg"].shape == (64, 64)
    assert np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])  # another epoch, another crop
    assert (a["image"][0] > -1).mean() > 0.3


def test_tumour_filter_keeps_only_tumour_slices(slabs):
    dataset = SliceDataset(slabs, context=0, slice_size=240, fill=-1.0, min_brain_pixels=0, min_tumour_pixels=58)
    assert len(dataset) > 0
    assert all((dataset[i]["seg"] > 0).sum() >= 58 for i in range(0, len(dataset), 7))


def test_sharded_batches_partition_each_global_batch_and_resume():
    ranks = [ShardedBatches(50, 4, r, 2, seed=0) for r in range(2)]
    assert ranks[0].steps_per_epoch == 6  # 50 // 8, the incomplete global batch dropped
    for step in range(6):
        together = np.concatenate([r.batch(step) for r in ranks])
        assert len(set(together.tolist())) == 8
    epoch0 = np.concatenate([r.batch(s) for s in range(6) for r in ranks])
    assert len(set(epoch0.tolist())) == 48  # no slice twice in an epoch
    assert not np.array_equal(ranks[0].batch(0), ranks[0].batch(6))  # epoch 1 is reshuffled
    full = list(ShardedBatches(50, 4, 1, 2, seed=0, start=0, stop=9))
    assert list(ShardedBatches(50, 4, 1, 2, seed=0, start=4, stop=9)) == full[4:]
    assert full[7][0][1] == 1  # keys carry the epoch
    with pytest.raises(ValueError, match="do not fill one global batch"):
        ShardedBatches(5, 4, 0, 2, seed=0)
