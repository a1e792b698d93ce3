"""Latency as a pruning cost, measured on the device (no torch anywhere in this package).

``graph``  reads the dense network's prunable layers from its ONNX file, builds
           single-layer graphs and pruned whole-network graphs with ``onnx.helper``;
``table``  the per-layer latency table: the JSON contract, validation, interpolation
           and the calibrated whole-network prediction;
``legr_edge.latency_table`` (the command) measures and writes the table.
"""
