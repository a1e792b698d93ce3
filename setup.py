"""setuptools entry point. Metadata, dependencies and extras live in setup.cfg.

This file exists for one mapping setup.cfg cannot express next to automatic package
discovery: the repository's top-level ``profiles/`` folder (where every device
profile is written and read in a checkout) is installed as ``legr_edge/profiles``,
so that ``--profile jetson-orin-nano`` works after ``pip install`` from any directory.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["legr_edge", "legr_edge.*"]) + ["legr_edge.profiles"],
    package_dir={"legr_edge.profiles": "profiles"},
    package_data={"legr_edge.data": ["*.npz"], "legr_edge.profiles": ["*.toml"]},
)
