"""Figures of the paper drawn from the orchestrator's Parquet tables: arrives with its own issue. Nothing here yet."""
