"""Config: defaults, file/override merging, unknown keys and every validation rule."""
from __future__ import annotations

import os

import pytest

import vkd_torchreid  # noqa: F401  (registers datasets and models)
from vkd_torchreid.config import build_config, get_default_config, merge_from_list, validate_config


def _cfg(**overrides):
    cfg = get_default_config()
    merge_from_list(cfg, [x for kv in overrides.items() for x in (kv[0].replace("__", "."), str(kv[1]))])
    return cfg


def test_defaults_are_the_reference_and_valid():
    cfg = get_default_config()
    assert cfg.train.optim == "adam" and cfg.train.lr == 1e-4 and cfg.train.weight_decay == 1e-5
    assert cfg.vkd.tau == 10.0 and cfg.vkd.alpha == 0.1 and cfg.vkd.beta == 1e-4
    assert cfg.video.seq_len == 8 and cfg.vkd.student_frames == 2
    assert cfg.sampler.train_sampler == "MultiViewSampler"
    assert cfg.data.mars_query_in_gallery is True and cfg.vkd.reinit_layer4 is True
    validate_config(cfg)


def test_torchreid_key_names_exist():
    cfg = get_default_config()
    for key in ("model.name", "model.pretrained", "model.load_weights", "model.resume",
                "data.root", "data.sources", "data.targets", "data.height", "data.width",
                "data.workers", "data.save_dir", "sampler.num_instances", "train.optim",
                "train.lr", "train.weight_decay", "train.max_epoch", "train.batch_size",
                "train.stepsize", "train.gamma", "train.seed", "test.batch_size",
                "test.dist_metric", "test.eval_freq", "test.ranks", "test.evaluate",
                "video.seq_len", "video.sample_method", "video.pooling_method", "use_gpu"):
        node = cfg
        for part in key.split("."):
            node = node[part]


def test_file_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n  max_epoch: 7\n")
    (tmp_path / "exp.yaml").write_text("_BASE_: base.yaml\ntrain:\n  max_epoch: 9\n")
    cfg = build_config(str(tmp_path / "exp.yaml"), ["train.gamma", "0.5"])
    assert cfg.train.lr == 0.001 and cfg.train.max_epoch == 9 and cfg.train.gamma == 0.5
    assert cfg.is_frozen()


def test_unknown_key_lists_valid_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match=r"train.learning_rate.*train.lr"):
        build_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(KeyError, match=r"vkd.taux.*vkd.tau"):
        build_config("", ["vkd.taux", "3"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_config("nope.yaml")


@pytest.mark.parametrize("key,value,match", [
    ("vkd.stage", "teacherr", "vkd.stage"),
    ("vkd.view_strategy", "cams", "vkd.view_strategy"),
    ("vkd.teacher_bn", "frozen", "vkd.teacher_bn"),
    ("vkd.logits_loss", "l1", "vkd.logits_loss"),
    ("vkd.alpha", "-1.0", "vkd.alpha"),
    ("vkd.beta", "-0.1", "vkd.beta"),
    ("vkd.tau", "0.0", "vkd.tau"),
    ("vkd.generations", "0", "vkd.generations"),
    ("vkd.generation_lr_decay", "0.0", "vkd.generation_lr_decay"),
    ("model.name", "resnet50", "model.name"),
    ("model.last_stride", "3", "model.last_stride"),
    ("data.sources", "['market1501']", "data.sources"),
    ("data.targets", "['nope']", "data.targets"),
    ("data.atrw_views", "flank", "data.atrw_views"),
    ("data.random_erase_prob", "1.5", "data.random_erase_prob"),
    ("data.random_erase_scale", "[0.5, 0.1]", "data.random_erase_scale"),
    ("data.random_erase_ratio", "[2.0]", "data.random_erase_ratio"),
    ("data.norm_std", "[0.2, 0.0, 0.2]", "data.norm_std"),
    ("data.workers", "-1", "data.workers"),
    ("sampler.train_sampler", "FancySampler", "sampler.train_sampler"),
    ("sampler.num_instances", "64", "sampler.num_instances"),
    ("sampler.num_instances", "0", "sampler.num_instances"),
    ("train.batch_size", "30", "train.batch_size"),
    ("train.batch_size", "4", "2 identities or more"),
    ("train.lr", "0.0", "train.lr"),
    ("train.gamma", "1.5", "train.gamma"),
    ("train.amp", "fp8", "train.amp"),
    ("train.optim", "lion", "train.optim"),
    ("train.stepsize", "[200, 100]", "train.stepsize"),
    ("train.max_epoch", "-1", "train.max_epoch"),
    ("test.ranks", "[0, 5]", "test.ranks"),
    ("test.dist_metric", "manhattan", "test.dist_metric"),
    ("video.sample_method", "random", "video.sample_method"),
    ("video.seq_len", "0", "video.seq_len"),
    ("video.test_chunk", "0", "video.test_chunk"),
    ("loss.triplet.margin", "-0.3", "loss.triplet.margin"),
])
def test_invalid_values_name_the_key(key, value, match):
    cfg = get_default_config()
    merge_from_list(cfg, [key, value])
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)


def test_student_needs_m_smaller_than_n_and_a_teacher():
    cfg = _cfg(vkd__stage="student", vkd__teacher_checkpoint="t.pth", vkd__student_frames=8)
    with pytest.raises(ValueError, match=r"vkd.student_frames=8.*M < N"):
        validate_config(cfg)
    cfg = _cfg(vkd__stage="student")
    with pytest.raises(ValueError, match="vkd.teacher_checkpoint"):
        validate_config(cfg)
    validate_config(_cfg(vkd__stage="student", vkd__teacher_checkpoint="t.pth"))


def test_fp16_needs_gpu():
    cfg = _cfg(train__amp="fp16", use_gpu=False)
    with pytest.raises(ValueError, match="train.amp"):
        validate_config(cfg)


def test_odd_override_list():
    with pytest.raises(ValueError, match="KEY VALUE"):
        build_config("", ["train.lr"])


def test_list_keys_take_bare_words():
    for value in ("[vkd_mars, vkd_duke]", "['vkd_mars', 'vkd_duke']", "[vkd_mars,vkd_duke]"):
        assert build_config("", ["data.sources", value]).data.sources == ["vkd_mars",
                                                                          "vkd_duke"]
    assert build_config("", ["data.targets", "[]"]).data.targets == []
    assert build_config("", ["train.stepsize", "[3, 5]"]).train.stepsize == [3, 5]
    with pytest.raises(ValueError, match="data.sources"):  # still validated
        build_config("", ["data.sources", "[market]"])
    with pytest.raises(ValueError, match="bad override"):  # a list key takes no bare string
        build_config("", ["data.sources", "vkd_mars"])


@pytest.mark.parametrize("key,value", [
    ("demo.ids", "2"), ("demo.cams", "1"), ("demo.val_every", "0"), ("demo.patience", "-1"),
    ("demo.min_delta", "-0.1"), ("demo.student_stepsize", "[20, 10]"), ("demo.train_ids", "64"),
])
def test_demo_section_is_an_extension_that_validates_its_keys(key, value):
    from vkd_torchreid.apps.demo_config import DEMO_CONFIG

    assert "demo" not in get_default_config()  # the core schema has no demo section
    with pytest.raises(KeyError, match="demo"):
        build_config("", [key, value])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_config("", [key, value], [DEMO_CONFIG])
    assert build_config("", [], [DEMO_CONFIG]).demo.enabled is False


def _whole(message: str, path: str) -> None:
    """One line naming ``path``, with the parser's positions, not cut in a sentence."""
    assert "\n" not in message and path in message, message
    assert "line" in message and "column" in message, message
    assert not message.rstrip().endswith((":", ",", "(")), message


@pytest.mark.parametrize("text,sentences", [
    # truncated in a quoted string: both of PyYAML's sentences, each with its position
    ("train:\n  lr: 0.001\n  optim: 'ada", ["while scanning a quoted scalar (line 3, column 10)",
                                           "found unexpected end of stream (line 3, column 14)"]),
    ("train:\n  stepsize: [10, 20\n", ["while parsing a flow sequence (line 2, column 13)",
                                       "expected ',' or ']', but got '<stream end>' (line 3, "
                                       "column 1)"]),
    ("train:\n  lr: 0.1\n optim: sgd\n", ["while parsing a block mapping (line 1, column 1)",
                                          "expected <block end>, but found '<block mapping "
                                          "start>' (line 3, column 2)"]),
    ("train:\n\tlr: 0.1\n", ["while scanning for the next token: found character '\\t' that "
                             "cannot start any token (line 2, column 1)"]),
])
def test_a_broken_yaml_config_is_one_whole_line(tmp_path, text, sentences):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        build_config(str(path))
    message = str(info.value)
    _whole(message, str(path))
    assert message.startswith(f"{path}: not valid YAML: ")
    for sentence in sentences:
        assert sentence in message, message


def test_config_errors_name_the_file_of_the_base_chain(tmp_path):
    (tmp_path / "broken.yaml").write_text("train:\n  lr: [0.1\n")
    (tmp_path / "child.yaml").write_text("_BASE_: broken.yaml\ntrain:\n  max_epoch: 3\n")
    (tmp_path / "top.yaml").write_text("_BASE_: child.yaml\n")
    with pytest.raises(ValueError) as info:  # the broken base named, not the file given
        build_config(str(tmp_path / "top.yaml"))
    _whole(str(info.value), str(tmp_path / "broken.yaml"))
    (tmp_path / "broken.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(KeyError, match=r"broken.yaml: unknown config key 'train.learning_rate'"):
        build_config(str(tmp_path / "top.yaml"))
    (tmp_path / "broken.yaml").write_text("train:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"broken.yaml: Type mismatch .* train.lr"):
        build_config(str(tmp_path / "top.yaml"))
    (tmp_path / "broken.yaml").write_text("_BASE_: top.yaml\n")
    with pytest.raises(ValueError, match=r"broken.yaml: _BASE_ top.yaml loops back"):
        build_config(str(tmp_path / "top.yaml"))
    (tmp_path / "broken.yaml").write_text("_BASE_: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"gone.yaml \(the _BASE_ of .*broken.yaml\)"):
        build_config(str(tmp_path / "top.yaml"))


def test_a_file_that_is_not_a_config(tmp_path):
    (tmp_path / "words.yaml").write_text("just some words\n")
    with pytest.raises(ValueError, match=r"words.yaml: not a config: it holds a str"):
        build_config(str(tmp_path / "words.yaml"))
    (tmp_path / "photo.yaml").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    with pytest.raises(ValueError, match=r"photo.yaml: not a YAML file: not UTF-8 text"):
        build_config(str(tmp_path / "photo.yaml"))
    (tmp_path / "comments.yaml").write_text("# nothing set yet\n")  # as before: the defaults
    assert build_config(str(tmp_path / "comments.yaml")).train.lr == 1e-4


def test_truncated_config_through_the_cli_is_one_whole_line(tmp_path, capsys):
    from vkd_torchreid import cli

    path = tmp_path / "cut.yaml"
    path.write_text("data:\n  sources: ['vkd_mars'\n")
    assert cli.main(["--config-file", str(path)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    _whole(err.rstrip("\n"), str(path))
    assert "while parsing a flow sequence (line 2, column 12): expected ',' or ']', but got " \
           "'<stream end>' (line 3, column 1)" in err
    assert os.listdir(tmp_path) == ["cut.yaml"]  # nothing written


def test_without_the_gather_each_rank_needs_two_identities(monkeypatch):
    """Under torchrun with train.dist_gather False, each process's triplet loss sees only its
    P / world identities: one is refused (it would be NaN at every step on a GPU)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _cfg(train__batch_size=8, sampler__num_instances=2, train__dist_gather=False,
               train__dist_backend="gloo")
    validate_config(cfg)  # P = 4: two identities a process
    cfg = _cfg(train__batch_size=4, sampler__num_instances=2, train__dist_gather=False,
               train__dist_backend="gloo")
    with pytest.raises(ValueError, match=r"train.dist_gather.*only its own 1 identity"):
        validate_config(cfg)
    validate_config(_cfg(train__batch_size=4, sampler__num_instances=2,
                         train__dist_backend="gloo"))  # with the gather: 2 identities in all
