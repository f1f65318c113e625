"""The registry of model families: the one place that says what a family is made of.

A family names its networks (checkpoint kind -> network class and architecture dataclass; the first is the
network inference runs, a GAN family's second is its discriminator), the config schema its training reads, its
trainer and its inference predictor. Trainers and predictors live in `train/` and `infer/`, which sit above
this package, so the registry names them ("package.module:attribute", as nnU-Net names trainer classes) and
`resolve` imports them when they are used. A checkpoint's `config.json` names its family; `python -m train fit`
and `python -m infer` look the family up here and nowhere else.

Adding a family: its network module(s) in `models/`, its trainer in `train/families/`, its predictor in
`infer/engine/` when no existing one fits, and one `Family` entry below (README: "Adding a model family").
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from models.attention_unet import AttentionPix2PixDiscriminator, AttentionPix2PixGenerator, AttentionUNetConfig
from models.cut import CUTDiscriminator, CUTGenerator, HeadsConfig, PatchNCEHeads
from models.cyclegan import (BackwardConfig, CycleGANBackward, CycleGANBackwardDiscriminator, CycleGANDiscriminator,
                             CycleGANGenerator, ResnetConfig)
from models.cyclegan import PatchGANConfig as MultiScalePatchGANConfig  # not TISS-Net's PatchGANConfig
from models.discriminator import DiscriminatorConfig, PatchDiscriminator
from models.generator import GeneratorConfig, HFGANGenerator
from models.generator3d import Generator3D, Generator3DConfig
from models.ldm import (AutoencoderConfig, AutoencoderDiscriminator, AutoencoderDiscriminatorConfig, DenoiserConfig,
                        KLAutoencoder, LatentDenoiser)
from models.refiner import Refiner3D, RefinerConfig
from models.resvit import ResViTConfig, ResViTDiscriminator, ResViTGenerator
from models.segmenter import SegmenterConfig, SliceSegmenter
from models.segmenter3d import Segmenter3D, Segmenter3DConfig
from models.swin_pix2pix import SwinPix2PixConfig, SwinPix2PixDiscriminator, SwinPix2PixGenerator
from models.syndiff import SynDiffConfig, SynDiffDiscriminator, SynDiffGenerator, TimeDiscriminatorConfig
from models.tissnet import (PatchGANConfig, PerceptualConfig, PerceptualSegmenter, TissNet, TissNetConfig,
                            TissNetDiscriminators)
from models.unet import MultiScaleConfig, MultiScaleDiscriminator, Pix2PixUNet, UNetConfig

Network = tuple[type[nn.Module], type]
"""A network class and the dataclass of its architecture sizes (`cls(config_cls(**arch))` builds it)."""


@dataclass(frozen=True)
class Family:
    """A model family.

    networks: checkpoint kind -> network; the first is the one inference runs. schema: the training config
    dataclass ("module:Class"). trainer: "module:function" called as f(cfg, resume=..., stop_after=...,
    export=...) with only the options it declares, returning the run folder. predictor: "module:function"
    called as f(weights, task, options) returning the engine-facing predictor, or None for a family that only
    serves another (a refiner, the loss's slice segmenter).
    """

    name: str
    description: str
    networks: Mapping[str, Network]
    schema: str
    trainer: str
    predictor: str | None = None


FAMILIES: dict[str, Family] = {}
"""Every registered family by name."""

NETWORKS: dict[str, Network] = {}
"""Every checkpoint kind (network) of every family."""

FAMILY_OF_KIND: dict[str, str] = {}
"""The family each checkpoint kind belongs to (checkpoints written before families were recorded name only
their kind)."""


def register(family: Family) -> Family:
    """Add `family` to the registry (a plug-in calls this too); ValueError when its name or one of its network
    kinds is taken."""
    taken = [kind for kind in family.networks if kind in NETWORKS]
    if family.name in FAMILIES or taken or not family.networks:
        raise ValueError(f"cannot register family {family.name!r}: name or network kinds "
                         f"({', '.join(taken) or 'none given'}) already taken or empty")
    FAMILIES[family.name] = family
    for kind, network in family.networks.items():
        NETWORKS[kind] = network
        FAMILY_OF_KIND[kind] = family.name
    return family


def unregister(name: str) -> None:
    """Remove family `name` and its network kinds from the registry."""
    for kind in FAMILIES.pop(name).networks:
        del NETWORKS[kind], FAMILY_OF_KIND[kind]


BUILT_IN: tuple[Family, ...] = (
    Family("hfgan", "HF-GAN slice generator (2D or 2.5D) with a PatchGAN discriminator and modality head",
           {"generator": (HFGANGenerator, GeneratorConfig), "discriminator": (PatchDiscriminator, DiscriminatorConfig)},
           schema="train.config:Config", trainer="train.loop:fit", predictor="infer.predictors:slice_predictor"),
    Family("pix2pix", "Pix2Pix U-Net slice generator with a multi-scale PatchGAN on (inputs, output) pairs",
           {"unet": (Pix2PixUNet, UNetConfig), "multiscale_discriminator": (MultiScaleDiscriminator, MultiScaleConfig)},
           schema="train.config:Config", trainer="train.loop:fit", predictor="infer.predictors:slice_predictor"),
    Family("refiner", "residual 3D refiner of a slice generator's stacked volume (run with --refine)",
           {"refiner": (Refiner3D, RefinerConfig)},
           schema="train.config:VolumeConfig", trainer="train.families.refiner:fit_refiner"),
    Family("full3d", "full-3D patch generator run by sliding windows",
           {"generator3d": (Generator3D, Generator3DConfig)},
           schema="train.config:VolumeConfig", trainer="train.families.generator3d:fit_generator3d",
           predictor="infer.predictors:patch_predictor"),
    Family("segmenter", "2D slice tumour segmenter for the focal Tversky loss",
           {"segmenter": (SliceSegmenter, SegmenterConfig)},
           schema="train.config:Config", trainer="train.families.segmenter:fit_segmenter"),
    Family("segmenter3d", "3D BraTS tumour segmenter (MONAI SegResNet) on a coarse grid",
           {"segmenter3d": (Segmenter3D, Segmenter3DConfig)},
           schema="train.config:VolumeConfig", trainer="train.families.segmenter3d:fit_segmenter3d",
           predictor="infer.predictors:segmentation_predictor"),
    Family("tissnet", "TISS-Net: 2.5D joint synthesis of one missing modality and whole-tumour segmentation",
           {"tissnet": (TissNet, TissNetConfig), "tissnet_discriminators": (TissNetDiscriminators, PatchGANConfig),
            "tissnet_perceptual": (PerceptualSegmenter, PerceptualConfig)},
           schema="train.families.tissnet:TissNetTrainingConfig", trainer="train.families.tissnet:fit_tissnet",
           predictor="infer.predictors:tissnet_predictor"),
    # Document 000's paired-translation families: 2D / 2.5D slices or full-3D patches (model.spatial_dims), the
    # 2D generator refined by the refiner family; one trainer driver (train.families.translation).
    Family("cyclegan", "CycleGAN: 9-block ResNet generators both ways, cycle, identity and paired terms (2D, 2.5D or 3D)",
           {"cyclegan_generator": (CycleGANGenerator, ResnetConfig),
            "cyclegan_discriminator": (CycleGANDiscriminator, MultiScalePatchGANConfig),
            "cyclegan_backward": (CycleGANBackward, BackwardConfig),
            "cyclegan_backward_discriminator": (CycleGANBackwardDiscriminator, MultiScalePatchGANConfig)},
           schema="train.families.translation:TranslationConfig", trainer="train.families.cyclegan:fit_cyclegan",
           predictor="infer.predictors:translation_predictor"),
    Family("cut", "CUT: ResNet generator with PatchNCE over four encoder layers plus the paired term (2D, 2.5D or 3D)",
           {"cut_generator": (CUTGenerator, ResnetConfig),
            "cut_discriminator": (CUTDiscriminator, MultiScalePatchGANConfig),
            "cut_heads": (PatchNCEHeads, HeadsConfig)},
           schema="train.families.translation:TranslationConfig", trainer="train.families.cut:fit_cut",
           predictor="infer.predictors:translation_predictor"),
    Family("attn_pix2pix", "Pix2Pix of document 000: attention residual U-Net, conditional two-scale PatchGAN, "
                           "LSGAN + feature matching + lazy R1 + paired terms (2D, 2.5D or 3D)",
           {"attn_pix2pix_generator": (AttentionPix2PixGenerator, AttentionUNetConfig),
            "attn_pix2pix_discriminator": (AttentionPix2PixDiscriminator, MultiScalePatchGANConfig)},
           schema="train.families.translation:TranslationConfig",
           trainer="train.families.conditional:fit_attention_pix2pix",
           predictor="infer.predictors:translation_predictor"),
    Family("swin_pix2pix", "SwinPix2Pix: the attention U-Net with a Swin-Transformer backbone after its stem "
                           "(2D, 2.5D or 3D)",
           {"swin_pix2pix_generator": (SwinPix2PixGenerator, SwinPix2PixConfig),
            "swin_pix2pix_discriminator": (SwinPix2PixDiscriminator, MultiScalePatchGANConfig)},
           schema="train.families.translation:TranslationConfig",
           trainer="train.families.conditional:fit_swin_pix2pix",
           predictor="infer.predictors:translation_predictor"),
    Family("resvit", "ResViT: residual CNN with aggregated residual transformer blocks in its bottleneck, "
                     "two-phase training (2D, 2.5D or 3D)",
           {"resvit_generator": (ResViTGenerator, ResViTConfig),
            "resvit_discriminator": (ResViTDiscriminator, MultiScalePatchGANConfig)},
           schema="train.families.conditional:ResViTTrainingConfig", trainer="train.families.conditional:fit_resvit",
           predictor="infer.predictors:translation_predictor"),
    Family("syndiff", "SynDiff: few-step adversarial diffusion, time-conditional generator and discriminator "
                      "(2D, 2.5D or 3D)",
           {"syndiff_generator": (SynDiffGenerator, SynDiffConfig),
            "syndiff_discriminator": (SynDiffDiscriminator, TimeDiscriminatorConfig)},
           schema="train.families.translation:TranslationConfig", trainer="train.families.syndiff:fit_syndiff",
           predictor="infer.predictors:translation_predictor"),
    Family("ldm", "mask-guided latent diffusion (document 001): KL autoencoders, the mask and mask-conditioned "
                  "image LDMs and the one-step joint LDM; sampled by python -m infer.augment",
           {"ldm_denoiser": (LatentDenoiser, DenoiserConfig), "ldm_autoencoder": (KLAutoencoder, AutoencoderConfig),
            "ldm_discriminator": (AutoencoderDiscriminator, AutoencoderDiscriminatorConfig)},
           schema="train.families.ldm:LDMTrainingConfig", trainer="train.families.ldm:fit_ldm"),
)
"""The families of this repository, registered on import."""

for _built_in in BUILT_IN:
    register(_built_in)


def get_family(name: str) -> Family:
    """The registered family `name`; ValueError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def resolve(reference: str) -> Any:
    """The object a "package.module:attribute" reference names (imported on first use)."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)
