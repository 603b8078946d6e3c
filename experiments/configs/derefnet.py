"""DeRefNet (SPEC §5) with the paper's training protocol.

``--config=derefnet`` paper settings; ``--config=derefnet:quick`` CPU quickstart on ``seqcsist/mini``;
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
    variant = arg or ""
    if variant == "quick":
        # 2 CPU cores: a lighter network (the paper's architecture, fewer stages) to reach a useful map in ~5 min.
        config.model.num_stages = 3
        config.model.channels = 16
    elif variant == "smoke":
        config.model.num_stages = 2
        config.model.channels = 4
    return common.apply_variant(config, variant)
