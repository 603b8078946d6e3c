"""The SeqCSIST paper's published comparison table (SPEC §7; Zhai et al., IEEE TGRS 2025, Table of SOTA results).

These numbers were obtained by the authors at full scale (100 epochs on the 3,500 public training trajectories,
4 GPUs; SRCNN 200 epochs) and scored on the 750 public test trajectories. They are reference values only: they are
never mixed with numbers measured by this project. CSO-mAP and AP values are ×100; FPS is the paper's (its
hardware); ``params`` is the paper's printed string (``None`` where the paper prints "–").
"""

from __future__ import annotations

from typing import NamedTuple


class PublishedResult(NamedTuple):
    """One row of the paper's table."""

    label: str
    mAP: float
    AP05: float
    AP10: float
    AP15: float
    AP20: float
    AP25: float
    fps: float
    params: str | None


SOURCE = "SeqCSIST paper (Zhai et al., IEEE TGRS 2025, arXiv 2507.09556), comparison table; SPEC §7"

#: Keyed by this project's config name where one exists (lower-case label otherwise).
PUBLISHED: dict[str, PublishedResult] = {
    "ista": PublishedResult("ISTA", 10.72, 0.14, 1.97, 8.74, 18.22, 24.53, 0.1, None),
    "bid": PublishedResult("BID", 14.40, 0.00, 3.00, 13.00, 26.00, 30.00, 0.1, None),
    "srcnn": PublishedResult("SRCNN", 49.64, 1.40, 16.30, 51.20, 85.00, 94.30, 102961, "15.8 K"),
    "gmfn": PublishedResult("GMFN", 50.94, 0.70, 11.90, 51.20, 92.10, 98.80, 855, "2.80 M"),
    "dbpn": PublishedResult("DBPN", 50.40, 0.80, 12.50, 51.20, 90.00, 97.40, 7109, "1.96 M"),
    "srgan": PublishedResult("SRGAN", 26.96, 0.30, 3.90, 19.40, 46.90, 64.30, 12965, "35.3 M"),
    "bsrgan": PublishedResult("BSRGAN", 33.21, 0.40, 6.10, 27.50, 57.20, 74.90, 1528, "36.1 M"),
    "esrgan": PublishedResult("ESRGAN", 36.86, 0.40, 6.00, 30.30, 66.80, 80.70, 1024, "50.5 M"),
    "rdn": PublishedResult("RDN", 49.61, 0.70, 10.60, 48.20, 90.40, 98.20, 919, "22.3 M"),
    "edsr": PublishedResult("EDSR", 50.19, 0.60, 10.30, 48.80, 92.20, 99.00, 11476, "0.39 M"),
    "espcn": PublishedResult("ESPCN", 47.18, 1.60, 15.30, 46.60, 80.30, 92.00, 144901, None),
    "tdan": PublishedResult("TDAN", 47.96, 0.50, 8.60, 43.80, 89.30, 97.50, 259, "0.59 M"),
    "liht": PublishedResult("LIHT", 6.36, 0.10, 1.00, 4.30, 10.40, 16.00, 253, "21.1 M"),
    "lamp": PublishedResult("LAMP", 9.09, 0.10, 1.50, 6.50, 15.00, 22.30, 7172, "2.13 M"),
    "istanet": PublishedResult("ISTA-Net", 48.95, 0.70, 11.20, 49.70, 87.70, 95.40, 4052, "0.17 M"),
    "fistanet": PublishedResult("FISTA-Net", 50.61, 1.00, 12.60, 51.40, 90.70, 97.30, 4052, "74.6 K"),
    "istanet_plus": PublishedResult("ISTA-Net+", 51.02, 1.00, 13.70, 52.70, 90.40, 93.70, 5504, "0.38 M"),
    "istanet_pp": PublishedResult("ISTA-Net++", 50.50, 0.70, 10.40, 49.20, 92.80, 99.40, 1751, "0.76 M"),
    "lista": PublishedResult("LISTA", 9.39, 0.10, 1.70, 6.90, 15.40, 22.70, 490, "21.1 M"),
    "usrnet": PublishedResult("USRNet", 49.25, 0.70, 9.80, 46.60, 91.20, 98.90, 622, "1.07 M"),
    "tilista": PublishedResult("TiLISTA", 13.52, 0.20, 2.10, 9.50, 22.60, 33.30, 4716, "2.22 M"),
    "rpcanet": PublishedResult("RPCANet", 47.17, 0.70, 10.20, 44.50, 84.60, 95.90, 2601, "0.68 M"),
    "derefnet": PublishedResult("DeRefNet", 51.55, 1.00, 14.40, 54.90, 90.40, 97.10, 367, "0.89 M"),
}

#: Rows whose printed CSO-mAP is not the mean of their printed APs (a typo in the paper; kept as printed):
#: ISTA-Net+ (51.02 vs 50.30: AP25 93.70 looks mistyped) and USRNet (49.25 vs 49.44).
INCONSISTENT_ROWS = frozenset({"istanet_plus", "usrnet"})

#: Display names of this project's methods (including FISTA, which the paper does not report).
LABELS: dict[str, str] = {key: row.label for key, row in PUBLISHED.items()} | {"fista": "FISTA", "dista": "DISTA-Net"}

METRIC_KEYS = ("mAP", "AP05", "AP10", "AP15", "AP20", "AP25")


def published(name: str) -> PublishedResult | None:
    """The paper's row for a config name, or ``None`` when the paper does not report the method."""
    return PUBLISHED.get(name)


def label(name: str) -> str:
    """Display name of a config name (the name itself when unknown)."""
    return LABELS.get(name, name)
