"""Every command that takes weights, against every bad file a user may pass: exit status 2,
exactly one ``error:`` line on stderr naming the file and saying what it is, no traceback,
nothing created in the output or save dir. Also: what the reader says each file is, a broken
search index, ``compare`` with null metrics, and the one-line dataset layout error.

The fast tier runs every bad file against one command and every command against one bad file;
the whole table is slow."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

from vkd_torchreid import cli
from vkd_torchreid.models import build_model
from vkd_torchreid.utils import checkpoint as ckpt_io
from vkd_torchreid.utils.filetype import sniff

from conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = ["data.height", "32", "data.width", "16", "use_gpu", "False", "model.name",
        "vkd_resnet18"]


class _Unlisted:  # a pickled object that torch.load(weights_only=True) refuses
    pass


def _training_checkpoint(arch, classes, path):
    """A checkpoint in our training format (weights, optimizer, epoch, meta) of a random
    ``arch`` network with ``classes`` classes."""
    torch.manual_seed(0)
    model = build_model(arch, classes, pretrained=False)
    state = {"state_dict": model.state_dict(), "epoch": 1,
             "optimizer": torch.optim.Adam(model.parameters()).state_dict(),
             "meta": {"arch": arch, "num_classes": classes, "stage": "teacher",
                      "generation": 0}}
    ckpt_io.atomic_save(state, path)
    return model


@pytest.fixture(scope="module")
def world(mars_root, tmp_path_factory):
    """One real checkpoint (a random vkd_resnet18 with the training set's classes) and the
    bad files of the table, a search gallery and a query image."""
    root, counts = mars_root
    n = counts["train_ids"]
    base = tmp_path_factory.mktemp("bad_files")
    good = str(base / "good.pth.tar")
    model = _training_checkpoint("vkd_resnet18", n, good)
    files = {}

    def write(name, data):
        files[name] = str(base / name)
        with open(files[name], "wb") as fh:
            fh.write(data)

    write("notes.txt", b"these are not weights\njust a note\n")
    with open(os.path.join(REPO, "configs", "demo.yaml"), "rb") as fh:
        write("config.yaml", fh.read())
    frames = sorted(glob.glob(os.path.join(root, "mars", "bbox_test", "*", "*.jpg")))
    with open(frames[0], "rb") as fh:
        write("frame.jpg", fh.read())
    write("empty.pth", b"")
    with open(good, "rb") as fh:
        data = fh.read()
    write("truncated.pth", data[:len(data) // 2])
    files["legacy.pth"] = str(base / "legacy.pth")
    torch.save({"state_dict": model.state_dict(), "epoch": 1, "args": _Unlisted()},
               files["legacy.pth"])
    files["other_arch.pth"] = str(base / "other_arch.pth")
    other = _training_checkpoint("vkd_mobilenetv2", n, files["other_arch.pth"])
    files["other_arch_bare.pth"] = str(base / "other_arch_bare.pth")  # torchreid's layout
    torch.save({"state_dict": {f"module.{k}": v for k, v in other.state_dict().items()},
                "epoch": 3}, files["other_arch_bare.pth"])
    files["other_classes.pth"] = str(base / "other_classes.pth")
    _training_checkpoint("vkd_resnet18", n + 3, files["other_classes.pth"])
    gallery = base / "gallery"
    for i, folder in enumerate(sorted(glob.glob(os.path.join(root, "mars", "bbox_test",
                                                             "*")))[:2]):
        os.makedirs(gallery / f"{i}_{i}_{i}")
        for frame in sorted(glob.glob(os.path.join(folder, "*.jpg")))[:2]:
            shutil.copy(frame, gallery / f"{i}_{i}_{i}")
    return {"root": root, "good": good, "files": files, "gallery": str(gallery),
            "query": frames[0], "base": str(base)}


#: Bad file -> what its error line must say.
SAYS = {
    "notes.txt": "is a text file, not a checkpoint",
    "config.yaml": "is a text file (YAML), not a checkpoint",
    "frame.jpg": "is a JPEG image; expected a PyTorch checkpoint",
    "empty.pth": "is an empty file (0 bytes)",
    "truncated.pth": "is a truncated or damaged PyTorch checkpoint",
    "legacy.pth": "refuses to load; if you trust its source, pass --trust-checkpoint",
    "other_arch.pth": "holds a vkd_mobilenetv2 network but the run needs a vkd_resnet18",
    "other_arch_bare.pth": "weights that do not fit (it declares no architecture",
    "other_classes.pth": "holds 7 classes but the run needs 4",
}
#: Unreadable for every command.
UNREADABLE = ("notes.txt", "config.yaml", "frame.jpg", "empty.pth", "truncated.pth",
              "legacy.pth", "other_arch_bare.pth")
#: A declared architecture other than model.name is an error where the command needs
#: model.name's (training, search, export); eval and the analyses take the checkpoint's own.
#: Another class count matters to training only.
NEEDS_ARCH = ("other_arch.pth",)
NEEDS_CLASSES = ("other_classes.pth",)


def _train(w, out, *opts):
    return ["train", "--config-file", "", "data.root", w["root"], "data.save_dir", out, *TINY,
            "train.batch_size", "8", "sampler.num_instances", "2", "video.seq_len", "4",
            "train.max_epoch", "1", *opts]


def _tool(name):
    return lambda w, bad, out: [name, "--config-file", "", "--weights", bad, "--output", out,
                                "data.root", w["root"], "data.workers", "0",
                                "test.batch_size", "8", *SIZE]


#: Command -> (argv of a run with ``bad`` writing into ``out``, the bad files it refuses).
COMMANDS = {
    "train vkd.teacher_checkpoint": (
        lambda w, bad, out: _train(w, out, "vkd.stage", "student", "vkd.teacher_arch",
                                   "vkd_resnet18", "vkd.teacher_checkpoint", bad),
        UNREADABLE + NEEDS_ARCH + NEEDS_CLASSES),
    "train vkd.student_checkpoint": (
        lambda w, bad, out: _train(w, out, "vkd.stage", "student", "vkd.teacher_checkpoint",
                                   w["good"], "vkd.student_checkpoint", bad),
        UNREADABLE + NEEDS_ARCH + NEEDS_CLASSES),
    "train model.load_weights": (
        lambda w, bad, out: _train(w, out, "model.load_weights", bad),
        UNREADABLE + NEEDS_ARCH + NEEDS_CLASSES),
    "train --resume": (
        lambda w, bad, out: [*_train(w, out)[:3], "--resume", bad, *_train(w, out)[3:]],
        UNREADABLE + NEEDS_ARCH + NEEDS_CLASSES),
    "train model.resume": (
        lambda w, bad, out: _train(w, out, "model.resume", bad),
        UNREADABLE + NEEDS_ARCH + NEEDS_CLASSES),
    "eval": (lambda w, bad, out: ["eval", *_train(w, out, "model.load_weights", bad)[1:]],
             UNREADABLE),
    "search": (
        lambda w, bad, out: ["search", "--config-file", "", "--weights", bad, "--query",
                             w["query"], "--gallery", w["gallery"], "--output",
                             os.path.join(out, "ranked.png"), *SIZE],
        UNREADABLE + NEEDS_ARCH),
    "export": (
        lambda w, bad, out: ["export", "--config-file", "", "--weights", bad, "--output",
                             os.path.join(out, "model.onnx"), *SIZE],
        UNREADABLE + NEEDS_ARCH),
    **{name: (_tool(name), UNREADABLE)
       for name in ("gallery-curve", "camera-bias", "rank-list", "explain")},
}
#: Resuming reads a run's checkpoint: what it says about these files instead.
RESUME_SAYS = {
    "other_arch.pth": "cannot resume from {bad}: it holds arch='vkd_mobilenetv2', the config "
                      "builds arch='vkd_resnet18'",
    "other_arch_bare.pth": "{key} {bad} holds no training state (optimizer missing), only a "
                           "network's weights",
    "other_classes.pth": "cannot resume from {bad}: it holds num_classes=7",
}
FAST_COMMAND, FAST_FILE = "export", "notes.txt"


def _cases():
    for command, (_, refused) in COMMANDS.items():
        for name in refused:
            fast = command == FAST_COMMAND or name == FAST_FILE
            yield pytest.param(command, name, id=f"{command}-{name}",
                               marks=() if fast else pytest.mark.slow)


def one_error_line(capsys, code):
    """The one ``error:`` line of a run that must have failed with exit status 2."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command,name", list(_cases()))
def test_every_command_refuses_every_bad_file_in_one_line(world, capsys, tmp_path, command,
                                                          name):
    out = str(tmp_path / "out")
    bad = world["files"][name]
    argv = COMMANDS[command][0](world, bad, out)
    line = one_error_line(capsys, cli.main(argv))
    assert bad in line
    says = SAYS[name]
    if "resume" in command:
        says = RESUME_SAYS.get(name, says).format(bad=bad, key=command.split()[1])
    assert says in line, line
    if command.startswith("train") and not ("resume" in command and name in RESUME_SAYS
                                            and name != "other_arch_bare.pth"):
        assert line.startswith(f"error: {command.split()[1]} {bad} "), line  # the key named
    assert ("--trust-checkpoint" in line) == (name == "legacy.pth"), line
    assert not os.path.exists(out), os.listdir(out)


def test_trust_checkpoint_reads_a_real_legacy_checkpoint_only(world, capsys, tmp_path):
    files = world["files"]
    ckpt = ckpt_io.load_checkpoint(files["legacy.pth"], trust=True)
    assert isinstance(ckpt["args"], _Unlisted) and "state_dict" in ckpt
    for name in ("notes.txt", "config.yaml", "frame.jpg", "empty.pth", "truncated.pth"):
        with pytest.raises(ckpt_io.CheckpointError) as err:
            ckpt_io.load_checkpoint(files[name], trust=True)  # trust does not parse garbage
        assert SAYS[name] in str(err.value) and "--trust-checkpoint" not in str(err.value)
    out = str(tmp_path / "out")
    argv = COMMANDS["search"][0](world, files["config.yaml"], out)
    line = one_error_line(capsys, cli.main([argv[0], "--trust-checkpoint", *argv[1:]]))
    assert SAYS["config.yaml"] in line and not os.path.exists(out)


def test_what_a_file_is(tmp_path):
    cases = {
        "a.txt": (b"plain words\n", "text", "a text file"),
        "a.yaml": (b"# comment\nmodel:\n  name: x\n", "text", "a text file (YAML)"),
        "a.json": (b' {"mAP": 0.5}', "text", "a text file (JSON)"),
        "a.jpg": (b"\xff\xd8\xff\xe0" + bytes(20), "other", "a JPEG image"),
        "a.png": (b"\x89PNG\r\n\x1a\n" + bytes(20), "other", "a PNG image"),
        "a.gz": (b"\x1f\x8b\x08" + bytes(20), "other", "a gzip archive"),
        "a.tar": (bytes(257) + b"ustar" + bytes(300), "other", "a tar archive"),
        "a.npy": (b"\x93NUMPY\x01\x00", "other", "a NumPy .npy array"),
        "a.bin": (bytes([7, 1, 0, 200, 3]) * 10, "other", "a binary file of unknown format"),
        "a.pkl": (b"\x80\x02}q\x00.", "pickle", "a pickle (protocol 2)"),
        "a.zip": (b"PK\x03\x04" + bytes(30), "zip", "a zip archive"),
        "e.pth": (b"", "empty", "an empty file (0 bytes)"),
    }
    for name, (data, kind, what) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        found = sniff(str(path))
        assert (found.kind, found.size) == (kind, len(data)), name
        assert found.what.startswith(what), (name, found.what)


def test_checkpoint_reader_messages(tmp_path):
    """Files the command table has no row for: a zip archive that is no checkpoint, a
    truncated legacy pickle, a torch file that holds no weights."""
    archive = str(tmp_path / "photos.zip")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(ckpt_io.CheckpointError, match="a zip archive of 1 files without "
                                                       "data.pkl, not a PyTorch checkpoint"):
        ckpt_io.load_checkpoint(archive)
    legacy = str(tmp_path / "legacy.pth")
    torch.save({"w": torch.zeros(100)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(ckpt_io.load_checkpoint(legacy)["w"], torch.zeros(100))
    with open(legacy, "rb") as fh:
        data = fh.read()
    with open(legacy, "wb") as fh:
        fh.write(data[:len(data) - 50])
    with pytest.raises(ckpt_io.CheckpointError, match=r"legacy.pth is a truncated or damaged "
                                                       r"PyTorch checkpoint \(\d+ bytes; "):
        ckpt_io.load_checkpoint(legacy)
    listed = str(tmp_path / "list.pth")
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ckpt_io.CheckpointError, match="list.pth is a PyTorch file holding a "
                                                       "list, not a network's weights"):
        ckpt_io.read_state_dict(listed)


@pytest.mark.parametrize("content,says", [
    ("", "an empty file, expected JSON"),
    ('{"format": 1, "backend": "exact", "count": ', "not valid JSON: "),
    ("weights of the gallery\n", "not valid JSON: "),
])
def test_a_broken_search_index_is_one_line(world, capsys, tmp_path, content, says):
    index = tmp_path / "index"
    index.mkdir()
    meta = index / "index.json"
    meta.write_text(content)
    out = str(tmp_path / "out")
    code = cli.main(["search", "--config-file", "", "--weights", world["good"], "--query",
                     world["query"], "--index", str(index), "--output",
                     os.path.join(out, "ranked.png"), *SIZE])
    line = one_error_line(capsys, code)
    assert str(meta) in line and says in line, line
    assert not os.path.exists(out)


def test_compare_with_null_metrics_is_one_line(tmp_path, capsys):
    from vkd_torchreid.engine.evaluator import results_record
    from vkd_torchreid.utils.jsonio import write_json

    runs = []
    for name, mean_ap in (("a", 0.4), ("b", None)):
        os.makedirs(tmp_path / name)
        write_json(results_record({"vkd_mars": {"I2V": {"rank1": 0.5, "mAP": mean_ap,
                                                        "mAP_mars": 0.4}}}, "teacher"),
                   str(tmp_path / name / "results.json"))
        runs.append(str(tmp_path / name))
    out = str(tmp_path / "cmp")
    line = one_error_line(capsys, cli.main(["compare", *runs, "--output", out]))
    assert os.path.join(runs[1], "results.json") in line
    assert "vkd_mars.I2V.mAP is null, expected a number" in line
    assert not os.path.exists(out)


def test_a_dataset_layout_error_is_one_whole_line(tmp_path, capsys):
    from vkd_torchreid.data.layout import LayoutError
    from vkd_torchreid.data.mars import Mars

    root, save = str(tmp_path / "data"), str(tmp_path / "run")
    os.makedirs(os.path.join(root, "mars"))
    line = one_error_line(capsys, cli.main(_train({"root": root}, save)))
    missing = os.path.join(root, "mars", "info")
    assert line == (f"error: missing folder {missing}: data.root {root} does not hold vkd_mars "
                    "in the layout its loader reads (`vkd-reid download mars` gets it or says "
                    "where to get it)")
    assert not os.path.exists(save)
    with pytest.raises(LayoutError) as err:  # the layout itself follows the first line
        Mars.load(root)
    assert str(err.value).splitlines()[1:] == ["expected layout:", *Mars.LAYOUT.splitlines()]


#: Rank 1 joins the group and never answers; rank 0 runs ``vkd-reid train``, whose first
#: collective (the config check) times out after ``train.dist_timeout_s``.
SILENT_RANK = """
import datetime, os, sys, time
import torch.distributed as dist
os.environ.update(RANK=sys.argv[1], LOCAL_RANK=sys.argv[1], WORLD_SIZE="2",
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
if sys.argv[1] == "1":
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    time.sleep(30)
else:
    from vkd_torchreid import cli
    sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.slow  # two processes and a 3 s timeout
def test_a_collective_that_times_out_is_one_error_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    save = str(tmp_path / "run")
    argv = ["train", "--config-file", "", "--root", str(tmp_path), "data.save_dir", save,
            "use_gpu", "False", "train.dist_backend", "gloo", "train.dist_timeout_s", "3"]
    env = {**os.environ, "PYTHONPATH": REPO}
    silent = subprocess.Popen([sys.executable, "-c", SILENT_RANK, "1", port], env=env)
    try:
        rank0 = subprocess.run([sys.executable, "-c", SILENT_RANK, "0", port, *argv], env=env,
                               capture_output=True, text=True, timeout=120)
    finally:
        silent.kill()
        silent.wait()
    lines = rank0.stderr.strip().splitlines()
    assert rank0.returncode == 2 and "Traceback" not in rank0.stderr, rank0.stderr
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1, rank0.stderr
    assert errors[0].startswith("error: rank 0: a collective of the process group failed: "
                                "Timed out waiting 3000ms"), errors[0]
    assert not os.path.exists(save)
