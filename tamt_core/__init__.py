"""tamt's science core: binary masks over frozen BERT-family weights, the subnetwork-search methods of TAMT
(Liu et al. 2022) and its baselines, pre-training losses of a subnetwork, and masks as files.

Entry points: ``tamt_core.search.run_search`` (one search), ``tamt_core.subnetwork.pretrain_losses`` (dev losses),
``tamt_core.masks.load_mask`` (mask files); the ``tamt`` command wraps them (``tamt_core.cli``).
"""

__version__ = "0.1.0"
