"""Alias of ``derefnet:quick``: DeRefNet on ``seqcsist/mini`` in about 5 minutes on 2 CPU cores."""

import ml_collections

from experiments.configs import derefnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    return derefnet.get_config("quick")
