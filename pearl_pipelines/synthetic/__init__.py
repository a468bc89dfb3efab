"""The synthetic NAIP-like regions PEARL trains, tests and demos on: a scene generator (`scene`, with material
spectra from `spectra`) and building a region file's synthetic grid into the local STAC catalog (`regions`),
plus the simulated mapper that clicks on their reference labels.

Production code reads and writes real or synthetic imagery alike through `pearl_pipelines.geo`; nothing in `geo`
imports this package.
"""
