"""Sweep orchestrator (Ray Tune trials, MLflow tracking, Parquet results): arrives with its own issue.

It will turn a grid model × method × sparsity × seed × task into trials that call ``tamt_core`` and know nothing of
BERT internals. Nothing here yet.
"""
