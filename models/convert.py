"""Convert a published BraSyn 2025 HF-GAN generator (`model.safetensors`) into our checkpoint format.

Handles the grouped and the separate modality-encoder variants, with and without the view infuser.
Usage: python -m models.convert PUBLISHED.safetensors OUT_DIR [--heads 16] [--views axial,sagittal]
"""
from __future__ import annotations

import argparse
import hashlib
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from conventions.tasks import BRASYN, VIEWS
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.generator import GeneratorConfig, HFGANGenerator

# Renames inside one published encoder (keys relative to the encoder).
_ENCODER_RULES = [
    (r"^conv_initial\.", "stem."),
    (r"^downs\.(\d+)\.0\.", r"stages.\1.res."),
    (r"^downs\.(\d+)\.1\.", r"stages.\1.down."),
]
# Renames of everything else: (published pattern, our name, order within a concatenation along dim 0).
_RULES = [
    (r"^encoder\.conv1\.", "fuse.", 0),
    (r"^middle\.modality_embedding\.1\.", "infuser.target_embed.fc1.", 0),
    (r"^middle\.modality_embedding\.3\.", "infuser.target_embed.fc2.", 0),
    (r"^middle\.view_embedding\.1\.", "infuser.view_embed.fc1.", 0),
    (r"^middle\.view_embedding\.3\.", "infuser.view_embed.fc2.", 0),
    (r"^middle\.embedding\.position_embeddings$", "infuser.pos_embed", 0),
    (r"^middle\.embedding\.patch_embeddings\.", "infuser.patch_embed.", 0),
    (r"^middle\.encoder_norm\.", "infuser.norm.", 0),
    # custom attention layers (models without the view infuser)
    (r"^middle\.layers\.(\d+)\.attention_norm\.", r"infuser.layers.\1.norm1.", 0),
    (r"^middle\.layers\.(\d+)\.ffn_norm\.", r"infuser.layers.\1.norm2.", 0),
    (r"^middle\.layers\.(\d+)\.ffn\.fc([12])\.", r"infuser.layers.\1.mlp.fc\2.", 0),
    (r"^middle\.layers\.(\d+)\.attn\.query\.", r"infuser.layers.\1.attn.qkv.", 0),
    (r"^middle\.layers\.(\d+)\.attn\.key\.", r"infuser.layers.\1.attn.qkv.", 1),
    (r"^middle\.layers\.(\d+)\.attn\.value\.", r"infuser.layers.\1.attn.qkv.", 2),
    (r"^middle\.layers\.(\d+)\.attn\.out\.", r"infuser.layers.\1.attn.proj.", 0),
    # torch MultiheadAttention layers (models with the view infuser)
    (r"^middle\.transformer\.(\d+)\.norm([12])\.", r"infuser.layers.\1.norm\2.", 0),
    (r"^middle\.transformer\.(\d+)\.mha\.in_proj_(weight|bias)$", r"infuser.layers.\1.attn.qkv.\2", 0),
    (r"^middle\.transformer\.(\d+)\.mha\.out_proj\.", r"infuser.layers.\1.attn.proj.", 0),
    (r"^middle\.transformer\.(\d+)\.ffn\.0\.", r"infuser.layers.\1.mlp.fc1.", 0),
    (r"^middle\.transformer\.(\d+)\.ffn\.2\.", r"infuser.layers.\1.mlp.fc2.", 0),
    (r"^decoder\.ups\.(\d+)\.0\.", r"decoder.ups.\1.res.", 0),
    (r"^decoder\.ups\.(\d+)\.1\.", r"decoder.ups.\1.up.", 0),
    (r"^decoder\.conv_final\.0\.", "decoder.final_block.", 0),
    (r"^decoder\.conv_final\.1\.", "decoder.final_norm.", 0),
    (r"^decoder\.conv_final\.3\.", "decoder.out_conv.", 0),
]


class ConversionError(ValueError):
    """The file is not a published HF-GAN generator this converter understands."""


def _encoder_key(rest: str) -> str:
    for pattern, repl in _ENCODER_RULES:
        new, n = re.subn(pattern, repl, rest)
        if n:
            return new
    raise ConversionError(f"unexpected encoder parameter {rest!r}")


def _target(key: str, num_modalities: int) -> tuple[str, int]:
    """Our parameter name for a published one, and its position when several are concatenated."""
    if m := re.match(r"^encoder\.encoder_early\.(.+)$", key):
        return "early." + _encoder_key(m.group(1)), 0
    if m := re.match(r"^encoder\.encoder_middles\.(\d+)\.(.+)$", key):  # separate encoders -> one grouped
        return "specific." + _encoder_key(m.group(2)), int(m.group(1))
    if m := re.match(r"^encoder\.encoder_middles\.(.+)$", key):
        return "specific." + _encoder_key(m.group(1)), 0
    if m := re.match(r"^encoder\.attn_blocks\.(\d+)\.attn\.([13])\.(weight|bias)$", key):
        index, fc = int(m.group(1)), "fc1" if m.group(2) == "1" else "fc2"
        if index == num_modalities:
            return f"early_gate.{fc}.{m.group(3)}", 0
        return f"specific_gate.{fc}.{m.group(3)}", index
    for pattern, repl, order in _RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new, order
    raise ConversionError(f"unexpected parameter {key!r}")


def infer_config(state: dict[str, torch.Tensor], num_heads: int = 16) -> GeneratorConfig:
    """Architecture sizes read off the published tensor shapes (heads cannot be read off: pass them)."""
    try:
        stem = state["encoder.encoder_early.conv_initial.weight"]
    except KeyError:
        raise ConversionError("no 'encoder.encoder_early.conv_initial.weight': not an HF-GAN generator") from None
    dim, num_modalities = stem.shape[0], stem.shape[1]
    stages = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.encoder_early\.downs\.(\d+)\.0\.block1\.conv\.weight$", k))})
    dim_mults = tuple(state[f"encoder.encoder_early.downs.{s}.0.block1.conv.weight"].shape[0] // dim for s in stages)
    layers = {int(m.group(2)) for k in state if (m := re.match(r"^middle\.(layers|transformer)\.(\d+)\.", k))}
    n_tokens = state["middle.embedding.position_embeddings"].shape[1]
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise ConversionError(f"{n_tokens} position embeddings do not form a square grid")
    hidden = dim * dim_mults[-1]
    mlp = state.get("middle.layers.0.ffn.fc1.weight", state.get("middle.transformer.0.ffn.0.weight"))
    return GeneratorConfig(
        num_modalities=num_modalities, dim=dim, dim_mults=dim_mults, n_layers=len(layers), num_heads=num_heads,
        mlp_ratio=mlp.shape[0] // hidden,
        mlp_activation="gelu" if any(k.startswith("middle.transformer.") for k in state) else "silu",
        image_size=side * 2 ** (len(dim_mults) - 1),
        num_views=len(VIEWS) if "middle.view_embedding.1.weight" in state else 0,
        second_block=any(".block2." in k for k in state),
        fusion_gate="first_channel",
    )


def convert_state_dict(published: dict[str, torch.Tensor], num_heads: int = 16) -> tuple[GeneratorConfig, dict[str, torch.Tensor]]:
    """Map a published state dict onto our generator: returns its config and a strict-loadable state dict."""
    published = {k.removeprefix("module."): v for k, v in published.items()}
    config = infer_config(published, num_heads)
    parts: dict[str, dict[int, torch.Tensor]] = defaultdict(dict)
    for key, tensor in published.items():
        name, order = _target(key, config.num_modalities)
        if order in parts[name]:
            raise ConversionError(f"two published parameters map onto {name!r}")
        parts[name][order] = tensor
    state = {name: torch.cat([p[i] for i in sorted(p)], dim=0) if len(p) > 1 else p[0] for name, p in parts.items()}
    expected = HFGANGenerator(config).state_dict()
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    if missing or extra:
        raise ConversionError(f"converted names do not match: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ConversionError(f"{name}: converted shape {tuple(tensor.shape)} != expected {tuple(expected[name].shape)}")
    return config, state


def convert_file(source: str | Path, output: str | Path, num_heads: int = 16, views: tuple[str, ...] = ("axial",)) -> Path:
    """Convert a published `model.safetensors` into a checkpoint folder for the BraSyn task."""
    source = Path(source)
    config, state = convert_state_dict(load_file(str(source)), num_heads)
    model = HFGANGenerator(config)
    model.load_state_dict(state, strict=True)
    meta = CheckpointMeta(
        kind="generator", task=BRASYN.name, modalities=BRASYN.modalities, normalization=dict(BRASYN.normalization),
        views=views,
        provenance={"converted_from": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
                    "origin": "published BraSyn 2025 HF-GAN generator (No More Slice Wars)"},
    )
    return save_checkpoint(model, output, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="published model.safetensors")
    parser.add_argument("output", type=Path, help="checkpoint folder to write")
    parser.add_argument("--heads", type=int, default=16, help="attention heads of the published model (default 16)")
    parser.add_argument("--views", default="axial", help=f"comma-separated views it was trained on, from {', '.join(VIEWS)}")
    args = parser.parse_args(argv)
    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    if unknown := [v for v in views if v not in VIEWS]:
        parser.error(f"unknown view(s): {', '.join(unknown)}")
    try:
        out = convert_file(args.source, args.output, args.heads, views)
    except (ConversionError, OSError) as err:
        print(f"error: {args.source}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
