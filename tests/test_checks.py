"""advcl_lite.checks: every check passes on the notebooks' own solutions and fails, with its hint, on wrong ones."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from advcl_lite import checks
from advcl_lite.evaluate import robust_accuracy
from advcl_lite.frequency import frequency_radius, high_pass, low_pass, radial_power_spectrum
from advcl_lite.losses import multiview_contrastive_loss
from advcl_lite.clustering import assign_to_centres

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0*.ipynb"))


def solutions() -> list[tuple[str, str, str]]:
    """(notebook, solution source, check source) of every exercise in the instructor notebooks."""
    found = []
    for path in NOTEBOOKS:
        cells = nbformat.read(path, as_version=4).cells
        for i, c in enumerate(cells):
            if c.metadata.get("nbgrader", {}).get("solution"):
                assert cells[i + 1].metadata["nbgrader"]["grade"], f"{path.name}: a check cell follows each exercise"
                found.append((path.name, c.source, cells[i + 1].source))
    return found


def test_every_notebook_has_an_exercise():
    assert sorted({n[:2] for n, _, _ in solutions()}) == ["01", "02", "03", "04", "05", "06"]


@pytest.mark.parametrize("notebook,solution,check", solutions(), ids=[s[0][:2] for s in solutions()])
def test_check_passes_on_the_notebooks_solution(notebook, solution, check, capsys):
    env = {"torch": torch}
    exec(solution, env)
    exec(check, env)
    assert "correct:" in capsys.readouterr().out


@pytest.mark.parametrize("check,right", [
    (checks.check_high_pass, high_pass), (checks.check_contrastive_loss, multiview_contrastive_loss),
    (checks.check_assign, assign_to_centres), (checks.check_robust_accuracy, robust_accuracy),
    (checks.check_radial_spectrum, radial_power_spectrum)])
def test_check_passes_on_the_library_function(check, right, capsys):
    assert check(right) is None            # a grade cell whose value is None: nbgrader 0.9 logs no warning
    assert capsys.readouterr().out.startswith("correct:")


def _views_loss_with_self(views, t):
    z = torch.cat(views)
    logp = (z @ z.t() / t).log_softmax(1)
    ids = torch.arange(len(views[0])).repeat(len(views))
    pos = (ids[:, None] == ids[None]) & ~torch.eye(len(z), dtype=torch.bool)
    return -(logp * pos).sum(1).div(len(views) - 1).mean()


def _first_positive_only(views, t):     # right for V = 2 only
    return multiview_contrastive_loss(views[:2], t)


def _summed_rings(x):
    r, p = radial_power_spectrum(x, normalize=False)
    s = p * torch.bincount(frequency_radius(*x.shape[-2:], dtype=torch.float64).round().long().flatten()).double()
    return r, s / s.sum()


def _strict_ring(x, r):               # `> r` where the exercise says `>= r`
    d = frequency_radius(*x.shape[-2:], dtype=torch.float64)
    return torch.fft.ifft2(torch.fft.fft2(x) * (d > r)).real


WRONG = [
    (checks.check_high_pass, _strict_ring, "boundary ring is wrong"),
    (checks.check_high_pass, lambda x, r: high_pass(x, r) * x.shape[-1] * x.shape[-2], "multiplied by H\\*W"),
    (checks.check_high_pass, lambda x, r: torch.cat([high_pass(x, r)[:, :1], x[:, 1:]], 1), "every channel"),
    (checks.check_contrastive_loss, lambda v, t: multiview_contrastive_loss(v, 1.0), "divide the similarities"),
    (checks.check_contrastive_loss, lambda v, t: multiview_contrastive_loss(v, t) * len(v) * len(v[0]),
     "instead of summing"),
    (checks.check_radial_spectrum, lambda x: radial_power_spectrum(x[:, :1]), "channel 0 alone"),
    (checks.check_high_pass, lambda x, r: low_pass(x, r), "low-frequency part"),
    (checks.check_high_pass, lambda x, r: high_pass(x, r) + x.mean((-2, -1), keepdim=True), "zero-mean"),
    (checks.check_high_pass, lambda x, r: torch.fft.ifft2(torch.fft.fft2(x)), "complex"),
    (checks.check_high_pass, lambda x, r: high_pass(x, r)[0], "expected shape"),
    (checks.check_high_pass, lambda x, r: high_pass(x, r + 1), "largest difference"),
    (checks.check_contrastive_loss, _views_loss_with_self, "leave the anchor itself"),
    (checks.check_contrastive_loss, _first_positive_only, "V - 1 positives"),
    (checks.check_contrastive_loss, lambda v, t: multiview_contrastive_loss(v, t, reduction="none"), "one number"),
    (checks.check_assign, lambda f, c: torch.cdist(f, c).argmax(1), "farthest centre"),
    (checks.check_assign, lambda f, c: torch.cdist(f, c).argmin(1).float(), "integer indices"),
    (checks.check_assign, lambda f, c: (f @ c.t()).argmax(1), "is nearer"),
    (checks.check_robust_accuracy, lambda c, a, y: float((a == y).float().mean()), "already wrong on the clean"),
    (checks.check_robust_accuracy, lambda c, a, y: int(((c == y) & (a == y)).sum()), "not a count"),
    (checks.check_robust_accuracy, lambda c, a, y: float((c == y).float().mean()), "right on both"),
    (checks.check_radial_spectrum, lambda x: (radial_power_spectrum(x)[0], radial_power_spectrum(x, False)[1]), "sum to 1"),
    (checks.check_radial_spectrum, _summed_rings, "summed the power"),
    (checks.check_radial_spectrum, lambda x: radial_power_spectrum(x)[1], "pair"),
    (checks.check_radial_spectrum, lambda x: (radial_power_spectrum(x)[0] + 1, radial_power_spectrum(x)[1]), "radii"),
    (checks.check_high_pass, lambda x, r: 1 / 0, "raised ZeroDivisionError"),
]


@pytest.mark.parametrize("check,wrong,hint", WRONG, ids=[f"{c.__name__}-{h.split()[0]}" for c, _, h in WRONG])
def test_check_fails_with_its_hint_on_a_wrong_answer(check, wrong, hint, capsys):
    with pytest.raises(checks.ExerciseFailed, match=hint):
        check(wrong)
    assert capsys.readouterr().out.startswith("not yet:")


def test_a_stub_still_raises_not_implemented_so_a_student_copy_stops_there():
    def stub(*_):
        raise NotImplementedError()

    for check in (checks.check_high_pass, checks.check_contrastive_loss, checks.check_assign,
                  checks.check_robust_accuracy, checks.check_radial_spectrum):
        with pytest.raises(NotImplementedError):
            check(stub)
