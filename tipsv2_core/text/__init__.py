"""Text processing: the SentencePiece tokenizer of the TIPS text encoder."""

from tipsv2_core.text.tokenizer import Tokenizer, train_tokenizer

__all__ = ["Tokenizer", "train_tokenizer"]
