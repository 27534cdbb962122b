"""Readers that turn files into lists of example dicts, and the resumable batch order."""

from .loader import BatchOrder, make_loader
from .text import DataError, LabelVocab, read_examples, split_examples

__all__ = ["BatchOrder", "DataError", "LabelVocab", "make_loader", "read_examples", "split_examples"]
