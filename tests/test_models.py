"""Models: builders, shapes, BNNeck, mixed precision, ImageNet init, students, weight loading."""
from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torchvision
from torch import nn

from vkd_torchreid import compat
from vkd_torchreid.models import (
    ARCHS,
    BAM,
    MODEL_BUILDERS,
    CheckpointMismatchError,
    VKDNet,
    build_model,
    build_student,
    load_weights,
    open_network,
    reference_arch,
)
from vkd_torchreid.utils.device import place

SMALL = (3, 64, 32)


@pytest.fixture(scope="module", autouse=True)
def registered():
    # vkd_torchreid registers on import; do it again in case that import skipped it.
    for name, builder in MODEL_BUILDERS.items():
        compat.register_model(name, builder)


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and BN buffer (so nothing equals a fresh init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=gen))
    return model


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=1) / b.norm(dim=1)


# ---------------------------------------------------------------- builders and shapes
def test_names_and_unknown():
    assert set(ARCHS) == {"vkd_resnet18", "vkd_resnet34", "vkd_resnet50", "vkd_resnet101",
                          "vkd_resnet50_bam", "vkd_resnet101_bam", "vkd_densenet121",
                          "vkd_mobilenetv2"}
    assert set(ARCHS) <= set(compat.model_names())
    with pytest.raises(ValueError, match="vkd_resnet50"):
        build_model("resnet_50", 3)
    with pytest.raises(ValueError, match="loss"):
        build_model("vkd_resnet18", 3, loss="arcface", pretrained=False)


#: Building and running these takes a second or more each: the slow tier.
_SLOW_ARCHS = {"vkd_resnet101", "vkd_resnet50_bam", "vkd_resnet101_bam"}


@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.slow) if a in _SLOW_ARCHS else a for a in ARCHS])
def test_shapes_through_torchreid(arch):
    dims = {"vkd_resnet18": 512, "vkd_resnet34": 512, "vkd_densenet121": 1024,
            "vkd_mobilenetv2": 1280}
    d = dims.get(arch, 2048)
    model = compat.models.build_model(arch, 5, loss="softmax", pretrained=False, use_gpu=False)
    assert isinstance(model, VKDNet) and model.feature_dim == d and model.arch == arch
    x4, x5 = torch.randn(2, *SMALL), torch.randn(2, 3, *SMALL)
    model.train()
    assert model(x4).shape == (2, 5)
    assert model(x5).shape == (2, 5)
    model.loss = "triplet"
    logits, emb = model(x5)
    assert logits.shape == (2, 5) and emb.shape == (2, d)
    model.eval()
    with torch.no_grad():
        assert model(x4).shape == (2, d)
        emb5, logits5 = model.forward_features(x5)
    assert emb5.shape == (2, d) and logits5.shape == (2, 5)


def test_set_embedding_is_mean_of_frames_and_logits_mean_after_classifier():
    model = _perturb(build_model("vkd_resnet18", 4, pretrained=False)).eval()
    x = torch.randn(2, 3, *SMALL)
    with torch.no_grad():
        emb, logits = model.forward_features(x)
        frame_emb, frame_logits = model.forward_features(x.reshape(6, *SMALL))
    torch.testing.assert_close(emb, frame_emb.view(2, 3, -1).mean(1))
    torch.testing.assert_close(logits, frame_logits.view(2, 3, -1).mean(1))
    torch.testing.assert_close(
        frame_logits, model.classifier(model.bnneck(frame_emb)), rtol=1e-5, atol=1e-6)


def test_resnet50_feature_map_last_stride_and_last_relu():
    model = build_model("vkd_resnet50", 3, pretrained=False)
    layer4 = model.backbone.layer4
    assert isinstance(layer4[-1].relu, nn.Identity)
    assert isinstance(layer4[0].relu, nn.ReLU)
    assert layer4[0].conv2.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        fmap = model.backbone.eval()(torch.zeros(1, 3, 256, 128))
    assert fmap.shape == (1, 2048, 16, 8)
    # a negative input to the last block's output survives: no ReLU at its end
    model = _perturb(model).eval()
    with torch.no_grad():
        assert (model.backbone(torch.randn(1, 3, 64, 32)) < 0).any()
    r18 = build_model("vkd_resnet18", 3, pretrained=False, last_stride=2)
    assert r18.backbone.layer4[0].conv1.stride == (2, 2)


def test_mobilenet_and_densenet_modifications():
    mob = build_model("vkd_mobilenetv2", 3, pretrained=False)
    assert mob.backbone[14].conv[1][0].stride == (1, 1)
    assert isinstance(mob.backbone[18][2], nn.Identity)
    dense = build_model("vkd_densenet121", 3, pretrained=False)
    names = [n for n, _ in dense.backbone.named_children()]
    assert names[0] == "conv0" and names[-2:] == ["denseblock4", "norm5"] and len(names) == 12


def test_bam_matches_formula():
    torch.manual_seed(0)
    bam = _perturb(BAM(64)).eval()
    x = torch.randn(2, 64, 8, 4)
    cg, sg = bam.channel_gate, bam.spatial_gate
    c = cg.fc_final(torch.relu(cg.bn(cg.fc(x.mean((2, 3))))))
    s = torch.relu(sg.reduce_bn(sg.reduce(x)))
    assert sg.dil0.dilation == (4, 4) and sg.dil0.padding == (4, 4) and sg.reduce.out_channels == 4
    for i in range(2):
        s = torch.relu(getattr(sg, f"dil{i}_bn")(getattr(sg, f"dil{i}")(s)))
    s = sg.final(s)
    with torch.no_grad():
        torch.testing.assert_close(bam(x), x * (1 + torch.sigmoid(c[:, :, None, None] * s)))
    model = build_model("vkd_resnet50_bam", 3, pretrained=False)
    assert [type(model.backbone.get_submodule(f"bam{i}")) for i in (1, 2, 3)] == [BAM] * 3
    assert model.backbone.bam3.channel_gate.fc.in_features == 1024


# ---------------------------------------------------------------- BNNeck, precision
def test_bnneck_bias_frozen_under_adam():
    model = build_model("vkd_resnet18", 4, loss="triplet", pretrained=False).train()
    assert not model.bnneck.bias.requires_grad
    assert torch.equal(model.bnneck.weight.detach(), torch.ones(512))
    assert model.classifier.bias is None
    assert 0.0005 < model.classifier.weight.std().item() < 0.002
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
    logits, emb = model(torch.randn(4, 2, *SMALL))
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])) + emb.pow(2).mean()
    loss.backward()
    before = model.bnneck.weight.detach().clone()
    opt.step()
    assert model.bnneck.bias.grad is None
    assert torch.count_nonzero(model.bnneck.bias) == 0
    assert not torch.equal(before, model.bnneck.weight.detach())


def test_channels_last_and_bf16_autocast():
    model = _perturb(build_model("vkd_resnet18", 4, loss="triplet", pretrained=False)).eval()
    x = torch.randn(2, 2, *SMALL)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model(x)
    assert emb.dtype == torch.float32 and emb.shape == (2, 512)
    assert _rel_err(emb, ref).max() <= 2e-2
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, emb = model(x)
    (logits.float().sum() + emb.sum()).backward()
    assert model.backbone.conv1.weight.grad is not None


# ---------------------------------------------------------------- ImageNet init
def _fake_imagenet(tmp_path, monkeypatch, tv_name: str, url: str) -> dict:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    state = _perturb(getattr(torchvision.models, tv_name)(weights=None), seed=3).state_dict()
    return {"state": state, "path": folder / os.path.basename(url)}


def test_pretrained_missing_names_url_and_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    expected = os.path.join(str(tmp_path), "hub", "checkpoints", "resnet50-0676ba61.pth")
    with pytest.raises(FileNotFoundError) as err:
        build_model("vkd_resnet50", 3, pretrained=True)
    msg = str(err.value)
    assert url in msg and expected in msg and "vkd_resnet50" in msg
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("vkd_resnet18", 3, pretrained_path=str(tmp_path / "nowhere.pth"))


def test_pretrained_from_hub_cache_and_path(tmp_path, monkeypatch):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert url.endswith("resnet18-f37072fd.pth")
    fake = _fake_imagenet(tmp_path, monkeypatch, "resnet18", url)
    torch.save(fake["state"], fake["path"])
    model = build_model("vkd_resnet18", 3, pretrained=True)
    torch.testing.assert_close(model.backbone.conv1.weight, fake["state"]["conv1.weight"])
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var,
                               fake["state"]["layer4.1.bn2.running_var"])
    explicit = build_model("vkd_resnet18", 3, pretrained_path=str(fake["path"]))
    torch.testing.assert_close(explicit.backbone.layer3[0].conv1.weight,
                               fake["state"]["layer3.0.conv1.weight"])
    folder = build_model("vkd_resnet18", 3, pretrained_path=str(fake["path"].parent))
    torch.testing.assert_close(folder.backbone.bn1.weight, fake["state"]["bn1.weight"])
    # BAM variant: BAM random, the ResNet from the file; a wrong file is an error
    bad = {k: v for k, v in fake["state"].items() if not k.startswith("layer2.")}
    torch.save(bad, fake["path"])
    with pytest.raises(ValueError, match="layer2.0.conv1.weight"):
        build_model("vkd_resnet18", 3)


def test_pretrained_densenet_old_style_keys(tmp_path, monkeypatch):
    url = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.url
    fake = _fake_imagenet(tmp_path, monkeypatch, "densenet121", url)
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
           for k, v in fake["state"].items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, fake["path"])
    model = build_model("vkd_densenet121", 3)
    torch.testing.assert_close(model.backbone.denseblock1.denselayer1.norm1.weight,
                               fake["state"]["features.denseblock1.denselayer1.norm1.weight"])


# ---------------------------------------------------------------- students
def _diff_keys(a: nn.Module, b: nn.Module) -> set:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return {k for k in sa if not torch.equal(sa[k], sb[k])}


def _prefixes(keys: set) -> set:
    return {k.split(".")[0] if not k.startswith("backbone.") else ".".join(k.split(".")[:2])
            for k in keys}


@pytest.mark.parametrize("arch,changed", [
    ("vkd_resnet18", {"backbone.layer4", "bnneck", "classifier"}),
    pytest.param("vkd_densenet121", {"backbone.denseblock4", "bnneck", "classifier"},
                 marks=pytest.mark.slow),
    ("vkd_mobilenetv2", {"bnneck", "classifier"}),
])
def test_student_differs_only_in_last_block_and_head(arch, changed):
    teacher = _perturb(build_model(arch, 6, pretrained=False))
    for m in teacher.modules():  # the reference's teacher mode
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, pretrained=False)
    assert student is not teacher and student.arch == arch and student.num_classes == 6
    assert _prefixes(_diff_keys(student, teacher)) == changed
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in snapshot.items())
    assert all(p.requires_grad for n, p in student.named_parameters() if n != "bnneck.bias")
    assert not student.bnneck.bias.requires_grad
    assert all(m.track_running_stats for m in student.modules()
               if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(student.bnneck.weight.detach(), torch.ones(student.feature_dim))
    assert student.last_block_names() == [p + "." for p in sorted(changed)
                                          if p.startswith("backbone.")]
    kept = build_student(teacher, reinit_last_block=False)
    assert _diff_keys(kept, teacher) == set()


def test_student_last_block_from_imagenet(tmp_path, monkeypatch):
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    fake = _fake_imagenet(tmp_path, monkeypatch, "resnet18", url)
    torch.save(fake["state"], fake["path"])
    teacher = _perturb(build_model("vkd_resnet18", 6, pretrained=True), seed=7)
    student = build_student(teacher)
    for key, value in student.backbone.layer4.state_dict().items():
        assert torch.equal(value, fake["state"]["layer4." + key]), key
    assert torch.equal(student.backbone.layer3[0].conv1.weight,
                       teacher.backbone.layer3[0].conv1.weight)


def test_cross_distillation_student():
    teacher = build_model("vkd_resnet50", 9, pretrained=False)
    student = build_student(teacher, arch="vkd_resnet18", pretrained=False)
    assert student.arch == "vkd_resnet18" and student.num_classes == 9 and student.loss == "triplet"
    assert build_student(teacher, arch="vkd_resnet50", pretrained=False).arch == "vkd_resnet50"
    with pytest.raises(ValueError, match="vkd_resnet18"):
        build_student(teacher, arch="resnet18")


# ---------------------------------------------------------------- load_weights
def test_load_our_and_torchreid_checkpoints(tmp_path):
    src = _perturb(build_model("vkd_resnet18", 5, pretrained=False))
    ours = tmp_path / "model.pth.tar-1"
    torch.save({"state_dict": src.state_dict(), "epoch": 1}, ours)
    dst = build_model("vkd_resnet18", 5, pretrained=False)
    load_weights(dst, str(ours))
    assert _diff_keys(src, dst) == set()
    wrapped = tmp_path / "torchreid.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()},
                "epoch": 3, "rank1": 0.5}, wrapped)
    dst = build_model("vkd_resnet18", 5, pretrained=False)
    load_weights(dst, str(wrapped))
    assert _diff_keys(src, dst) == set()
    bare = tmp_path / "bare.pth"
    torch.save(src.state_dict(), bare)
    dst = build_model("vkd_resnet18", 5, pretrained=False)
    load_weights(dst, str(bare))
    assert _diff_keys(src, dst) == set()


def test_load_errors(tmp_path):
    src = build_model("vkd_resnet18", 5, pretrained=False)
    state = src.state_dict()
    state.pop("backbone.layer2.0.conv1.weight")
    state["backbone.extra.weight"] = torch.zeros(1)
    state["backbone.bn1.weight"] = torch.ones(3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError) as err:
        load_weights(build_model("vkd_resnet18", 5, pretrained=False), str(path))
    msg = str(err.value)
    assert "backbone.layer2.0.conv1.weight" in msg and "backbone.extra.weight" in msg
    assert "backbone.bn1.weight" in msg and "(3,)" in msg and "(64,)" in msg
    loose = build_model("vkd_resnet18", 5, pretrained=False)
    load_weights(loose, str(path), strict=False)
    torch.testing.assert_close(loose.backbone.layer1[0].conv1.weight,
                               src.backbone.layer1[0].conv1.weight)

    torch.save({"state_dict": build_model("vkd_resnet18", 625, pretrained=False).state_dict()},
               path)
    with pytest.raises(ValueError, match="checkpoint has 625 classes, model has 100"):
        load_weights(build_model("vkd_resnet18", 100, pretrained=False), str(path))
    with pytest.raises(FileNotFoundError):
        load_weights(src, str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- open_network
def test_open_network_builds_what_the_checkpoint_declares(tmp_path):
    src = _perturb(build_model("vkd_resnet18", 5, pretrained=False))
    ours = str(tmp_path / "ours.pth")
    torch.save({"state_dict": src.state_dict(), "meta": {"arch": "vkd_resnet18"}}, ours)
    # the declared architecture wins over the default; the class count is the classifier's
    net = open_network(ours, default_arch="vkd_resnet34")
    assert (net.arch, net.num_classes) == ("vkd_resnet18", 5) and _diff_keys(src, net) == set()
    assert open_network(ours, "vkd_resnet18", 5).training  # train mode, as built
    bare = str(tmp_path / "bare.pth")  # no declared architecture: the default is built
    torch.save(src.state_dict(), bare)
    assert open_network(bare, default_arch="vkd_resnet18").arch == "vkd_resnet18"
    placed = place(net, torch.device("cpu"), channels_last=True)
    assert placed.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_open_network_errors_name_the_file_and_both_values(tmp_path):
    src = build_model("vkd_resnet18", 5, pretrained=False)
    path = str(tmp_path / "r18.pth")
    torch.save({"state_dict": src.state_dict(), "meta": {"arch": "vkd_resnet18"}}, path)
    cases = {  # (args, kwargs) -> what the one line must name
        "arch": ((path, "vkd_resnet34"), {}, ["a vkd_resnet18 network", "needs a vkd_resnet34"]),
        "classes": ((path, "", 7), {}, ["5 classes", "needs 7"]),
    }
    for name, (args, kwargs, needles) in cases.items():
        with pytest.raises(CheckpointMismatchError) as err:
            open_network(*args, key="vkd.teacher_checkpoint", **kwargs)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"vkd.teacher_checkpoint {path} holds ")
        assert all(x in msg for x in needles), (name, msg)
        assert err.value.path == path and isinstance(err.value, ValueError)
    bare = str(tmp_path / "bare.pth")  # declares nothing and does not fit the default
    torch.save(src.state_dict(), bare)
    with pytest.raises(CheckpointMismatchError, match="declares no architecture.*vkd_resnet50"):
        open_network(bare, default_arch="vkd_resnet50")
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier")}
    torch.save(headless, bare)
    with pytest.raises(CheckpointMismatchError, match="no classifier.weight"):
        open_network(bare, default_arch="vkd_resnet18")
    assert open_network(bare, default_arch="vkd_resnet18", default_classes=3,
                        strict=False).num_classes == 3
    with pytest.raises(FileNotFoundError, match=r"model.load_weights: weights not found: .*nope"):
        open_network(str(tmp_path / "nope.pth"), key="model.load_weights")


# The reference TriNet's key names, written here independently of vkd_torchreid's mapping:
# backbone.features_layers = ModuleList([Sequential(conv1, bn1, relu, maxpool),
# Sequential(layer1), ..., Sequential(layer4)]); BAM is module "bam" appended to layer1-3;
# head = classifier.bottleneck (BatchNorm1d) + classifier.classifier (Linear, no bias).
_REF_BAM = [("channel_gate.fc.", "channel_att.gate_c.gate_c_fc_0."),
            ("channel_gate.bn.", "channel_att.gate_c.gate_c_bn_1."),
            ("channel_gate.fc_final.", "channel_att.gate_c.gate_c_fc_final."),
            ("spatial_gate.reduce.", "spatial_att.gate_s.gate_s_conv_reduce0."),
            ("spatial_gate.reduce_bn.", "spatial_att.gate_s.gate_s_bn_reduce0."),
            ("spatial_gate.dil0.", "spatial_att.gate_s.gate_s_conv_di_0."),
            ("spatial_gate.dil0_bn.", "spatial_att.gate_s.gate_s_bn_di_0."),
            ("spatial_gate.dil1.", "spatial_att.gate_s.gate_s_conv_di_1."),
            ("spatial_gate.dil1_bn.", "spatial_att.gate_s.gate_s_bn_di_1."),
            ("spatial_gate.final.", "spatial_att.gate_s.gate_s_conv_final.")]


def _tv_resnet_to_reference(key: str) -> str:
    """torchvision ResNet key -> reference TriNet key."""
    if key.startswith("conv1."):
        return "backbone.features_layers.0.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "backbone.features_layers.0.1." + key[len("bn1."):]
    layer, rest = key.split(".", 1)
    return f"backbone.features_layers.{layer[-1]}.0.{rest}"


def _ours_to_reference(key: str) -> str:
    """Our key -> reference TriNet key (for the BAM round trip)."""
    if key.startswith("bnneck."):
        return "classifier.bottleneck." + key[len("bnneck."):]
    if key == "classifier.weight":
        return "classifier.classifier.weight"
    rest = key[len("backbone."):]
    if rest.startswith("bam"):
        idx, sub = rest[3], rest[5:]
        for ours, ref in _REF_BAM:
            if sub.startswith(ours):
                return f"backbone.features_layers.{idx}.0.bam.{ref}{sub[len(ours):]}"
        raise AssertionError(key)
    return _tv_resnet_to_reference(rest)


def _reference_folder(root, btype: str, state: dict, num_classes: int, nested: bool = False,
                      chk: str = "chk_end"):
    (root / "params").mkdir(parents=True)
    (root / "chk").mkdir()
    hparams = {"backbone_type": btype, "num_classes": num_classes, "pretrained": True}
    (root / "params" / "hparams.json").write_text(
        json.dumps({"hparams": hparams} if nested else hparams))
    torch.save(state, root / "chk" / chk)
    return str(root)


@pytest.mark.slow  # two ResNet-50s in float64
def test_reference_resnet50_matches_independent_forward(tmp_path):
    torch.manual_seed(0)
    tv = _perturb(torchvision.models.resnet50(weights=None), seed=1).double().eval()
    num_classes = 7
    state = {_tv_resnet_to_reference(k): v for k, v in tv.state_dict().items()
             if not k.startswith("fc.")}
    head = nn.BatchNorm1d(2048)
    state.update({"classifier.bottleneck." + k: v for k, v in head.state_dict().items()})
    state["classifier.classifier.weight"] = torch.randn(num_classes, 2048)
    assert "backbone.features_layers.4.0.2.conv3.weight" in state
    folder = _reference_folder(tmp_path / "exp", "resnet50", state, num_classes)
    assert reference_arch(folder) == ("vkd_resnet50", num_classes)
    model = build_model("vkd_resnet50", num_classes, pretrained=False)
    load_weights(model, folder)
    model = model.double().eval()

    # the reference forward, by hand: last stride 1, no ReLU anywhere in the last block
    tv.layer4[0].conv2.stride = (1, 1)
    tv.layer4[0].downsample[0].stride = (1, 1)
    x = torch.randn(2, 3, 64, 32, dtype=torch.float64)
    with torch.no_grad():
        h = tv.maxpool(torch.relu(tv.bn1(tv.conv1(x))))
        h = tv.layer4[1](tv.layer4[0](tv.layer3(tv.layer2(tv.layer1(h)))))
        last = tv.layer4[2]
        out = last.bn1(last.conv1(h))
        out = last.bn2(last.conv2(out))
        out = last.bn3(last.conv3(out)) + h
        expected = out.mean(dim=(2, 3))
        emb = model(x)
    assert out.shape[-2:] == (4, 2)
    assert (emb - expected).abs().max().item() <= 1e-5
    assert torch.equal(model.classifier.weight, state["classifier.classifier.weight"].double())


@pytest.mark.slow  # ResNet-50-BAMs built and run
def test_reference_resnet50_bam_round_trip(tmp_path):
    src = _perturb(build_model("vkd_resnet50_bam", 11, pretrained=False), seed=2).eval()
    state = {_ours_to_reference(k): v for k, v in src.state_dict().items()}
    assert "backbone.features_layers.3.0.bam.spatial_att.gate_s.gate_s_bn_di_1.running_var" in state
    assert "backbone.features_layers.1.0.bam.channel_att.gate_c.gate_c_bn_1.running_mean" in state
    folder = _reference_folder(tmp_path / "exp", "resnet50bam", state, 11, nested=True,
                               chk="chk_di_1")
    torch.save({}, tmp_path / "exp" / "chk" / "chk_end")  # chk_di_<N> is preferred
    assert reference_arch(folder) == ("vkd_resnet50_bam", 11)
    dst = build_model("vkd_resnet50_bam", 11, pretrained=False)
    load_weights(dst, folder)
    assert _diff_keys(src, dst.eval()) == set()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
    # the bare reference file: architecture and classes inferred from its keys
    chk = os.path.join(folder, "chk", "chk_di_1")
    assert reference_arch(chk) == ("vkd_resnet50_bam", 11)
    with pytest.raises(ValueError, match="vkd_resnet50_bam"):
        load_weights(build_model("vkd_resnet50", 11, pretrained=False), chk)
    with pytest.raises(ValueError, match="checkpoint has 11 classes, model has 5"):
        load_weights(build_model("vkd_resnet50_bam", 5, pretrained=False), chk)


def test_reference_hparams_errors(tmp_path):
    folder = _reference_folder(tmp_path / "exp", "resnet18", {}, 3)
    (tmp_path / "exp" / "params" / "hparams.json").write_text(json.dumps({"backbone_type": "x"}))
    with pytest.raises(ValueError, match=r"hparams\.json.*num_classes"):
        reference_arch(folder)
    with pytest.raises(ValueError, match="hparams.json"):
        reference_arch(str(tmp_path))
    (tmp_path / "exp" / "params" / "hparams.json").write_text('{"backbone_type": "resnet18",')
    with pytest.raises(ValueError, match=r"hparams\.json: not valid JSON: Expecting property "
                                         r"name enclosed in double quotes: line 1 column 30"):
        reference_arch(folder)


_DENSENET_FEATURES = ["conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1",
                      "denseblock2", "transition2", "denseblock3", "transition3", "denseblock4",
                      "norm5"]


@pytest.mark.parametrize("arch,btype", [("vkd_densenet121", "densenet121"),
                                        ("vkd_mobilenetv2", "mobilenet")])
def test_reference_densenet_mobilenet_files(tmp_path, arch, btype):
    src = _perturb(build_model(arch, 4, pretrained=False), seed=5).eval()
    state = {}
    for key, value in src.state_dict().items():
        if key.startswith("backbone."):
            child, rest = key[len("backbone."):].split(".", 1)
            index = _DENSENET_FEATURES.index(child) if btype == "densenet121" else int(child)
            key = f"backbone.features_layers.{index}.{rest}"
        else:
            key = _ours_to_reference(key)
        state[key] = value
    path = tmp_path / "chk_end"
    torch.save(state, path)
    assert reference_arch(str(path)) == (arch, 4)
    dst = build_model(arch, 4, pretrained=False)
    load_weights(dst, str(path))
    assert _diff_keys(src, dst) == set()


# ------------------------------------------------- tools/model_info.py (vkd-reid model-info)
def _conv_linear_macs(model: nn.Module, size) -> int:
    """Multiply-adds of the conv and linear layers one test-time forward pass runs (a bias
    adds one per output), counted with forward hooks."""
    total = []

    def hook(m, _inputs, out):
        if isinstance(m, nn.Conv2d):
            per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        else:
            per_out = m.in_features
        total.append((per_out + (m.bias is not None)) * out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(size))
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.slow  # a subprocess that imports torch and torchreid
def test_model_info_tool_prints_the_models_numbers():
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "tools", "model_info.py"),
                           "model.name", "vkd_resnet18", "data.height", "64", "data.width",
                           "32"],
                          capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(":", 1) for line in proc.stdout.strip().splitlines())
    lines = {k.strip(): v.strip() for k, v in lines.items()}
    model = build_model("vkd_resnet18", 625, pretrained=False)  # the tool's default classes
    params = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert params == backbone + 512 * 2 + 625 * 512  # BNNeck weight and bias, the classifier
    assert lines["model"] == "vkd_resnet18 (625 classes)" and lines["input"] == "64x32"
    assert lines["parameters"] == f"{params:,} (backbone {backbone:,})"
    assert lines["embedding"] == "512"
    # last stride 1: 64 x 32 / 16 -> a 4 x 2 map of 512 channels
    assert lines["feature map"] == "512x4x2 (CxHxW)"
    macs = _conv_linear_macs(model, (1, 3, 64, 32))
    assert lines["FLOPs"].startswith(f"{macs / 1e9:.3f} G  [torchreid compute_model_complexity")
