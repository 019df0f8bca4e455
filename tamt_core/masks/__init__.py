"""Masks: as files (:mod:`.files`: bit-packed, verified on load), on a model (:mod:`.masked_model`: binary masks
beside frozen weights), and how many entries each matrix loses (:mod:`.pruning`).

``tamt_core.masks.load_mask(path).tensors`` gives ``{parameter name: BoolTensor}`` (True = kept).
"""

from tamt_core.masks.files import (Mask, MaskFileError, MaskMismatchError, check_mask_matches, load_mask, mask_summary,
                                   save_mask, similarity, weights_fingerprint)

__all__ = ["Mask", "MaskFileError", "MaskMismatchError", "check_mask_matches", "load_mask", "mask_summary",
           "save_mask", "similarity", "weights_fingerprint"]
