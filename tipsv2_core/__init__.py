"""TIPSv2 core library: encoders and tokenizer, data, losses, training and distillation,
evaluation, ONNX export, checkpoints and typed configs.

This layer depends on torch, numpy, pillow, sentencepiece, safetensors, pyarrow and
onnx / onnxruntime only; it never imports Ray, KFP, MLflow, DVC, Great Expectations or
boto3 (docs/architecture.md, "Layers"; tests/test_layering.py enforces it).
"""

__version__ = "0.1.0"
