"""Reading configs: YAML files with ``_BASE_`` inheritance, ``KEY VALUE`` overrides, unknown and
removed keys reported with what to do, and packaged configs found by name."""
from __future__ import annotations

import ast
import dataclasses
import os
from typing import Any, Callable, Dict, List, Sequence, Tuple

from yacs.config import CfgNode as CN

from vkd_torchreid.config.defaults import get_default_config
from vkd_torchreid.config.validation import validate_config
from vkd_torchreid.utils.jsonio import FileFormatError, read_yaml
from vkd_torchreid.utils.logs import one_line

#: Where ``configs/*.yaml`` are installed (the repository's configs/ folder, shipped as
#: package data).
PACKAGED_CONFIGS = "vkd_torchreid.configs"

def _section_keys(cfg: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.extend(_section_keys(v, full + ".") if isinstance(v, CN) else [full])
    return keys


def _unknown_key_error(cfg: CN, key: str) -> KeyError:
    section = key.rsplit(".", 1)[0] if "." in key else ""
    node = cfg
    for part in section.split(".") if section else []:
        if not isinstance(node, CN) or part not in node:
            node = None
            break
        node = node[part]
    if isinstance(node, CN):
        valid = ", ".join(_section_keys(node, section + "." if section else ""))
        return KeyError(f"unknown config key {key!r}; valid keys of {section or 'the root'}: {valid}")
    return KeyError(f"unknown config key {key!r}; sections: {', '.join(sorted(cfg.keys()))}")


#: Keys that existed and were removed: what to do instead.
REMOVED_KEYS: Dict[str, str] = {
    "train.start_epoch": "a run continues from the epoch of its checkpoint: use --resume "
                         "[PATH] or model.resume PATH",
}


def _removed(key: str) -> KeyError:
    return KeyError(f"config key {key} was removed: {REMOVED_KEYS[key]}")


def _check_keys(root: CN, node: CN, other: CN, prefix: str = "") -> None:
    for k, v in other.items():
        full = f"{prefix}{k}"
        if k == "_BASE_":
            continue
        if full in REMOVED_KEYS:
            raise _removed(full)
        if k not in node:
            raise _unknown_key_error(root, full)
        if isinstance(v, dict) and isinstance(node[k], CN):
            _check_keys(root, node[k], v, full + ".")


def _config_chain(path: str, children: Tuple[str, ...] = ()) -> List[Tuple[str, dict]]:
    """(file, its mapping without ``_BASE_``) of ``path`` and its bases, the farthest base
    first."""
    if not os.path.isfile(path):
        via = f" (the _BASE_ of {children[-1]})" if children else ""
        raise FileNotFoundError(f"config file not found: {path}{via}")
    loaded = read_yaml(path)  # a parse error names the file, with line and column
    if loaded is None:  # empty, or only comments
        loaded = {}
    if not isinstance(loaded, dict):
        raise FileFormatError(f"{path}: not a config: it holds a {type(loaded).__name__}, "
                              "expected a mapping of sections (model:, data:, train: ...)")
    base = loaded.pop("_BASE_", None)
    if base is None:
        return [(path, loaded)]
    if not isinstance(base, str) or not base:
        raise FileFormatError(f"{path}: _BASE_ {base!r}: expected the path of a config file")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    chain = (*children, path)
    if os.path.abspath(base_path) in {os.path.abspath(p) for p in chain}:
        raise FileFormatError(f"{path}: _BASE_ {base} loops back to a file of its own chain "
                              f"({' -> '.join(chain)})")
    return _config_chain(base_path, chain) + [(path, loaded)]


def merge_from_file(cfg: CN, path: str) -> CN:
    """Merges a YAML file (with optional ``_BASE_`` inheritance) into ``cfg``: its farthest
    base first, each file over the one it inherits.

    Raises:
        FileNotFoundError: the file (or one of its bases) does not exist.
        FileFormatError: a file that is not YAML or not a mapping, or a ``_BASE_`` loop (one
            line naming the file, with the parser's message, line and column).
        KeyError: a file holds a key the project does not know; the message names the file
            and lists the valid keys of that section.
        ValueError: a value of the wrong type (the file and the key named).
    """
    for file, loaded in _config_chain(path):
        try:
            _check_keys(cfg, cfg, loaded)
        except KeyError as exc:
            raise KeyError(f"{file}: {one_line(exc)}") from None
        try:
            cfg.merge_from_other_cfg(CN(loaded))
        except ValueError as exc:
            raise ValueError(f"{file}: {one_line(exc)}") from None
    return cfg


def _bare_list(value: Any, current: Any) -> Any:
    """``[vkd_mars, vkd_duke]`` -> ``['vkd_mars', 'vkd_duke']`` for a key holding a list (the
    quotes a shell would need are optional); any other value unchanged."""
    if not (isinstance(current, (list, tuple)) and isinstance(value, str)):
        return value
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value
    try:
        ast.literal_eval(text)
        return value  # a Python literal already: yacs reads it
    except (ValueError, SyntaxError):
        return [w.strip() for w in text[1:-1].split(",") if w.strip()]


def merge_from_list(cfg: CN, opts: Sequence[str]) -> CN:
    """Merges ``KEY VALUE`` overrides (``["train.lr", "0.001", ...]``) into ``cfg``; a list
    key also takes bare words (``data.sources [vkd_mars, vkd_duke]``)."""
    if len(opts) % 2:
        raise ValueError(f"overrides come in KEY VALUE pairs, got an odd list: {list(opts)}")
    opts = list(opts)
    for i, key in enumerate(opts[0::2]):
        if key in REMOVED_KEYS:
            raise _removed(key)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], CN):
                raise _unknown_key_error(cfg, key)
            node = node[part]
        if parts[-1] not in node:
            raise _unknown_key_error(cfg, key)
        opts[2 * i + 1] = _bare_list(opts[2 * i + 1], node[parts[-1]])
    try:
        cfg.merge_from_list(opts)
    except ValueError as exc:
        raise ValueError(f"bad override: {exc}") from exc
    return cfg


def resolve_config_file(path: str) -> str:
    """``path`` if it is a file, else the packaged config of that name (``vkd_mars_r50`` or
    ``vkd_mars_r50.yaml``), so that an installed package finds its paper configs by name.

    Raises:
        FileNotFoundError: neither exists.
    """
    if os.path.isfile(path) or os.path.dirname(path):
        return path
    from importlib import resources

    name = path if path.endswith((".yaml", ".yml")) else f"{path}.yaml"
    try:
        packaged = resources.files(PACKAGED_CONFIGS) / name
    except ModuleNotFoundError:  # the configs are not installed with the package
        return path
    return str(packaged) if packaged.is_file() else path


@dataclasses.dataclass(frozen=True)
class ConfigExtension:
    """A section an application adds to the schema (detectron2's ``add_*_config``), with the
    validation of that section."""

    add: Callable[[CN], None]
    validate: Callable[[CN], None]


def build_config(config_file: str = "", opts: Sequence[str] = (),
                 extensions: Sequence[ConfigExtension] = ()) -> CN:
    """Default config (plus the extensions' sections), then the file (a path, or the name
    of a packaged config), then ``KEY VALUE`` overrides, validated and frozen."""
    cfg = get_default_config()
    for extension in extensions:
        extension.add(cfg)
    if config_file:
        merge_from_file(cfg, resolve_config_file(config_file))
    merge_from_list(cfg, opts)
    return _validated(cfg, extensions)


def derive_config(cfg: CN, opts: Sequence[Any], extensions: Sequence[ConfigExtension] = ()
                  ) -> CN:
    """A copy of a built config with ``KEY VALUE`` changes (values as strings, parsed as on
    the command line, or as Python objects), validated again and frozen: a config derived from
    a valid one is checked like any other."""
    out = cfg.clone()
    out.defrost()
    merge_from_list(out, opts)
    return _validated(out, extensions)


def _validated(cfg: CN, extensions: Sequence[ConfigExtension]) -> CN:
    validate_config(cfg)
    for extension in extensions:
        extension.validate(cfg)
    cfg.freeze()
    return cfg
