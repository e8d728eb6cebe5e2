"""Recipes: the optimisation settings a run leaves unset, the modality's augmentations under
``small``, recorded in config.json; explicit options win; bad values are one line."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from embedkit.augment import AUGMENT_PRESETS, AugmentConfig
from embedkit.configs import RECIPES, recipe_method_params
from embedkit.errors import ConfigError
from embedkit.pretrain import PretrainConfig, pretrain
from embedkit.pretrain.engine import lr_factor, make_scheduler


def test_unset_options_take_the_recipes_values_and_explicit_ones_win():
    paper, small = PretrainConfig(), PretrainConfig(recipe="small")
    assert (paper.lr, paper.batch_size, paper.warmup_fraction, paper.warmup_steps) == (
        3e-4,
        256,
        0.1,
        0,
    )
    assert (small.lr, small.batch_size, small.warmup_fraction, small.warmup_steps) == (
        1e-3,
        128,
        0.0,
        20,
    )
    mine = PretrainConfig(recipe="small", lr=3e-4, batch_size=64)
    assert (mine.lr, mine.batch_size, mine.warmup_steps) == (3e-4, 64, 20)
    # resolved values travel with the config (config.json replays the same run)
    assert replace(small, recipe="paper").lr == 1e-3


def test_small_picks_the_modalitys_augmentations_unless_told_otherwise():
    assert recipe_method_params("paper", "simclr", {}, 1) == {}
    assert recipe_method_params("small", "simclr", {}, 1) == {"augment": "grayscale-medical"}
    assert recipe_method_params("small", "dino", {}, 3) == {"augment": "color-medical"}
    vicreg = recipe_method_params("small", "vicreg", {"hidden_dim": 512}, 1)
    assert vicreg == {"augment": "grayscale-medical", "hidden_dim": 512, "projection_dim": 2048}
    assert recipe_method_params("small", "simclr", {"augment": "natural"}, 1)["augment"] == (
        "natural"
    )


def test_warmup_in_steps():
    scheduler = make_scheduler(_optimizer(), total=100, warmup_fraction=0.0, warmup_steps=20)
    factors = [lr_factor(step, 100, 20) for step in range(100)]
    assert factors[0] == pytest.approx(1 / 20) and factors[19] == 1.0 and factors[20] == 1.0
    assert factors[-1] < 0.01
    assert scheduler.lr_lambdas[0](0) == pytest.approx(1 / 20)
    # a fraction and steps add up, and never pass the run's length
    both = make_scheduler(_optimizer(), total=100, warmup_fraction=0.1, warmup_steps=5)
    assert both.lr_lambdas[0](14) == 1.0 and both.lr_lambdas[0](13) < 1.0
    assert make_scheduler(_optimizer(), 10, 0.0, 50).lr_lambdas[0](9) == 1.0


def _optimizer():
    import torch

    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def test_a_small_run_records_its_recipe(tmp_path, data_root):
    config = PretrainConfig(
        dataset="demo-texture",
        recipe="small",
        epochs=1,
        batch_size=200,
        device="cpu",
        data_root=str(data_root),
    )
    run = pretrain(config, tmp_path / "run", progress=False)
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["pretrain"]["recipe"] == "small"
    assert recorded["pretrain"]["lr"] == RECIPES["small"]["lr"]
    assert recorded["pretrain"]["warmup_steps"] == 20
    expected = AugmentConfig(**AUGMENT_PRESETS["color-medical"])  # demo-texture is RGB
    augment = recorded["method_config"]["augment"]
    assert augment["hue"] == expected.hue == 0.0 and augment["min_scale"] == expected.min_scale
    # the run replays from its config.json
    replay = recorded["pretrain"] | {"patch_size": 0, "loggers": ()}
    assert PretrainConfig(**replay) == config


def test_bad_recipe_options_are_one_line(tmp_path, data_root):
    base = dict(dataset="demo-texture", epochs=1, device="cpu", data_root=str(data_root))
    with pytest.raises(ConfigError, match="unknown recipe 'tiny': use paper, small"):
        pretrain(PretrainConfig(recipe="tiny", **base), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="--warmup-steps must be 0 or more"):
        pretrain(PretrainConfig(warmup_steps=-1, **base), tmp_path / "b", progress=False)
    assert list(tmp_path.iterdir()) == []
