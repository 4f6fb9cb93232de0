"""The configuration: schema and defaults (:mod:`.defaults`), reading files and overrides
(:mod:`.loading`), validation (:mod:`.validation`)."""
from vkd_torchreid.config.defaults import STAGES, get_default_config
from vkd_torchreid.config.loading import (
    REMOVED_KEYS,
    ConfigExtension,
    build_config,
    derive_config,
    merge_from_file,
    merge_from_list,
    resolve_config_file,
)
from vkd_torchreid.config.validation import CHOICES, RANGES, get_key, validate_config

__all__ = ["CHOICES", "RANGES", "REMOVED_KEYS", "STAGES", "ConfigExtension", "build_config",
           "derive_config", "get_default_config", "get_key", "merge_from_file", "merge_from_list",
           "resolve_config_file", "validate_config"]
