"""BatchNorm folding for export: every BatchNorm that directly and solely follows a conv
is folded into that conv, so the deployed graph has no BatchNorm nodes left."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def fold_batchnorm(model):
    """Fold conv -> BatchNorm2d pairs (eval mode); returns a torch.fx GraphModule.

    Uses torch.fx to see the graph; a model fx cannot trace is returned unfolded
    (ONNX Runtime and TensorRT fold BatchNorm themselves at build time).
    """
    import torch.fx
    import torch.nn as nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:
        log.debug("fx cannot trace the model (%s); BatchNorm left unfolded", e)
        return model
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules.get(src.target), nn.Conv2d)):
            fused = fuse_conv_bn_eval(modules[src.target], modules[node.target])
            _set_submodule(gm, src.target, fused)
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()


def _set_submodule(root, target: str, module) -> None:
    parent_name, _, attr = target.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, module)
