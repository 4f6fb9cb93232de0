"""The experiment configs, installed with the package as ``vkd_torchreid.configs``."""
