"""The paper's comparison methods (SPEC §7). Each module exports ``build_<name>(model_config, loss_config)``
builders; :data:`seqcsist_jax.methods.METHOD_TABLE` lists them all (nothing is imported here, so importing one
method never imports the others).

=================  ==========================  ==============================================================
config name        module                      method
=================  ==========================  ==============================================================
``ista``/``fista`` :mod:`.classical`           ISTA (public ``tools/ista.py``) and FISTA, batched, no training
``bid``            :mod:`.bid`                 BID (public script; ``input_mode`` faithful/corrected)
``srcnn``          :mod:`.srnets`              SRCNN; also ``edsr`` (EDSR), ``espcn`` (ESPCN)
``gmfn``/``dbpn``  :mod:`.dbpn_gmfn`           GMFN, DBPN (back-projection SR networks)
``rdn``            :mod:`.rdn`                 RDN (22 M parameters)
``usrnet``         :mod:`.usrnet`              USRNet (deep unfolding for SR)
``srgan`` …        :mod:`.gan`                 SRGAN, BSRGAN, ESRGAN: generator + discriminator (:mod:`.gan_nets`),
                                               optional VGG19 perceptual loss from a local file (:mod:`.vgg19`)
``tdan``           :mod:`.tdan`                TDAN (multi-frame, deformable alignment)
``liht`` …         :mod:`.unfolded`            LIHT, LAMP, TiLISTA (unfolded sparse coding)
``lista``          :mod:`.lista`               LISTA, 16 layers
``istanet`` …      :mod:`.istanet`             ISTA-Net (8 stages), ISTA-Net⁺ (``istanet_plus``, 9 stages)
``fistanet``       :mod:`.fistanet`            FISTA-Net, 7 layers
``istanet_pp``     :mod:`.istanet_pp`          ISTA-Net⁺⁺, 20 stages
``rpcanet``        :mod:`.rpcanet`             RPCANet (deep-unfolded robust PCA)
=================  ==========================  ==============================================================

:mod:`.published` holds the paper's numbers for all 23 rows of its table; :mod:`.common` and
:mod:`.sr_layers` the shared layers and losses.
"""
