"""The device half: profile pruned models on the target and pick one (no torch needed).

profiles     strict TOML device profiles (shipped: profiles/*.toml as package data)
backends     ONNX Runtime, TensorRT (tensorrt_build: planning, tensorrt: GPU runtime,
             cuda_api: cuda-python or pycuda), torch eager, behind one life cycle
fp16         FP32 -> FP16 ONNX conversion on the device (TensorRT >= 11)
onnx_info    opset, float type, Q/DQ of an ONNX file
timing       the one trtexec-style timing loop and its statistics
fingerprint  what machine (and power mode, clocks, versions) a number came from
cache        which earlier measurements profile may keep (complete, sane, same ONNX)
results      the latency CSV schema (pick reads it) and the JSON report
report       Pareto fronts, the printed table, the plot
(rundir      moved to legr_edge.rundir, the run-directory contract both halves share)
"""
