"""ONNX export (``tools/export.py``, :mod:`vkd_torchreid.apps.export`): the image and tracklet
models run in onnxruntime at other batch sizes and frame counts than they were traced with and
match PyTorch; bad input is one ``error:`` line and writes nothing; ``data.root`` is never
read."""
from __future__ import annotations

import contextlib
import io
import os
import sys

import numpy as np
import pytest
import torch

from conftest import require_extra

require_extra("onnx", "export")
require_extra("onnxscript", "export")  # the dynamo ONNX exporter's translator
ort = require_extra("onnxruntime", "export")

from vkd_torchreid.apps import export, onnx_check  # noqa: E402
from vkd_torchreid.data.batch import Batch  # noqa: E402
from vkd_torchreid.data.manager import VKDDataManager  # noqa: E402
from vkd_torchreid.engine.extract import extract  # noqa: E402
from vkd_torchreid.models import build_model  # noqa: E402
from vkd_torchreid.utils import checkpoint as ckpt_io  # noqa: E402

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 3
SIZE = ["data.height", str(HEIGHT), "data.width", str(WIDTH), "model.name", "vkd_resnet18",
        "use_gpu", "False"]


def _bound(reference: np.ndarray) -> float:
    return 1e-4 * (1.0 + float(np.abs(reference).max()))


def _session(path: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A vkd_resnet18 with 3 classes and non-trivial BatchNorm statistics, saved in our
    checkpoint format; returns ``(model in eval mode, checkpoint path, missing data root)``."""
    torch.manual_seed(0)
    model = build_model("vkd_resnet18", NUM_CLASSES, pretrained=False)
    with torch.no_grad():  # eval-mode BatchNorm that is not the identity
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("export_ckpt")
    path = str(folder / "model" / ckpt_io.LATEST_NAME)
    os.makedirs(os.path.dirname(path))
    ckpt_io.atomic_save({"state_dict": model.state_dict(), "epoch": 1,
                         "meta": {"arch": model.arch, "num_classes": model.num_classes,
                                  "stage": "teacher", "generation": 0}}, path)
    return model.eval(), path, str(folder / "no_such_data_root")


def _argv(weights: str, output: str, root: str, *opts: str):
    return ["--config-file", "vkd_mars_r50", "--weights", weights, "--output", output,
            *SIZE, "data.root", root, *opts]


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """One export through ``main`` (a packaged config by name, with overrides), with the data
    manager made to fail if anything builds one; returns ``(exit code, stdout, image path,
    tracklet path)``."""
    _, weights, root = tiny
    out = tmp_path_factory.mktemp("export_out")
    output = str(out / "tiny.onnx")

    def no_data(*args, **kwargs):
        raise AssertionError("the export built a data manager")

    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.setattr(VKDDataManager, "from_config", no_data)
        code = export.main(_argv(weights, output, root))
    return code, stdout.getvalue(), output, str(out / "tiny_tracklet.onnx")


def _run(capsys, argv):
    code = export.main(argv)
    captured = capsys.readouterr()
    return code, [line for line in captured.err.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the models

@pytest.mark.slow  # two ONNX exports (seconds)
def test_exports_both_models_and_prints_the_check(exported, tiny):
    code, out, image, tracklet = exported
    assert code == 0, out
    assert sorted(os.listdir(os.path.dirname(image))) == ["tiny.onnx", "tiny_tracklet.onnx"]
    assert export.tracklet_path(image) == tracklet
    checks = [line for line in out.splitlines() if line.startswith("check ")]
    assert len(checks) == 2 and all(line.endswith(": ok") for line in checks), out
    assert image in checks[0] and tracklet in checks[1]
    assert not os.path.exists(tiny[2])  # data.root was never created, let alone read


@pytest.mark.slow  # two ONNX exports (seconds)
def test_image_model_matches_pytorch_at_other_batch_sizes(exported, tiny):
    model = tiny[0]
    session = _session(exported[2])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "embeddings")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, HEIGHT, WIDTH]
    assert inp.type == "tensor(float)" and out.shape[1] == model.feature_dim
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, HEIGHT, WIDTH, generator=gen)
        with torch.no_grad():
            want = model(x).numpy()  # eval mode: the un-normalised per-frame embedding
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == (batch, model.feature_dim) and got.dtype == np.float32
        assert np.abs(got - want).max() <= _bound(want)


@pytest.mark.slow  # two ONNX exports (seconds)
def test_tracklet_model_is_the_mean_of_frame_embeddings(exported, tiny):
    model = tiny[0]
    session = _session(exported[3])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("tracklets", "set_embeddings")
    assert all(isinstance(d, str) for d in inp.shape[:2]) and inp.shape[2:] == [3, HEIGHT, WIDTH]
    assert inp.shape[0] != inp.shape[1]  # batch and frames vary independently
    gen = torch.Generator().manual_seed(2)
    for batch, frames in ((1, 1), (2, 5)):
        x = torch.randn(batch, frames, 3, HEIGHT, WIDTH, generator=gen)
        with torch.no_grad():  # an independent mean of per-frame embeddings
            want = torch.stack([model(x[i]).mean(0) for i in range(batch)]).numpy()
        (got,) = session.run(None, {"tracklets": x.numpy()})
        assert got.shape == (batch, model.feature_dim)
        assert np.abs(got - want).max() <= _bound(want)
        # and what our evaluation extracts for these items
        loader = [Batch(img=x, pid=torch.zeros(batch, dtype=torch.long),
                        camid=torch.zeros(batch, dtype=torch.long))]
        emb = extract(model, loader, torch.device("cpu")).emb.numpy()
        assert np.abs(got - emb).max() <= _bound(emb)


# ----------------------------------------------------------------------------- errors

def test_missing_weights_is_one_line_and_writes_nothing(capsys, tiny, tmp_path):
    missing = str(tmp_path / "no_such.pth.tar")
    output = tmp_path / "out" / "m.onnx"
    code, err = _run(capsys, _argv(missing, str(output), tiny[2]))
    assert code == export.EXIT_ERROR
    assert len(err) == 1 and err[0].startswith("error:") and missing in err[0]
    assert not output.parent.exists()


def test_wrong_architecture_is_one_line_naming_both(capsys, tiny, tmp_path):
    output = tmp_path / "m.onnx"
    code, err = _run(capsys, _argv(tiny[1], str(output), tiny[2], "model.name", "vkd_resnet34"))
    assert code == export.EXIT_ERROR and len(err) == 1 and err[0].startswith("error:")
    assert "vkd_resnet18" in err[0] and "vkd_resnet34" in err[0] and tiny[1] in err[0]
    # torchreid's layout declares no architecture: model.name is tried and named
    plain = str(tmp_path / "torchreid.pth.tar")
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny[0].state_dict().items()},
                "epoch": 1}, plain)
    code, err = _run(capsys, _argv(plain, str(output), tiny[2], "model.name", "vkd_resnet34"))
    assert code == export.EXIT_ERROR and len(err) == 1 and err[0].startswith("error:")
    assert plain in err[0] and "vkd_resnet34" in err[0] and "declares no architecture" in err[0]
    assert os.listdir(tmp_path) == ["torchreid.pth.tar"]
    assert not os.path.exists(tiny[2])


def test_missing_onnxruntime_names_the_install_command(capsys, monkeypatch, tiny, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    code, err = _run(capsys, _argv(tiny[1], str(tmp_path / "m.onnx"), tiny[2]))
    assert code == export.EXIT_ERROR and len(err) == 1
    assert "onnxruntime" in err[0] and "pip install vkd_torchreid[export]" in err[0]
    assert os.listdir(tmp_path) == []


def test_failed_exporter_leaves_no_file(capsys, monkeypatch, tiny, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    code, err = _run(capsys, _argv(tiny[1], str(tmp_path / "m.onnx"), tiny[2]))
    assert code == export.EXIT_ERROR and len(err) == 1
    assert "unsupported operator" in err[0]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # two ONNX exports (seconds)
def test_failed_check_keeps_the_old_file_and_the_model(monkeypatch, tiny, tmp_path):
    """A check that does not hold: an ExportError, the previous file untouched, no temporary
    file left, and the caller's model not changed (still in train mode)."""
    model = build_model("vkd_resnet18", NUM_CLASSES, pretrained=False).train()
    output = tmp_path / "m.onnx"
    output.write_bytes(b"previous export")
    monkeypatch.setattr(onnx_check, "TOLERANCE", -1.0)  # no difference can pass
    with pytest.raises(export.ExportError, match="does not match PyTorch"):
        export.export_onnx(model, HEIGHT, WIDTH, str(output))
    assert output.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert model.training


def test_tracklet_path():
    assert export.tracklet_path("a/b/model.onnx") == "a/b/model_tracklet.onnx"
    assert export.tracklet_path("model") == "model_tracklet"
