"""legr_edge: latency-aware filter pruning of CNNs for edge deployment.

Workstation half (needs torch): ``python -m legr_edge.search`` learns one global
filter ranking (LeGR) and writes a family of pruned networks; ``legr_edge.export``
turns them into ONNX. Device half (numpy + onnx + a runtime, no torch):
``python -m legr_edge.profile`` measures them, ``python -m legr_edge.pick`` chooses.

Importing this package never imports torch.
"""
__version__ = "0.1.0"
