"""The `brats` orchestrator as a real client: its own MissingMRI batch path (input standardisation, output
checks and renaming) with only the backend runner that would start a docker container replaced by one that runs
our command line on the mounted folders, as the container's entry point does. Small synthetic subjects keep it
fast (the package only warns about their non-BraTS shape); the real case runs through the CLI in test_cli."""
import nibabel as nib
import numpy as np
from brats import MissingMRI
from brats.constants import Backends, MissingMRIAlgorithms
from brats.core import brats_algorithm
from brats.core.docker import _sanity_check_output

from infer.cli import main
from conventions.tasks import BRATS_MODALITIES

from helpers import AFFINE, SMALL_SHAPE, save_tiny_checkpoint, write_case

MISSING = {"patient-a": "t2f", "patient-b": "t1c"}  # the user's subject names and what each lacks


def test_missing_mri_batch_through_the_brats_package(tmp_path, monkeypatch):
    weights = save_tiny_checkpoint(tmp_path / "weights", image_size=32)
    data = tmp_path / "data"
    for seed, (subject, missing) in enumerate(MISSING.items()):
        write_case(data, subject, tuple(m for m in BRATS_MODALITIES if m != missing), seed=seed)

    mounted = []

    def run_container(algorithm, data_path, output_path, cuda_devices, force_cpu, internal_external_name_map=None):
        # What `docker run -v data:/input -v out:/output IMAGE` does with our image, minus docker.
        mounted.append(sorted(p.name for p in data_path.iterdir()))
        assert main(["--input", str(data_path), "--output", str(output_path), "--weights", str(weights),
                     "--device", "cpu"]) == 0
        _sanity_check_output(data_path, output_path, "", internal_external_name_map)  # the package's own check

    monkeypatch.setattr(brats_algorithm, "run_docker_container", run_container)
    output = tmp_path / "output"
    MissingMRI(algorithm=MissingMRIAlgorithms.BraTS25_1, force_cpu=True).infer_batch(
        data_folder=data, output_folder=output, backend=Backends.DOCKER)

    assert mounted == [["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]]  # the package renamed the subjects
    assert sorted(p.name for p in output.iterdir()) == ["patient-a-t2f.nii.gz", "patient-b-t1c.nii.gz"]
    for subject, missing in MISSING.items():
        result = nib.load(output / f"{subject}-{missing}.nii.gz")
        assert result.shape == SMALL_SHAPE and result.get_data_dtype() == np.float32
        np.testing.assert_array_equal(result.affine, AFFINE)
