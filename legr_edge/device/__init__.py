"""The device half: profile pruned models on the target and pick one (no torch needed).

profiles     strict TOML device profiles (profiles/*.toml, built-in cpu-ort)
backends     ONNX Runtime, TensorRT, torch eager behind one life cycle
timing       the one trtexec-style timing loop and its statistics
fingerprint  what machine (and power mode, clocks, versions) a number came from
rundir       reading the run directory the workstation half wrote
report       Pareto fronts, the printed table, the plot
"""
