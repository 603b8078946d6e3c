"""The paper's comparison methods (SPEC §7); each module exports ``build_<name>`` builders listed in
:data:`seqcsist_jax.methods.METHOD_TABLE`.

==============  ===============================  ====================================
config name     module                           method
==============  ===============================  ====================================
``ista``        :mod:`.classical`                ISTA (public ``tools/ista.py``), no training
``fista``       :mod:`.classical`                FISTA, no training
``lista``       :mod:`.lista`                    LISTA, 16 layers
``istanet``     :mod:`.istanet`                  ISTA-Net, 8 stages
``istanet_plus`` :mod:`.istanet`                 ISTA-Net⁺, 9 stages
``fistanet``    :mod:`.fistanet`                 FISTA-Net, 7 layers
``istanet_pp``  :mod:`.istanet_pp`               ISTA-Net⁺⁺, 20 stages
``srcnn``       :mod:`.srnets`                   SRCNN
``edsr``        :mod:`.srnets`                   EDSR
``espcn``       :mod:`.srnets`                   ESPCN
``tdan``        :mod:`.tdan`                     TDAN (multi-frame, deformable alignment)
==============  ===============================  ====================================

:mod:`.published` holds the paper's numbers for all 23 rows of its table.
"""

from seqcsist_jax.baselines import classical, fistanet, istanet, istanet_pp, lista, published, srnets, tdan

__all__ = ["classical", "fistanet", "istanet", "istanet_pp", "lista", "published", "srnets", "tdan"]
