"""The OHEM cost benchmark's variants and selection agreement (speed itself is measured, not tested)."""

import argparse

import torch

from benchmarks.common import make_batches
from benchmarks.ohem_cost import build, selection_agreement, variant_config


def _args(synth_dir, score_pass: str) -> argparse.Namespace:
    overrides = [
        "model.backbone=tiny",
        "model.min_size=[64]",
        "model.max_size=64",
        f"data.train={synth_dir / 'train.json'}",
        f"data.val={synth_dir / 'val.json'}",
    ]
    return argparse.Namespace(
        batch_per_image=8, overrides=overrides, score_pass=score_pass, weights=None, pooler="hardmine"
    )


def test_the_cheap_variant_is_ohem_with_its_scoring_pass(synth_dir):
    args = _args(synth_dir, "bf16_coarse")
    cheap = variant_config("ohem_cheap", 8, args.overrides, "bf16_coarse").roi_head.sampler
    exact = variant_config("ohem", 8, args.overrides, "bf16_coarse").roi_head.sampler
    assert (cheap.name, cheap.score_pass, cheap.mode) == ("ohem", "bf16_coarse", "two_pass")
    assert exact.score_pass == "exact" and cheap.batch_size_per_image == exact.batch_size_per_image == 8


def test_selection_agreement_is_one_with_itself_and_leaves_the_model_as_it_was(synth_dir):
    args = _args(synth_dir, "coarse")
    model, _ = build("ohem", args, torch.device("cpu"))
    batches = make_batches(variant_config("ohem", 8, args.overrides), 2, 2, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert selection_agreement(model, batches, "exact") == 1.0
    coarse = selection_agreement(model, batches, "coarse")
    assert 0.0 <= coarse <= 1.0
    sampler = model.heads["roi"].sampler
    assert sampler.score_pass == "exact" and "select" not in vars(sampler)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
