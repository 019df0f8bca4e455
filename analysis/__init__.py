"""The paper's figures, results table and report, drawn from a sweep's Parquet table alone.

``python -m analysis.figures --runs ./tamt-runs --out figures/`` (``docs/analysis.md``). ``table`` reads and
aggregates; one module per group of figures (``omp_vs_rand``, ``main_results``, ``pretrain_loss``,
``pretrain_cost``, ``similarity``, ``low_data``), each a list of pure functions of the rows; ``results_table`` and
``report`` write the numbers and the HTML page. Nothing here imports the training code, Ray or MLflow.
"""
