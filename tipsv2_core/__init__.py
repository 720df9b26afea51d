"""TIPSv2 core library: encoders, tokenizer, checkpoints (and, later, data, losses, training).

This layer depends on torch, numpy, pillow, sentencepiece and safetensors only; it never
imports Ray, KFP, MLflow, DVC or boto3 (see DESIGN §3).
"""

__version__ = "0.1.0"
