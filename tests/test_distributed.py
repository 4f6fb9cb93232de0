"""Distributed training and evaluation: 2 gloo processes on the loopback address, launched by
torchrun (``python -m torch.distributed.run``), against a single process."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, "tools", "main.py")
WORKER = os.path.join(REPO, "tests", "dist_worker.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(*argv, nproc=2, timeout=240, **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_port()}", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_env(),
                          timeout=timeout, **kwargs)


def _start_long_job(root, save, epoch_marker, *extra):
    """A 500-epoch torchrun job on 2 ranks, returned once its output shows ``epoch_marker``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_port()}", MAIN,
           *_opts(root, save, "train.max_epoch", "500", "train.print_freq", "1", *extra)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env=_env())
    deadline = time.time() + 120
    for line in proc.stdout:
        if epoch_marker in line or time.time() > deadline:
            break
    return proc


def _single(*argv, timeout=240):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO,
                          env=_env(), timeout=timeout)


def _opts(root, save_dir, *extra):
    return ["--root", root, "data.save_dir", save_dir, *TINY, "train.batch_size", "8",
            "sampler.num_instances", "2", "video.seq_len", "4", *extra]


def _json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.slow  # two torchrun launches and a single process
def test_gradients_and_losses_equal_one_process_and_ranks_stay_identical(mars_root, tmp_path):
    """(b) the same already-augmented global batch, split by identity over 2 ranks, with
    train.dist_gather and train.sync_bn (teacher BatchNorm on batch statistics): the
    all-reduced losses and every gradient before the optimiser step equal one process's;
    (a) after 3 steps both ranks hold identical parameters."""
    root, _ = mars_root
    dist_out, single_out = tmp_path / "dist", tmp_path / "single"
    dist_out.mkdir()
    single_out.mkdir()
    res = _torchrun(WORKER, "grads", root, str(dist_out))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _single(WORKER, "grads", root, str(single_out))
    assert res.returncode == 0, res.stderr[-3000:]
    one = torch.load(single_out / "grads0.pt", weights_only=True)
    for rank in (0, 1):
        got = torch.load(dist_out / f"grads{rank}.pt", weights_only=True)
        assert set(got["values"]) == {"loss_ce", "loss_tr", "loss_kd", "loss_dp", "loss"}
        for key, value in one["values"].items():
            assert got["values"][key] == pytest.approx(value, rel=1e-5), key
        assert set(got["grads"]) == set(one["grads"])
        # Gradients that are zero in exact arithmetic (the re-initialised last block's
        # zero-gamma BatchNorm, whose shift the losses cannot see) are float32 noise on both
        # sides: they must stay noise; every other gradient must match.
        zero = {n for n, g in one["grads"].items() if g.norm() < 1e-6}
        assert all(got["grads"][n].norm() < 1e-6 for n in zero)
        assert len(zero) < len(one["grads"]) // 4
        worst = max(_rel(got["grads"][n], g) for n, g in one["grads"].items() if n not in zero)
        assert worst <= 1e-5, worst  # float64 networks: about 1e-14 measured
    p0 = torch.load(dist_out / "params0.pt", weights_only=True)
    p1 = torch.load(dist_out / "params1.pt", weights_only=True)
    assert all(torch.equal(p0[n], p1[n]) for n in p0)
    ref = torch.load(single_out / "params0.pt", weights_only=True)
    assert any(not torch.equal(p0[n], ref[n]) for n in p0)  # other batches: a real check


@pytest.fixture(scope="module")
def dist_teacher(mars_root, tmp_path_factory):
    """A 2-epoch teacher trained by 2 ranks, and its save dir."""
    root, _ = mars_root
    save = str(tmp_path_factory.mktemp("dist_teacher"))
    res = _torchrun(MAIN, *_opts(root, save, "test.eval_freq", "-1", "train.print_freq", "1"))
    assert res.returncode == 0, res.stderr[-3000:]
    return save, res


@pytest.mark.slow
def test_only_rank_zero_writes_and_eval_only_equals_one_process(mars_root, dist_teacher,
                                                                tmp_path):
    """(d) one writer: one TensorBoard file, one line per epoch, no rank-1 output; (c) a
    2-process --eval-only gives a single process's metrics, with world_size 2."""
    root, _ = mars_root
    save, res = dist_teacher
    names = sorted(os.listdir(save))
    assert names == sorted(["config.yaml", "losses.jsonl", "model", "results.json",
                            "train.log", *[n for n in names if n.startswith("events.")]])
    assert len([n for n in names if n.startswith("events.")]) == 1
    with open(os.path.join(save, "losses.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    assert [r["epoch"] for r in rows] == [1, 2]
    with open(os.path.join(save, "train.log"), encoding="utf-8") as fh:
        log = fh.read()
    assert log.count("epoch 1: loss_ce") == 1
    assert res.stdout.count("epoch: [1/2]") == 1  # torchreid's progress line: rank 0 only
    assert _json(os.path.join(save, "results.json"))["world_size"] == 2

    ckpt = os.path.join(save, "model", "latest.pth.tar")
    args = ["model.load_weights", ckpt]
    d_dir, s_dir = str(tmp_path / "d"), str(tmp_path / "s")
    res = _torchrun(MAIN, "--eval-only", *_opts(root, d_dir, *args))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _single(MAIN, "--eval-only", *_opts(root, s_dir, *args))
    assert res.returncode == 0, res.stderr[-3000:]
    got = _json(os.path.join(d_dir, "results.json"))
    want = _json(os.path.join(s_dir, "results.json"))
    assert got["world_size"] == 2 and want["world_size"] == 1
    for protocol, metrics in want["vkd_mars"].items():
        for k, v in metrics.items():
            assert got["vkd_mars"][protocol][k] == pytest.approx(v, abs=1e-6), (protocol, k)


@pytest.mark.slow
def test_p_not_divisible_by_world_size_is_one_line_and_writes_nothing(mars_root, tmp_path):
    """(f) P = 3 identities per batch on 2 ranks."""
    root, _ = mars_root
    save = str(tmp_path / "run")
    res = _torchrun(MAIN, *_opts(root, save, "train.batch_size", "6"))
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "train.batch_size=6" in errors[0] and "world size 2" in errors[0]
    assert not os.path.exists(save)


@pytest.mark.slow
def test_configs_that_differ_between_ranks_stop_every_rank(mars_root, tmp_path):
    """Rank 1 resolves another config (an environment-dependent override): one error line
    from rank 0 naming the mismatch; both ranks exit non-zero; nothing is written."""
    root, _ = mars_root
    save = str(tmp_path / "run")
    script = tmp_path / "rank_dependent.py"
    script.write_text(
        "import os, runpy, sys\n"
        "if os.environ['RANK'] == '1':\n"
        "    sys.argv += ['train.lr', '0.5']\n"
        f"sys.argv[0] = {MAIN!r}\n"
        f"runpy.run_path({MAIN!r}, run_name='__main__')\n")
    res = _torchrun(str(script), *_opts(root, save))
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "config differs between ranks" in errors[0]
    assert not os.path.exists(save)


class _Job:
    """A 500-epoch torchrun job on 2 ranks whose output (stdout and stderr) is read as it comes
    by a thread, each line with its time: a pipe nobody drains would block a rank on a write,
    which is a stall of its own."""

    def __init__(self, root, save, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_port()}", MAIN,
               *_opts(root, save, "train.max_epoch", "500", "train.print_freq", "1", *extra)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=REPO, env=_env())
        self.lines = []  # (time, line)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.time(), line))

    def wait_for(self, marker, timeout, start=0):
        """Whether a line from ``start`` on holds ``marker`` within ``timeout`` seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(marker in line for _, line in self.lines[start:]):
                return True
            time.sleep(0.1)
        return False

    def output(self):
        return "".join(line for _, line in self.lines)

    def ranks(self):
        """{rank: pid} of torchrun's two workers."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 2, children
        ranks = {}
        for pid in children:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
            ranks[int(env[b"RANK"])] = int(pid)
        return ranks

    def close(self, ranks=()):
        for pid in ranks:  # a stopped rank ignores torchrun's SIGTERM: SIGKILL ends it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)


def _running(pid):
    """Whether process ``pid`` still runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ended_within(pid, seconds):
    """The time ``pid`` was seen ended, or None if it still runs after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if not _running(pid):
            return time.time()
        time.sleep(0.1)
    return None


@pytest.mark.slow  # two torchrun launches
def test_a_rank_that_stops_answering_ends_the_job_after_dist_timeout_s(mars_root, tmp_path):
    """Rank 1 frozen mid-training (SIGSTOP: it neither dies nor answers, so torchrun sees
    nothing wrong and its sockets stay open): rank 0 waits in the step's collective for
    ``train.dist_timeout_s``, not less and not much more, then fails with gloo's timeout. With
    a far longer ``train.dist_timeout_s`` the same freeze has not ended rank 0 by then, and
    once rank 1 is let go (SIGCONT) training goes on: the setting alone decides."""
    root, _ = mars_root
    short, long_, margin = 10, 600, 20
    job = _Job(root, str(tmp_path / "short"), "train.dist_timeout_s", str(short))
    ranks = {}
    try:
        assert job.wait_for("epoch: [2/500]", 180), job.output()[-3000:]
        ranks = job.ranks()
        frozen = time.time()
        os.kill(ranks[1], signal.SIGSTOP)
        ended = _ended_within(ranks[0], short + margin)
        assert ended is not None, f"rank 0 still waits {short + margin} s after the freeze"
        # not before the timeout (a step takes well under a second), not long after it
        assert short - 2 <= ended - frozen <= short + margin, ended - frozen
        # gloo's own words name the wait it was given: train.dist_timeout_s in milliseconds
        # (measured: ended 13.6 s after the freeze with short = 10, "Timed out waiting
        # 10000ms for send operation to complete", then the exit)
        after = "".join(line for t, line in job.lines if t >= frozen)
        waited = re.findall(r"Timed out waiting (\d+)ms", after)
        assert waited and {int(w) for w in waited} == {short * 1000}, after[-3000:]
        # rank 0 says so in one error line, not with a traceback of gloo's exception
        assert re.search(r"^error: rank 0: a collective of the process group failed: Timed "
                         r"out waiting \d+ms", after, re.MULTILINE), after[-3000:]
        assert "RuntimeError: [" not in after, after[-3000:]
    finally:
        job.close(ranks.values())

    job = _Job(root, str(tmp_path / "long"), "train.dist_timeout_s", str(long_))
    ranks = {}
    try:
        assert job.wait_for("epoch: [2/500]", 180), job.output()[-3000:]
        ranks = job.ranks()
        os.kill(ranks[1], signal.SIGSTOP)
        assert _ended_within(ranks[0], short + margin) is None  # still waiting, as told
        seen = len(job.lines)
        os.kill(ranks[1], signal.SIGCONT)
        assert job.wait_for("epoch: [", 60, start=seen), job.output()[-3000:]
        assert _running(ranks[0]) and _running(ranks[1])
    finally:
        job.close(ranks.values())


def _losses(save):
    with open(os.path.join(save, "losses.jsonl"), encoding="utf-8") as fh:
        return {row["epoch"]: row for row in map(json.loads, fh)}


@pytest.mark.slow  # three torchrun launches
def test_sigterm_stops_every_rank_with_one_checkpoint_and_resume_continues_identically(
        mars_root, tmp_path):
    """SIGTERM to torchrun (which forwards it): every rank stops at the same step, rank 0
    writes one checkpoint holding both ranks' random states; ``--resume`` on 2 ranks then
    continues exactly as an uninterrupted run."""
    root, _ = mars_root
    run, ref = str(tmp_path / "run"), str(tmp_path / "ref")
    proc = _start_long_job(root, run, "epoch: [3/500]")
    try:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.count("resume with --resume") == 1, out[-3000:]
    state = torch.load(os.path.join(run, "model", "latest.pth.tar"), weights_only=True)
    stopped = state["epoch"]
    assert stopped >= 2 and len(state["rng_ranks"]) == 2
    assert sorted(_losses(run)) == list(range(1, stopped + 1))

    end = str(stopped + 2)
    res = _torchrun(MAIN, "--resume", *_opts(root, run, "train.max_epoch", end))
    assert res.returncode == 0, res.stderr[-3000:]
    res = _torchrun(MAIN, *_opts(root, ref, "train.max_epoch", end))
    assert res.returncode == 0, res.stderr[-3000:]
    got, want = _losses(run), _losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, stopped + 3))
    # Not bitwise (a single process resumes bitwise): the first resumed epoch differs by
    # float32 rounding (measured 5e-7 relative), which training then amplifies (1e-5 after
    # one more epoch); a wrong random state or model state would differ by far more.
    for epoch, tol in ((stopped + 1, 1e-5), (stopped + 2, 1e-4)):
        for key in ("loss", "loss_ce", "loss_tr"):
            assert got[epoch][key] == pytest.approx(want[epoch][key], rel=tol), (epoch, key)


@pytest.mark.slow
def test_student_with_teacher_cache_on_two_ranks(mars_root, dist_teacher, tmp_path):
    """Rank 0 builds the cache once while rank 1 waits, both read it; the loaders decode
    only the student's M frames of the global batch."""
    root, _ = mars_root
    teacher = os.path.join(dist_teacher[0], "model", "latest.pth.tar")
    save = str(tmp_path / "student")
    res = _torchrun(MAIN, *_opts(root, save, "vkd.stage", "student",
                                 "vkd.teacher_checkpoint", teacher, "vkd.teacher_bn", "eval",
                                 "vkd.teacher_cache", "True", "train.sync_bn", "True"))
    assert res.returncode == 0, res.stderr[-3000:]
    with open(os.path.join(save, "train.log"), encoding="utf-8") as fh:
        log = fh.read()
    assert log.count("teacher cache built") == 1
    rows = _losses(save)
    assert all(r["frames_decoded"] == r["steps"] * 8 * 2 for r in rows.values())
    assert _json(os.path.join(save, "results.json"))["world_size"] == 2
