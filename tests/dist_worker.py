"""One rank of the distributed tests (run by torchrun, or alone for the single-process
reference): ``python tests/dist_worker.py grads ROOT OUT``.

``grads``: a student-stage engine (tiny ResNet-18, teacher BatchNorm on batch statistics,
``train.sync_bn`` and ``train.dist_gather`` on) takes this rank's share of one fixed,
already-augmented global batch; the step's logged losses and every gradient before the
optimiser step go to ``OUT/grads<rank>.pt``. Then three real steps on rank-specific batches;
the parameters go to ``OUT/params<rank>.pt``.
"""
from __future__ import annotations

import os
import sys

import torch

import vkd_torchreid  # noqa: F401  (registers datasets and models)
from vkd_torchreid.config import build_config
from vkd_torchreid.data.batch import Batch
from vkd_torchreid.engine import build
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import distributed
from vkd_torchreid.utils.seeding import set_seed

P, K, N, M = 4, 2, 4, 2


def _config(root: str, save_dir: str):
    return build_config("", [
        "data.root", root, "data.save_dir", save_dir, "data.height", "32", "data.width", "16",
        "data.workers", "0", "use_gpu", "False", "model.pretrained", "False",
        "model.name", "vkd_resnet18", "train.batch_size", str(P * K),
        "sampler.num_instances", str(K), "video.seq_len", str(N), "vkd.student_frames", str(M),
        "vkd.stage", "student", "vkd.teacher_checkpoint", "unused", "vkd.teacher_bn", "batch",
        "train.sync_bn", "True", "train.dist_gather", "True", "train.lr", "0.001"])


def _global_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    b = P * K
    return Batch(img=torch.randn(b, N, 3, 32, 16, generator=g, dtype=torch.float64),
                 pid=torch.arange(P).repeat_interleave(K),
                 camid=torch.zeros(b, dtype=torch.int64),
                 student=torch.stack([torch.randperm(N, generator=g)[:M] for _ in range(b)]))


def _share(batch, rank: int, world: int):
    lo, hi = (P * K * r // world for r in (rank, rank + 1))
    return Batch(img=batch.img[lo:hi], pid=batch.pid[lo:hi], camid=batch.camid[lo:hi],
                 student=batch.student[lo:hi])


def grads(root: str, out: str) -> None:
    torch.set_num_threads(1)
    cfg = _config(root, os.path.join(out, "run"))
    ctx = distributed.init("gloo", 60, use_gpu=False)
    # float64 networks: the two runs sum in different orders (BatchNorm statistics over two
    # ranks), and float32's 1e-7 would flip max-pool arg-maxes at near ties, which is a jump
    # in the gradient, not a difference of the method.
    torch.set_default_dtype(torch.float64)
    set_seed(0)
    num_classes = 4
    teacher = build_model(cfg.model.name, num_classes, pretrained=False)
    engine = build.build_engine(cfg, teacher=teacher)
    # Away from the initialisation, whose zero-gamma residual BatchNorms make most
    # gradients exactly zero: the same values on every rank.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for net in (engine.model, engine.teacher):
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    engine.set_model_mode("train")
    real_step = engine.optimizer.step
    engine.optimizer.step = lambda *a, **k: None  # gradients before the optimiser step
    values = engine.forward_backward(_share(_global_batch(0), ctx.rank, ctx.world_size))
    grads = {n: p.grad.detach().clone() for n, p in engine.model.named_parameters()
             if p.grad is not None}
    torch.save({"values": values, "grads": grads}, os.path.join(out, f"grads{ctx.rank}.pt"))
    engine.optimizer.step = real_step
    for step in range(3):
        engine.forward_backward(_share(_global_batch(100 + step), ctx.rank, ctx.world_size))
    torch.save({n: p.detach().clone() for n, p in engine.model.named_parameters()},
               os.path.join(out, f"params{ctx.rank}.pt"))
    distributed.shutdown()


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    {"grads": grads}[mode](*rest)
