"""BraTS naming conventions, in one place: how a release names a case's files and numbers its tumour labels.

The 2023+ releases (and the BraSyn challenge) name files ``<case>-<modality>.nii.gz`` with the modalities
t1c, t1n, t2f, t2w and ``<case>-seg.nii.gz`` labelled 1 NETC, 2 ED, 3 ET. The 2018-2021 releases name them
``<case>_{t1ce,t1,flair,t2,seg}.nii.gz`` and number enhancing tumour 4. Everything in this project speaks the
2023 names and labels; a `Naming` translates on reading (labels are mapped in memory, never rewritten on disk)
and names a case's outputs in the convention its inputs came in.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

SEGMENTATION: str = "seg"
"""The name in the modality position of a case's tumour label file."""


@dataclass(frozen=True)
class Naming:
    """One naming convention.

    separator: between the case name and the modality token. aliases: modality -> its token on disk where the
    two differ. labels: label on disk -> 2023 label where the two differ.
    """

    name: str
    separator: str
    aliases: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[int, int] = field(default_factory=dict)

    def token(self, modality: str) -> str:
        """The token naming `modality` (or the segmentation) on disk."""
        return self.aliases.get(modality, modality)

    def file_name(self, case: str, modality: str) -> str:
        """The file name of `case`'s `modality` (or `SEGMENTATION`)."""
        return f"{case}{self.separator}{self.token(modality)}.nii.gz"

    def pattern(self, modalities: tuple[str, ...]) -> re.Pattern[str]:
        """A regular expression matching the file names of `modalities`, with groups `case` and `token`."""
        tokens = "|".join(re.escape(self.token(m)) for m in modalities)
        return re.compile(rf"(?P<case>.+){re.escape(self.separator)}(?P<token>{tokens})\.nii\.gz")

    def modality(self, token: str) -> str:
        """The modality a token on disk names (inverse of `token`)."""
        return next((m for m, t in self.aliases.items() if t == token), token)

    def read_labels(self, seg: np.ndarray) -> np.ndarray:
        """A label map as stored in this convention -> 2023 labels (a new array; unknown labels kept)."""
        out = np.array(seg, copy=True)
        for stored, label in self.labels.items():
            out[np.asarray(seg) == stored] = label
        return out


BRATS_2023 = Naming("BraTS 2023", "-")
"""``<case>-{t1c,t1n,t2f,t2w,seg}.nii.gz``, labels 1 NETC, 2 ED, 3 ET (also mr2ct's and us2mr's files)."""

BRATS_2018 = Naming("BraTS 2018-2021", "_", aliases={"t1c": "t1ce", "t1n": "t1", "t2f": "flair", "t2w": "t2"},
                    labels={4: 3})
"""``<case>_{t1ce,t1,flair,t2,seg}.nii.gz``, enhancing tumour labelled 4."""

NAMINGS: tuple[Naming, ...] = (BRATS_2023, BRATS_2018)
"""Every convention a BraTS-layout reader accepts, the default (used for new files) first."""


def naming_of_segmentation(file_name: str) -> Naming:
    """The convention a label file's name says (``_seg`` = 2018 labels, anything else 2023 labels)."""
    return BRATS_2018 if file_name.endswith(BRATS_2018.separator + SEGMENTATION + ".nii.gz") else BRATS_2023
