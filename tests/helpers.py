"""Helpers shared by the inference tests: stub models, synthetic volumes and cases, tiny checkpoints, the CLI."""
import nibabel as nib
import numpy as np
from torch import nn

from infer.cli import main
from infer.engine.slices import EngineSettings
from conventions.tasks import BRASYN
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.generator import GeneratorConfig, HFGANGenerator

SMALL_SHAPE = (14, 12, 9)
AFFINE = np.array([[-1.0, 0, 0, 13], [0, -1.0, 0, 11], [0, 0, 1.0, -4], [0, 0, 0, 1]])


class CopyModel(nn.Module):
    """Returns one input channel: modality `source`, slice `offset` from the centre (needs 2.5D context)."""

    def __init__(self, source: int, k: int = 0, offset: int = 0) -> None:
        super().__init__()
        self.channel = source * (2 * k + 1) + k + offset

    def forward(self, x, available, target, view=None):
        return x[:, self.channel:self.channel + 1].clone()


def settings_for(views, image_size=240, k=0):
    return EngineSettings(modalities=BRASYN.modalities, normalization=BRASYN.normalization, views=views,
                          image_size=image_size, context_slices=k)


def synthetic_volumes(shape, seed=0, modalities=("t1c", "t2f", "t2w")):
    """A random positive ellipsoidal 'brain' per modality on a zero background (float32)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32)[:, None, None, None] - 1) / 2
    brain = (((grid - centre) / (centre + 0.5)) ** 2).sum(axis=0) < 0.8
    return {m: np.where(brain, rng.uniform(1, 3000, shape), 0).astype(np.float32) for m in modalities}


def tiny_generator(image_size=32, **config):
    """A random generator small enough for CPU tests (about 10 k parameters)."""
    return HFGANGenerator(GeneratorConfig(image_size=image_size, dim=4, norm_groups=4, dim_mults=(1, 1, 1, 1, 1),
                                          n_layers=1, num_heads=2, **config))


def tiny_meta(**fields):
    return CheckpointMeta(**{"kind": "generator", "task": "brasyn", "modalities": BRASYN.modalities,
                             "normalization": dict(BRASYN.normalization), "views": ("axial",), **fields})


def save_tiny_checkpoint(path, image_size=32, views=("axial",)):
    """A tiny random BraSyn generator saved with the project's checkpoint format; returns its folder."""
    model = tiny_generator(image_size)
    model.meta = tiny_meta(views=views)
    return save_checkpoint(model, path, model.meta)


def write_case(root, case, modalities=("t1c", "t1n", "t2w"), flat=False, seed=0, shape=SMALL_SHAPE):
    """A small synthetic case, int16 like BraTS, each file's header `descrip` naming its modality."""
    folder = root if flat else root / case
    folder.mkdir(parents=True, exist_ok=True)
    for modality, volume in synthetic_volumes(shape, seed, modalities).items():
        image = nib.Nifti1Image(volume.astype(np.int16), AFFINE)
        image.header["descrip"] = modality.encode()
        nib.save(image, folder / f"{case}-{modality}.nii.gz")
    return folder


def snapshot(folder):
    """Every file under `folder` with its size and modification time."""
    return {(p, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def run_cli(input_dir, output_dir, weights, *extra):
    return main(["--task", "brasyn", "--input", str(input_dir), "--output", str(output_dir), "--weights", str(weights),
                 "--device", "cpu", *extra])
