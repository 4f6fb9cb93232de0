"""``python setup.py develop`` (torchreid's install) and other setup.py commands: the metadata is
the PEP 621 table in pyproject.toml; this shim only hands over to setuptools."""
from setuptools import setup

setup()
