"""Terminal hygiene shared by every entry point that runs ``tamt_core`` work (the CLI, sweep trials)."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """Keep output to our progress lines: transformers' load reports and datasets' bars are noise here."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    logging.getLogger("datasets").setLevel(logging.WARNING)
