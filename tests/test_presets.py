"""Presets: the four named settings, overrides from Python and from CLI strings, validation."""
from __future__ import annotations

import dataclasses
import json

import pytest

from advcl_lite.presets import PRESETS, Preset, get_preset


def test_the_four_presets_exist_and_are_valid():
    assert list(PRESETS) == ["smoke", "quick", "benchmark", "paper"]
    for name, p in PRESETS.items():
        assert p.name == name and p.description
        assert get_preset(name) == p
        json.dumps(p.to_dict())                       # JSON-able, e.g. for checkpoint metadata
    smoke, quick = PRESETS["smoke"], PRESETS["quick"]
    assert smoke.epochs <= quick.epochs and smoke.base_width <= quick.base_width and smoke.eval_n <= quick.eval_n


def test_paper_preset_matches_the_original():
    p = PRESETS["paper"]
    assert (p.base_width, p.batch_size, p.epochs, p.lr, p.momentum, p.weight_decay, p.warmup_epochs) == \
        (64, 512, 1000, 0.5, 0.9, 1e-4, 10)
    assert (p.eps, p.alpha, p.pgd_steps, p.attack_mode) == (8 / 255, 2 / 255, 5, "train")
    assert (p.temperature, p.pseudo_lambda, p.hfc_radius, p.pseudo_ks) == (0.5, 0.2, 8.0, (2, 10, 50, 100, 500))
    assert (p.ft_epochs, p.ft_lr, p.aff_lr, p.ft_batch_size, p.aff_batch_size, p.ft_pgd_steps, p.trades_beta) == \
        (25, 0.01, 0.1, 512, 128, 10, 6.0)
    assert (p.eval_pgd_steps, p.eval_n, p.aa_n) == (20, 10000, 10000)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose one of: smoke, quick, benchmark, paper"):
        get_preset("fast")


def test_unknown_field_lists_valid_fields():
    with pytest.raises(ValueError, match=r"unknown preset field 'epoch'; valid fields: .*epochs"):
        get_preset("smoke", epoch=3)


def test_overrides_from_python_and_from_cli_strings():
    p = get_preset("smoke", epochs=3, lr=0.2)
    assert p.epochs == 3 and p.lr == 0.2 and p.name == "smoke"
    assert PRESETS["smoke"].epochs == 1, "overrides never change the stored preset"
    s = get_preset("quick", epochs="4", eps="0.03", channels_last="false", pseudo_ks="2, 10", train_subset="500",
                   attack_mode="train", amp="bf16")
    assert (s.epochs, s.eps, s.channels_last, s.pseudo_ks, s.train_subset, s.attack_mode, s.amp) == \
        (4, 0.03, False, (2, 10), 500, "train", "bf16")
    assert isinstance(s.epochs, int) and isinstance(s.eps, float)
    assert get_preset("quick", train_subset=None).train_subset is None
    assert get_preset("quick", train_subset="all").train_subset is None  # as --set train_subset=all
    assert get_preset("quick", ft_subset="None").ft_subset is None
    assert get_preset(p, seed=5).seed == 5 and get_preset(p) == p
    assert p.replace(epochs=2).epochs == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 9


@pytest.mark.parametrize("field,value,match", [
    ("epochs", "abc", r"'epochs' cannot take 'abc'"),
    ("epochs", 2.5, r"'epochs' cannot take 2.5"),
    ("lr", "fast", r"'lr' cannot take 'fast'"),
    ("channels_last", "maybe", r"'channels_last' cannot take 'maybe'"),
    ("pseudo_ks", "2,x", r"'pseudo_ks' cannot take"),
    ("attack_mode", "test", r"'attack_mode' must be one of \('train', 'eval'\)"),
    ("amp", "fp8", r"'amp' must be one of"),
    ("batch_size", 0, r"'batch_size' must be >= 1"),
    ("pgd_steps", -1, r"'pgd_steps' must be >= 0"),
    ("val_fraction", 1.0, r"val_fraction=1.0 must be in \(0, 1\)"),
    ("hfc_radius", -8, r"hfc_radius=-8.0 must be >= 0"),
    ("pseudo_ks", (1, 10), r"pseudo-label K must be >= 2"),
])
def test_bad_values_are_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        get_preset("smoke", **{field: value})


@pytest.mark.parametrize("eps", [8, -0.1, 1.5, "8"])
def test_eps_outside_unit_interval_says_to_use_8_over_255(eps):
    with pytest.raises(ValueError, match=r"eps=.* is outside \[0, 1\].*8/255 = 0.0314"):
        get_preset("quick", eps=eps)
    with pytest.raises(ValueError, match=r"alpha=2.0 is outside \[0, 1\]"):
        get_preset("quick", alpha=2)


def test_preset_is_a_plain_dataclass():
    names = {f.name for f in dataclasses.fields(Preset)}
    assert {"eps", "alpha", "pgd_steps", "hfc_radius", "pseudo_lambda", "temperature"} <= names
    assert set(PRESETS["smoke"].to_dict()) == names
