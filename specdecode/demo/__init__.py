"""The embedded demo pair: a small Python-code target and a 1-layer draft, trained by us.

`train.py` builds the corpus (the interpreter's own standard library), trains the shared
tokenizer, the target and the draft (distilled on the target) and saves them as ordinary
Hugging Face model directories; `prompts.py` holds the built-in prompts bench uses with the
`demo` preset. The weights ship in `specdecode/assets/demo/{target,draft}`. See README.md here.

This package imports nothing heavy: `train.py` imports torch, tokenizers and transformers
only when it runs.
"""
