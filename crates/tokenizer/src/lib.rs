//! Tokenizers built from GGUF metadata (byte-level BPE, SentencePiece) and chat templates.
//! Empty for now: the tokenizer issue fills it.
