"""The sweep orchestrator: a grid of trials → a DAG on Ray Tune, tracked in MLflow, results in one Parquet table.

``grid`` and ``plan`` turn a study's axes into searches and fine-tunes identified by content hash (``specs``);
``sweep`` runs the unfinished ones on Ray: ``scheduler`` hands them out in dependency order and in windows,
``resources`` sizes each trial's request, ``ray_session`` holds Ray and runs each Tune experiment, ``callbacks``
report progress and keep the ledger ``status`` reads; ``trial`` is the only module that calls ``tamt_core``;
``results`` reads and writes the table; ``tracking`` mirrors trials into MLflow; ``cli`` is what every
``sweeps/*.py`` script calls. ``docs/orchestrator.md`` explains the design.
"""
