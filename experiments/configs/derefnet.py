"""DeRefNet (SPEC §5) with the paper's training protocol.

``--config=derefnet`` the public run exactly (SPEC §8: global batch 4 in the public sampler's order, `overwrite`
labels, mmcv's offset-gradient rule, device-resident training with ``steps_per_call`` steps per dispatch); ``--config=derefnet:quick`` CPU quickstart on ``seqcsist/mini``;
``--config=derefnet:smoke`` seconds-long end-to-end check.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base_config()
    config.model.name = "derefnet"
    config.model.num_stages = 9
    config.model.channels = 32
    config.model.time_encoding = True
    config.model.selective_attention = True
    config.model.window = 5
    config.model.predict_edges = False
    # Offset-gradient rule of the deformable convs at sample points exactly on -1: "mmcv" (the public code's
    # library) or "torchvision"; "float32" or "bfloat16" convolutions (params and optimiser stay float32).
    config.model.edge_grad = "mmcv"
    config.model.compute_dtype = "float32"
    variant = arg or ""
    if not variant:
        common.apply_paper_protocol(config)
        config.device_data = True
        config.steps_per_call = 100
    if variant == "quick":
        # 2 CPU cores: a lighter network (the paper's architecture, fewer stages) to reach a useful map in ~5 min.
        config.model.num_stages = 3
        config.model.channels = 16
        config.model.edge_grad = "torchvision"  # as the shipped derefnet_quick weights were trained
    elif variant == "smoke":
        config.model.num_stages = 2
        config.model.channels = 4
        config.model.edge_grad = "torchvision"
    return common.apply_variant(config, variant)
