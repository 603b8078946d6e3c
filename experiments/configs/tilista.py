"""TiLISTA (public config ``TiLISTA.py``): LIHT's settings (16 layers, λ = 0.4; Adam 1e-4, L2 1e-5, 100 epochs,
``shared_storage`` and ``public_broadcast`` options) with TiLISTA's model. ``:smoke`` keeps 2 layers.
"""

import ml_collections

from experiments.configs import liht


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = liht.get_config(arg)
    config.model.name = "tilista"
    return config
