"""Readers that turn dataset layouts into the evaluators' dataset types."""

from tipsv2_core.eval.readers.shards import shard_eval_datasets

__all__ = ["shard_eval_datasets"]
