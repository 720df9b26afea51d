"""Embeddings of whole datasets and nearest-neighbour search over them.

store.py: the embeddings directory (Parquet parts, manifest); embed_shard.py: one dataset
shard -> one Parquet part; index.py: the faiss index beside the parts; images.py: one
sample's image read back from its shard (for result pages).
"""
