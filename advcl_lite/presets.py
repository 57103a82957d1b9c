"""Named presets: one dataclass shared by notebooks, the CLI and the tests.

``smoke`` proves the code runs (CI, seconds per stage); ``quick`` is a laptop
CPU run of minutes on real images; ``benchmark`` is the ~1 hour CPU run the
results report uses; ``paper`` is the original's full-scale setting for a GPU.
Every preset keeps the original codes' method settings (attack, loss, optimiser,
pseudo-labels); they differ in scale only (images, width, epochs, batch, with the
learning rates scaled linearly with the batch). A smoke or quick run does **not**
show the paper's numbers; see BENCHMARKS.md.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    # data
    data: str = "sample"              # "sample", "cifar10", "cifar100", "stl10", or an ImageFolder/zip path
    train_subset: int | None = None   # images of the training split used for pretraining (None: all)
    # encoder
    base_width: int = 16              # ResNet-18 base width (64 in the paper)
    # pretraining optimisation. AdvCL (pretraining_advCL.py): SGD, lr 0.5 at batch 512, cosine set once
    # per epoch, warm-up 10 of 1000 epochs. SimCLR and ACL (ACL's train_simCLR.py trains both): LARS.
    # Learning rates of the CPU presets scale linearly with the batch (lr 0.5 * B / 512).
    batch_size: int = 256
    epochs: int = 10
    lr: float = 0.25                  # AdvCL's SGD
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.1        # the original's 10 of 1000 epochs, scaled to the run (1 %)
    advcl_lr_per_epoch: bool = True   # AdvCL's cosine set once per epoch as the original (False: every step;
                                      # the CPU presets, whose last of 4-5 epochs would otherwise run at lr * 1e-3)
    temperature: float = 0.5
    base_temperature: float = 0.07    # AdvCL's L_CL is multiplied by temperature / base_temperature (7.14)
    acl_optimizer: str = "lars"       # SimCLR and ACL: "lars" as ACL's code, or "sgd" (AdvCL's SGD settings)
    acl_lr: float = 2.5               # LARS lr (5.0 at batch 512 in ACL's code)
    acl_weight_decay: float = 1e-6
    lars_eta: float = 1e-3            # LARS trust coefficient
    acl_head: str = "acl"             # SimCLR/ACL projection head: "acl" (3 layers, BN per route) or "advcl"
    # pretraining attack (pretraining_advCL.py: AttackPGD)
    eps: float = 8 / 255
    alpha: float = 2 / 255
    pgd_steps: int = 5
    attack_mode: str = "train"        # AdvCL's attack: "train" as the original, or "eval" (ACL always attacks in eval)
    # AdvCL views and pseudo-labels (pretraining_advCL.py)
    hfc_radius: float = 8.0
    pseudo_ks: tuple[int, ...] = (2, 10, 50, 100, 500)   # K > N/2 is dropped for small training sets
    pseudo_lambda: float = 0.2
    # DynACL (Luo et al., ICLR 2023; PKU-ML/DYNACL train_DynACL.py) and AIR (Xu et al., NeurIPS 2023;
    # Enhancing_ACL_via_AIR AIR.py): see advcl_lite.methods.DynACL
    dynacl_stages: int = 20           # augmentation-strength stages per run: the original re-sets it every 50 of 1000 epochs
    dynacl_swap: float = 2 / 3        # how far the loss weight moves from the clean to the adversarial term
    dynacl_momentum: float = 0.99     # DynACL's momentum encoder for the second view (0: one network, as AIR's DynACL);
                                      # off at the CPU presets: README's differences table
    air: bool = False                 # AIR's two regularisers on ACL / DynACL (the loss then sums, as AIR's code)
    air_lambda1: float = 0.5          # AIR's standard-invariance (SIR) term
    air_lambda2: float = 0.5          # AIR's adversarial-invariance term
    # finetuning (the paper's SLF / ALF / AFF)
    ft_epochs: int = 10
    ft_lr: float = 0.01               # SLF / ALF
    aff_lr: float = 0.1               # AFF (TRADES)
    ft_batch_size: int = 512
    aff_batch_size: int = 128
    ft_pgd_steps: int = 10
    trades_beta: float = 6.0
    val_fraction: float = 0.1         # held out from the training split for model selection
    ft_subset: int | None = None      # training images used for finetuning (None: all)
    slf_cached_features: bool = False  # SLF on the frozen encoder's features of the un-augmented images, computed
                                       # once (a speed switch for paper-width encoders on a CPU; the original
                                       # augments with crop+flip: README's differences table)
    # evaluation
    eval_n: int = 1000                # test images for SA and PGD-20 RA
    eval_pgd_steps: int = 20
    aa_n: int = 0                     # test images for AutoAttack (0: skip)
    # what the notebooks analyse at this preset (each is a test-image count or a step count; README's cost table)
    shows_results: bool = True        # False: the preset only proves that the code runs (smoke), and says so
    nb_schemes: tuple[str, ...] = ("slf",)   # notebook 04's finetuning schemes
    nb_curve_n: int = 200             # notebook 04: test images of the accuracy-vs-eps curves (at most eval_n)
    nb_transfer_n: int | None = None  # notebook 04: test images of the animal/vehicle task (None: eval_n)
    spectra_n: int = 256              # notebook 05: PGD perturbations whose spectra are drawn
    spectra_steps: int = 10           #   and their PGD steps
    heat_n: int = 32                  # notebook 05: images of the Fourier heat map
    heat_stride: int = 2              #   every heat_stride-th frequency
    band_n: int = 100                 # notebook 05: images of the band-limited attacks
    band_eps: tuple[int, ...] = (4, 8)   #   their eps, in /255
    band_steps: int = 5               #   their PGD steps
    explore_n: int = 16               # notebook 05: images of the frequency explorer
    explore_steps: int = 5            #   its PGD steps
    # execution
    amp: str = "none"                 # "none" (fp32, as the originals), "bf16" or "fp16": a speed switch (README)
    channels_last: bool = True
    ckpt_every: int = 1
    seed: int = 0

    def replace(self, **overrides: Any) -> "Preset":
        return apply_overrides(self, overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="CI: proves every stage runs in seconds on the embedded sample; shows nothing about AdvCL.",
        train_subset=256, base_width=8, batch_size=64, epochs=1, lr=0.0625, acl_lr=0.625, warmup_epochs=0.0, advcl_lr_per_epoch=False,
        ft_epochs=1, ft_batch_size=128, aff_batch_size=64, ft_subset=256, eval_n=64, aa_n=8,
        shows_results=False, nb_schemes=("slf", "alf", "aff"), nb_curve_n=16, spectra_n=32, spectra_steps=2, heat_n=8,
        heat_stride=8, band_n=32, band_eps=(8,), band_steps=2, explore_n=8, explore_steps=2, dynacl_momentum=0.0,
    ),
    "quick": Preset(
        name="quick",
        description="Laptop CPU, minutes: the shipped encoders in notebooks 03-05; notebook 02 pretrains a "
                    "width-16 encoder on 1,000 images for 2 epochs (see BENCHMARKS.md).",
        train_subset=1000, base_width=16, batch_size=128, epochs=2, lr=0.125, acl_lr=1.25, warmup_epochs=0.02,
        advcl_lr_per_epoch=False,
        ft_epochs=5, ft_lr=0.1, ft_batch_size=128, ft_subset=5000, eval_n=1000, aa_n=0,
        nb_curve_n=100, nb_transfer_n=300,     # cut to fit the quick tour in about 10 minutes (BENCHMARKS.md)
        dynacl_momentum=0.0,
    ),
    "benchmark": Preset(
        name="benchmark",
        description="5,000 CIFAR-10 images, 5 epochs: the results report of BENCHMARKS.md (about 2 hours on 2 CPU cores).",
        data="cifar10", train_subset=5000, base_width=16, batch_size=256, epochs=5, warmup_epochs=0.05, advcl_lr_per_epoch=False,
        ft_epochs=5, ft_lr=0.1, ft_batch_size=128, ft_subset=5000, eval_n=2000, aa_n=0,
        nb_schemes=("slf", "alf"), spectra_n=1000, heat_n=100, heat_stride=1, band_n=250, band_eps=(2, 4, 8),
        band_steps=10, explore_n=32, explore_steps=10,
        # a copy following at 0.99 per step keeps 0.99^95 = 38 % of its random start after this preset's 95 steps
        dynacl_momentum=0.0,
    ),
    "paper": Preset(
        name="paper",
        description="The original's full-scale setting for a GPU: ResNet-18, batch 512, 1000 epochs, PGD-5.",
        data="cifar10", train_subset=None, base_width=64, batch_size=512, epochs=1000, lr=0.5, acl_lr=5.0,
        warmup_epochs=10.0, ft_epochs=25, ft_lr=0.01, aff_lr=0.1, ft_batch_size=512, aff_batch_size=128,
        eval_n=10000, aa_n=10000, channels_last=True, ckpt_every=10,
        nb_schemes=("slf", "alf", "aff"), spectra_n=1000, spectra_steps=20, heat_n=1000, heat_stride=1, band_n=1000,
        band_eps=(1, 2, 4, 8, 16), band_steps=20, explore_n=64, explore_steps=10,
    ),
}


# the fields that say what the notebooks analyse: they change no trained weights (not part of any run's config)
NOTEBOOK_FIELDS = ("shows_results", "nb_schemes", "nb_curve_n", "nb_transfer_n", "spectra_n", "spectra_steps", "heat_n",
                   "heat_stride", "band_n", "band_eps", "band_steps", "explore_n", "explore_steps")

# the presets made for a GPU: a notebook on a CPU says how to get one (runtime.describe_device)
GPU_PRESETS = ("paper",)


def check_count(name: str, value: Any, minimum: int = 1, allow_none: bool = True) -> int | None:
    """``value`` as a whole number >= ``minimum`` (``None`` passes when ``allow_none``), else a one-line
    ValueError naming ``name``. Counts enter the library here: a negative one would otherwise act as a
    Python slice (``x[:-5]``) and silently drop images."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < minimum:
        what = "a whole number" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def get_preset(name: str | Preset = "smoke", **overrides: Any) -> Preset:
    """Return the preset called ``name`` (or the :class:`Preset` itself) with ``overrides`` applied, validated.

    >>> get_preset("smoke", epochs=2).epochs
    2
    """
    if isinstance(name, Preset):
        base = name
    else:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        base = PRESETS[name]
    return apply_overrides(base, overrides)


def as_preset(preset: "str | Preset", overrides: dict[str, Any] | None = None) -> Preset:
    """The preset a library function was given: a :class:`Preset` as it is, a name (or a Preset with
    ``overrides``) through :func:`get_preset` and its checks."""
    return preset if isinstance(preset, Preset) and not overrides else get_preset(preset, **(overrides or {}))


_CHOICES = {"attack_mode": ("train", "eval"), "amp": ("none", "bf16", "fp16"), "acl_optimizer": ("lars", "sgd"),
            "acl_head": ("acl", "advcl")}


def apply_overrides(base: Preset, overrides: dict[str, Any]) -> Preset:
    known = {f.name: f for f in fields(Preset)}
    clean: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(
                f"unknown preset field {key!r}; valid fields: {', '.join(sorted(known))}")
        clean[key] = _coerce(key, value, getattr(base, key))
    p = replace(base, **clean)
    _validate(p)
    return p


def _coerce(key: str, value: Any, current: Any) -> Any:
    if value is None:
        return None
    if key in ("train_subset", "ft_subset", "nb_transfer_n") and isinstance(value, str) \
            and value.strip().lower() in ("none", "all"):
        return None  # --set train_subset=all: every image of the split
    try:
        if isinstance(current, tuple):          # pseudo_ks, band_eps: numbers; nb_schemes: names
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return tuple(str(v).lower() for v in value) if key == "nb_schemes" else tuple(int(v) for v in value)
        if isinstance(current, bool) or key == "channels_last":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if key in ("train_subset", "ft_subset", "nb_transfer_n") or isinstance(current, int) and not isinstance(current, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(current, float):
            return float(value)
        return value
    except (TypeError, ValueError):
        raise ValueError(f"preset field {key!r} cannot take {value!r} (expected a value like {current!r})") from None


MAX_SEED = 2**63 - 1   # what every random generator the library seeds (torch, NumPy, Python) accepts


def _validate(p: Preset) -> None:
    for f in fields(Preset):        # every number enters here: nan and inf pass every comparison below
        v = getattr(p, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"preset field {f.name!r} must be a finite number, not {v!r}")
    if not 0 <= p.seed <= MAX_SEED:
        raise ValueError(f"preset field 'seed' must be a whole number in [0, 2**63 - 1], not {p.seed}")
    for key, allowed in _CHOICES.items():
        if getattr(p, key) not in allowed:
            raise ValueError(f"preset field {key!r} must be one of {allowed}, not {getattr(p, key)!r}")
    if not 0.0 <= p.eps <= 1.0:
        raise ValueError(f"eps={p.eps} is outside [0, 1]; images are in [0, 1], so use e.g. 8/255 = {8/255:.4f}")
    if not 0.0 <= p.alpha <= 1.0:
        raise ValueError(f"alpha={p.alpha} is outside [0, 1]; use e.g. 2/255")
    for key in ("batch_size", "epochs", "base_width", "ft_batch_size", "aff_batch_size", "eval_n", "ckpt_every"):
        if getattr(p, key) < 1:
            raise ValueError(f"preset field {key!r} must be >= 1, not {getattr(p, key)}")
    if p.batch_size < 2:
        raise ValueError(f"preset field 'batch_size' must be >= 2, not {p.batch_size}: a contrastive loss contrasts "
                         f"each image with the others of its batch")
    for key in ("train_subset", "ft_subset"):
        if getattr(p, key) is not None and getattr(p, key) < 1:
            raise ValueError(f"preset field {key!r} must be >= 1 (or 'all'), not {getattr(p, key)}: "
                             f"it is a number of images")
    if not p.temperature > 0:
        raise ValueError(f"temperature={p.temperature} must be > 0")
    for key in ("pgd_steps", "ft_pgd_steps", "eval_pgd_steps", "ft_epochs", "aa_n", "warmup_epochs",
                "lr", "acl_lr", "weight_decay", "acl_weight_decay", "lars_eta"):
        if getattr(p, key) < 0:
            raise ValueError(f"preset field {key!r} must be >= 0, not {getattr(p, key)}")
    if not 0.0 < p.val_fraction < 1.0:
        raise ValueError(f"val_fraction={p.val_fraction} must be in (0, 1)")
    if not p.base_temperature > 0:
        raise ValueError(f"base_temperature={p.base_temperature} must be > 0 (set it to temperature={p.temperature} "
                         f"for an unscaled contrastive loss)")
    if p.warmup_epochs > p.epochs:
        raise ValueError(f"warmup_epochs={p.warmup_epochs} is longer than the run (epochs={p.epochs})")
    if p.hfc_radius < 0:
        raise ValueError(f"hfc_radius={p.hfc_radius} must be >= 0")
    if p.dynacl_stages < 1:
        raise ValueError(f"preset field 'dynacl_stages' must be >= 1, not {p.dynacl_stages}")
    if not 0.0 <= p.dynacl_momentum < 1.0:
        raise ValueError(f"preset field 'dynacl_momentum' must be in [0, 1), not {p.dynacl_momentum} "
                         f"(0.99 as DynACL's code; 0 for no momentum encoder)")
    for key in ("dynacl_swap", "air_lambda1", "air_lambda2"):
        if getattr(p, key) < 0:
            raise ValueError(f"preset field {key!r} must be >= 0, not {getattr(p, key)}")
    bad = [s for s in p.nb_schemes if s not in ("slf", "alf", "aff")]
    if bad or not p.nb_schemes:
        raise ValueError(f"preset field 'nb_schemes' takes finetuning schemes from slf, alf, aff, not {list(p.nb_schemes)}")
    for key in ("nb_curve_n", "spectra_n", "spectra_steps", "heat_n", "heat_stride", "band_n", "band_steps",
                "explore_n", "explore_steps"):
        if getattr(p, key) < 1:
            raise ValueError(f"preset field {key!r} must be >= 1, not {getattr(p, key)}")
    if p.nb_transfer_n is not None and p.nb_transfer_n < 1:
        raise ValueError(f"preset field 'nb_transfer_n' must be >= 1 (or None: eval_n), not {p.nb_transfer_n}")
    if not p.band_eps or any(not 0 < e <= 255 for e in p.band_eps):
        raise ValueError(f"preset field 'band_eps' takes radii in /255 between 1 and 255, not {list(p.band_eps)}")
    if any(k < 2 for k in p.pseudo_ks):
        raise ValueError(f"every pseudo-label K must be >= 2, got {p.pseudo_ks}")
