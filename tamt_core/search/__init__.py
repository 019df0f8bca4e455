"""One subnetwork search: its configuration (:mod:`.config`), the run that writes its masks as files, resumably
(:mod:`.runner`), and the search loop's link to checkpoints and progress (:mod:`.resumable`). The methods themselves
are in :mod:`tamt_core.methods`."""

from tamt_core.search.runner import SearchResult, read_log, run_search

__all__ = ["SearchResult", "read_log", "run_search"]
