"""Evaluation: the paper's protocols on our data and on standard dataset layouts."""
