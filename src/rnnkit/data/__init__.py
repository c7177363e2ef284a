"""Data for rnnkit: character vocabularies, text sources and contiguous streams for truncated BPTT."""

from rnnkit.data.stream import TextStream, batchify
from rnnkit.data.text import default_corpus, read_text, split_text, stdlib_files
from rnnkit.data.vocab import Vocab

__all__ = ["TextStream", "Vocab", "batchify", "default_corpus", "read_text", "split_text", "stdlib_files"]
