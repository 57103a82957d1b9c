"""Scale-out on this CPU: two processes (gloo) compute what one process computes on the whole batch.

* the gather's backward sums the ranks' gradients (a gather without the sum is 1/N too small);
* one AdvCL step (pseudo-labels included) and one ACL step on 2 ranks x B/2 images give the loss, the
  updated weights and the BN running statistics of one process on B images (SyncedBatchNorm; the views
  and the attacks' starts are fixed here, since each rank draws its own by design);
* one ``torchrun --nproc_per_node=2`` launch: pretraining writes one checkpoint that loads strictly, a run
  stopped after one epoch and resumed from its ``last.pt`` reaches the weights of an uninterrupted one,
  finetuning (ALF) writes one model that loads strictly, and evaluation split over the two processes
  counts every image once (the clean counts equal a single process's).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from advcl_lite import distributed
from advcl_lite.checkpoint import load_checkpoint
from advcl_lite.losses import multiview_contrastive_loss
from advcl_lite.methods import make_step
from advcl_lite.methods import build_net
from advcl_lite.models import load_pretrained
from advcl_lite.presets import get_preset
from advcl_lite.views import crop_flip, simclr_view

WORLD = 2
B = 16
KS = (2, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args) -> None:
    port = _free_port()
    mp.start_processes(_init_and_run, args=(port, fn, args), nprocs=WORLD, start_method="spawn", join=True)


def _init_and_run(rank: int, port: int, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- the gather

def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * 4, 8, generator=g)
    return x, x + 0.3 * torch.randn(x.shape, generator=g), torch.randn(8, 6, generator=g)


def _loss(x1, x2, w, gather_fn):
    return multiview_contrastive_loss([gather_fn(F.normalize(x1 @ w, dim=1)), gather_fn(F.normalize(x2 @ w, dim=1))],
                                      0.5)


def _naive_gather(x):                     # all_gather whose backward does not sum: the known bug
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _gather_worker(rank: int, want: torch.Tensor) -> None:
    x1, x2, w0 = _inputs()
    mine = slice(rank * 4, (rank + 1) * 4)
    for fn, factor in ((distributed.gather, 1.0), (_naive_gather, 1.0 / WORLD)):
        w = w0.clone().requires_grad_(True)
        _loss(x1[mine], x2[mine], w, fn).backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)
        grad /= WORLD                      # what DDP's averaging does
        torch.testing.assert_close(grad, factor * want, rtol=1e-5, atol=1e-6)


def test_gather_backward_gives_the_single_process_gradient():
    x1, x2, w0 = _inputs()
    w = w0.clone().requires_grad_(True)
    _loss(x1, x2, w, lambda z: z).backward()      # one process, the whole batch
    assert w.grad.abs().max() > 1e-3
    _spawn(_gather_worker, w.grad.clone())


# --------------------------------------------------------------------------- one step of a method

def _views(method: str):
    x = torch.rand(B, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    views = [simclr_view(x, g), simclr_view(x, g)] + ([crop_flip(x, g)] if method == "advcl" else [])
    x, views = x.double(), [v.double() for v in views]
    targets = [torch.randint(0, k, (B,), generator=torch.Generator().manual_seed(k)) for k in KS]
    return x, views, targets


def _step(method: str, net, part: slice):
    """One step of ``method`` on ``net`` with the fixed views and no random starts; the loss."""
    P = get_preset("smoke", base_width=4, pgd_steps=2, channels_last=False)
    x, views, targets = _views(method)
    step = make_step(method, net, P, use_pseudo=method == "advcl")
    step.views = lambda x_, g_: [v[part] for v in views]
    for a in ("attack", "cl_attack", "ce_attack"):
        if hasattr(step, a):
            getattr(step, a).random_start = False
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    out = step(x[part], None, [t[part] for t in targets] if method == "advcl" else None)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return {k: float(v.detach()) for k, v in out.items()}


def _build(method: str):
    # float64: a width-4 network at initialisation is so ill-conditioned that one process's float32 step already
    # differs from its float64 step by more than 100 % in some BN gradients (BENCHMARKS.md, section 3); in
    # float64 the comparison tests the mathematics (to 1e-6: the pseudo-label CE is computed in float32)
    torch.manual_seed(0)
    net = build_net(method, 4, KS if method == "advcl" else (), head="acl" if method == "acl" else "advcl")
    return net.double().train()


def _step_worker(rank: int, method: str, want_losses: dict, want_state: dict) -> None:
    net = distributed.convert_sync_batchnorm(_build(method))
    model = distributed.wrap(net, torch.device("cpu"))
    losses = _step(method, model, distributed.shard(B))
    # the contrastive terms are those of the global batch on every rank; L_PS (and so AdvCL's total) is a
    # per-rank mean, whose mean over the ranks is the global one
    means = distributed.all_reduce_mean(losses)
    for k, v in want_losses.items():
        got = means[k] if k in ("loss_ps", "loss") and method == "advcl" else losses[k]
        assert got == pytest.approx(v, rel=1e-6), (k, got, v)
    state = net.state_dict()
    assert state.keys() == want_state.keys()
    for k, v in want_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-8, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(state[k], v), k


@pytest.mark.parametrize("method", ["advcl", "acl"])
def test_two_ranks_on_half_batches_take_the_step_of_one_process_on_the_whole_batch(method):
    net = _build(method)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    losses = _step(method, net, slice(None))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    moved = [k for k in state if state[k].is_floating_point() and not torch.equal(state[k], before[k])]
    assert any("running_mean" in k for k in moved) and any("conv1.weight" in k for k in moved)
    _spawn(_step_worker, method, losses, state)


def _unsynced_worker(rank: int) -> None:
    # without SyncedBatchNorm every rank normalises its own share: several forwards before one backward
    # must still work (no buffer broadcast in the forward), and the running statistics then differ by rank
    net = _build("advcl")
    model = distributed.wrap(net, torch.device("cpu"))
    _step("advcl", model, distributed.shard(B))
    rm = net.backbone.bn1.bns["normal"].running_mean
    others = distributed.all_gather_object(rm.tolist())
    assert others[0] != others[1]
    w = [p.detach().clone() for p in net.parameters()]
    gathered = distributed.all_gather_object([t.tolist() for t in w])
    assert gathered[0] == gathered[1]                 # the weights themselves stay identical (DDP)


def test_without_sync_bn_a_step_runs_and_only_the_running_statistics_differ_by_rank():
    _spawn(_unsynced_worker)


def test_helpers_are_the_identity_in_one_process():
    z = torch.randn(3, 4)
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather(z) is z and distributed.gather_detached(z) is z
    assert distributed.all_reduce_mean({"a": 1.5}) == {"a": 1.5}
    assert distributed.shard(8) == slice(0, 8)
    net = distributed.convert_sync_batchnorm(build_net("acl", 4, head="acl").double())
    assert distributed.wrap(net, torch.device("cpu")) is net
    assert all(t.dtype == torch.float64 for t in net.parameters())      # the conversion keeps the dtype
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    ref = _build("acl")
    net.load_state_dict(ref.state_dict())
    torch.testing.assert_close(net.train()(x, "pgd"), ref.train()(x, "pgd"))   # SyncedBatchNorm == BatchNorm alone


# --------------------------------------------------------------------------- torchrun

RUN = """
import json, sys
from pathlib import Path
import torch
from advcl_lite import distributed
from advcl_lite.checkpoint import load_checkpoint
from advcl_lite.evaluate import evaluate
from advcl_lite.finetune import finetune
from advcl_lite.models import ResNet18
from advcl_lite.pretrain import pretrain
out = Path(sys.argv[1])
kw = dict(device="cpu", progress=False, train_subset=64, batch_size=32, base_width=4, epochs=2)
pretrain("acl", "smoke", out_dir=out / "whole", **kw)
pretrain("acl", "smoke", out_dir=out / "resumed", max_epochs=1, **kw)          # stopped after epoch 1 ...
stopped = {"epoch": load_checkpoint(out / "resumed" / "last.pt")["meta"]["epoch"],
           "final": (out / "resumed" / "final.pt").exists()}
pretrain("acl", "smoke", out_dir=out / "resumed", **kw)                         # ... and resumed from last.pt
torch.manual_seed(0)
res = finetune(ResNet18(4), "alf", "smoke", data="sample", out_dir=out / "ft", device="cpu", progress=False,
               ft_subset=128, ft_batch_size=32, ft_epochs=1, ft_pgd_steps=1)
r = evaluate(res.model, "sample", attack=None, n=64, batch_size=16, seed=0)
if distributed.is_main():
    json.dump({"stopped": stopped, "n": r["n"], "correct": r["correct"], "world": distributed.world_size()},
              open(out / "report.json", "w"))
"""


def test_one_torchrun_launch_pretrains_resumes_exactly_finetunes_and_evaluates(tmp_path):
    """One launch of 2 processes (each launch costs seconds of start-up): ACL pretraining writes one strict
    checkpoint; a run stopped after epoch 1 and resumed from its last.pt reaches the same weights; ALF
    finetuning writes one model that loads strictly; evaluation split over the ranks counts every image once."""
    from advcl_lite.evaluate import evaluate
    from advcl_lite.finetune import load_finetuned
    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADVCL_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           str(script), str(tmp_path)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads((tmp_path / "report.json").read_text())
    assert got["stopped"] == {"epoch": 1, "final": False}
    a, meta = load_pretrained(tmp_path / "whole" / "final.pt")          # strict keys
    b, _ = load_pretrained(tmp_path / "resumed" / "final.pt")
    assert meta["world_size"] == 2 and meta["sync_bn"] is True
    assert len(json.loads((tmp_path / "whole" / "history.json").read_text())) == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["final.pt", "history.json", "last.pt"]
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["history.json", "model.pt"]
    model, ft_meta = load_finetuned(tmp_path / "ft" / "model.pt")             # strict keys
    alone = evaluate(model, "sample", attack=None, n=64, batch_size=16, seed=0)
    assert {k: got[k] for k in ("n", "correct", "world")} == {"n": 64, "correct": alone["correct"], "world": 2}
    assert ft_meta["num_train"] > 0 and len(ft_meta["history"]) == 1
