"""The docs name what exists: every ``vkd-reid`` command the README and ``docs/*.md`` mention is
a command of the CLI's own table, every config file they name is in ``configs/``, every
relative link (and its ``#anchor``) resolves, and the ``results.json`` layout is written once."""
from __future__ import annotations

import glob
import itertools
import os
import re

import pytest

from vkd_torchreid import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
README = os.path.join(REPO, "README.md")
DOCS = [README, *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]

#: ``vkd-reid`` followed by a lower-case word: the command (options start with '-', and an
#: upper-case word such as COMMAND is a placeholder).
COMMAND = re.compile(r"\bvkd-reid[ \t]+(?:\\\n[ \t]*)?([a-z][a-z0-9-]*)")
#: A config file: ``configs/X.yaml``, or a bare ``X.yaml`` in back-quotes.
CONFIG_PATH = re.compile(r"\bconfigs/([A-Za-z0-9_{},-]+)\.yaml\b")
CONFIG_NAME = re.compile(r"`([A-Za-z0-9_{},-]+)\.yaml`")
#: ``--config-file X``: a path or the name of a packaged config.
CONFIG_ARG = re.compile(r"--config-file[ \t]+([A-Za-z0-9_./-]+)")
#: ``[text](target)`` and ``![alt](target)``, not inside inline code.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
#: Files a run writes, named like configs but not configs.
NOT_CONFIGS = {"config"}


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _rel(path):
    return os.path.relpath(path, REPO)


def _expand(name):
    """``teacher_atrw_{r50,r101}`` -> both names (shell brace expansion, one level)."""
    parts = re.split(r"\{([^{}]*)\}", name)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _cli_commands():
    """The CLI's own table: ``COMMANDS`` (which holds ``APP_COMMANDS``)."""
    names = set(cli.COMMANDS)
    names |= set(getattr(cli, "APP_COMMANDS", {}))
    return names


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path):
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}[ \t]+(.+)$", text, re.M)}


def test_docs_exist():
    names = {os.path.basename(p) for p in DOCS}
    for name in ("README.md", "ARCHITECTURE.md", "datasets.md", "reproducing.md",
                 "evaluation.md", "inference.md", "analyses.md", "teacher-cache.md",
                 "distributed.md", "performance.md", "demo.md"):
        assert name in names, name


def test_every_vkd_reid_command_in_the_docs_exists():
    known = _cli_commands()
    seen = set()
    for path in DOCS:
        for match in COMMAND.finditer(_read(path)):
            name = match.group(1)
            seen.add(name)
            assert name in known, (f"{_rel(path)}: `vkd-reid {name}` is not a command; "
                                   f"the CLI has {sorted(_cli_commands())}")
    # the check reads real mentions: the README's command table and the docs' examples
    assert {"train", "eval", "search", "download", "benchmark"} <= seen


def test_every_config_the_docs_name_exists():
    shipped = {os.path.splitext(n)[0] for n in os.listdir(CONFIGS) if n.endswith(".yaml")}
    checked = 0
    for path in DOCS:
        text = _read(path)
        names = [m.group(1) for m in CONFIG_PATH.finditer(text)]
        names += [m.group(1) for m in CONFIG_NAME.finditer(text)
                  if m.group(1) not in NOT_CONFIGS]
        for arg in (m.group(1) for m in CONFIG_ARG.finditer(text)):
            if arg in ("X", "CONFIG") or arg.startswith("..."):
                continue  # placeholders of the grammar
            names.append(os.path.splitext(os.path.basename(arg))[0])
            if "/" in arg:
                assert os.path.isfile(os.path.join(REPO, arg)), f"{_rel(path)}: no file {arg}"
        for name in (n for raw in names for n in _expand(raw)):
            assert name in shipped, f"{_rel(path)}: no configs/{name}.yaml"
            checked += 1
    assert checked >= 20  # the check found the docs' configs (vkd_mars_r50 among them)


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for target in (m.group(1) for m in LINK.finditer(text)):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
            if file_part else path
        assert os.path.exists(dest), f"{_rel(path)}: broken link {target}"
        assert os.path.commonpath([dest, REPO]) == REPO, f"{_rel(path)}: {target} leaves the repo"
        if anchor:
            assert dest.endswith(".md"), f"{_rel(path)}: anchor into a non-Markdown file {target}"
            assert anchor in _anchors(dest), (f"{_rel(path)}: {target}: no heading "
                                              f"#{anchor} in {_rel(dest)}")


def test_readme_keeps_the_briefs_commands_and_spells_the_rest_vkd_reid():
    readme = _read(README)
    assert "python tools/main.py --config-file configs/vkd_mars_r50.yaml" in readme
    assert "```bash\npython -m pytest -q tests\n```" in readme  # what .ci/run runs
    assert 'python -m pytest -q -m "not slow" tests' in readme
    assert os.path.isfile(os.path.join(REPO, "configs", "vkd_mars_r50.yaml"))
    # one torchreid-style line in the README; everywhere else commands are `vkd-reid ...`
    # (tools/make_configs.py and tools/gpu_check.py are maintainers' scripts, not commands)
    assert len(re.findall(r"python tools/", readme)) == 1
    for path in DOCS[1:]:
        scripts = set(re.findall(r"python tools/(\w+)\.py", _read(path)))
        assert scripts <= {"make_configs", "gpu_check"}, (
            f"{_rel(path)}: spell {scripts} as vkd-reid commands")


def test_results_json_layout_is_written_once():
    """The layout's one copy is docs/evaluation.md; the evaluator's docstring points there."""
    sources = [*DOCS, os.path.join(REPO, "vkd_torchreid", "engine", "evaluator.py")]
    holders = [_rel(p) for p in sources if re.search(r'\{"stage": "', _read(p))]
    assert holders == [os.path.join("docs", "evaluation.md")]
    assert "docs/evaluation.md" in _read(sources[-1])
