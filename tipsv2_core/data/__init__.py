"""Datasets: the synthetic multi-granularity benchmark, the shard format, training views.

- `synthetic` / `synth_dataset`: generated scenes with pixel-exact labels and three captions
- `shards` / `tarshards` / `layout` / `card`: the dataset directory contract
- `views`, `masking`, `caption_sampling`, `train_dataset`: what a training step consumes
"""
