"""The application layer: run configuration, runs from a configuration, checkpoints.

The command line (:mod:`privfl.cli`) is a thin layer over these modules.
"""
