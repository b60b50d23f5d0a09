"""The output's tokenizer: vocabulary (mergekit 0.1.5's ``tokenizer_source`` / ``tokenizer:``),
chat template and side files, from the inputs' small tokenizer files (pure: bytes and dicts in,
records and bytes out; no ``tokenizers``/``transformers`` needed)."""

from raymerge.tokenizer.build import (
    READ_FILES,
    TOKENIZER_FILES,
    ModelTokenizer,
    OutputVocab,
    TokenRule,
    config_vocab_size,
    is_tokenizer_file,
    output_vocabulary,
)
from raymerge.tokenizer.chat import TEMPLATES, chat_template
from raymerge.tokenizer.files import SideFiles, side_files

__all__ = [
    "READ_FILES",
    "TEMPLATES",
    "TOKENIZER_FILES",
    "ModelTokenizer",
    "OutputVocab",
    "SideFiles",
    "TokenRule",
    "chat_template",
    "config_vocab_size",
    "is_tokenizer_file",
    "output_vocabulary",
    "side_files",
]
