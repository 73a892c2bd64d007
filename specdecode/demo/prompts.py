"""Built-in prompts for the demo pair: beginnings of Python code, written for specdecode.

Held out from training by construction: they were written by hand for this project, not
taken from the standard library the demo models were trained on. bench and compare use
them when the `demo` preset is active (`dataset.path: builtin:demo`).

Each prompt ends on a visible character, never on whitespace: the byte-level tokenizer
merges a newline with the indentation after it, so a prompt cut after "\n" would start the
model on a token boundary it never saw in training.

What it does not: tokenize or pick a subset (data.py and api.py do).
"""

from __future__ import annotations

__all__ = ["PROMPTS"]

PROMPTS: tuple[str, ...] = (
    "def fibonacci(n):",
    "class Stack:\n    def __init__(self):",
    'def is_prime(n):\n    """Return True if n is a prime number."""',
    "import os\nimport sys\n\n\ndef main(argv=None):",
    "class LinkedList:\n    \"\"\"A singly linked list.\"\"\"\n\n    def __init__(self):",
    "def read_lines(path):\n    with open(path",
    "def flatten(items):\n    \"\"\"Flatten a nested list.\"\"\"\n    result = []",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x",
    "def binary_search(items, target):\n    lo, hi = 0, len(items)",
    "    def __repr__(self):\n        return",
    "def parse_args(argv):\n    parser = argparse.ArgumentParser(",
    'def merge_sort(values):\n    """Sort a list with merge sort and return a new list."""',
    "class Queue:\n    \"\"\"A first-in, first-out queue.\"\"\"",
    "    def __eq__(self, other):\n        if not isinstance(other,",
    "def count_words(text):\n    counts = {}\n    for word in text.split():",
    "try:\n    import json\nexcept ImportError:",
    "def gcd(a, b):\n    while b:",
    "class Config:\n    def __init__(self, path=None, **kwargs):",
    "    def close(self):\n        \"\"\"Close the connection.\"\"\"\n        if self._sock is not None:",
    "def _check_type(value, expected):\n    if not isinstance(value, expected):\n        raise TypeError(",
    "def format_size(num_bytes):\n    for unit in (",
    "    @property\n    def name(self):",
    "if __name__ == \"__main__\":",
    "def chunks(seq, size):\n    \"\"\"Yield successive chunks of size items from seq.\"\"\"",
    "class Matrix:\n    def __init__(self, rows, cols):\n        self.rows = rows\n        self.cols = cols",
    "def reverse_words(sentence):",
    "    def __len__(self):",
    "def load_config(filename):\n    \"\"\"Read a configuration file and return a dict.\"\"\"\n    config = {}",
    "class Timer:\n    def __enter__(self):",
    "def unique(items):\n    seen = set()",
    "    def __iter__(self):\n        node = self.head",
    "def to_snake_case(name):\n    \"\"\"Convert CamelCase to snake_case.\"\"\"",
    "def factorial(n):\n    if n < 0:\n        raise ValueError(",
    "class Node:\n    def __init__(self, value, next=None):",
    "def run_command(cmd, timeout=None):\n    \"\"\"Run a command and return its output.\"\"\"",
    "    def get(self, key, default=None):\n        try:",
    "def encode(data, encoding='utf-8', errors='strict'):",
    "def _escape(text):\n    text = text.replace(\"&\", \"&amp;\")",
    "class Error(Exception):\n    \"\"\"Base class for exceptions in this module.\"\"\"\n\n\nclass",
    "def walk_tree(root):\n    for dirpath, dirnames, filenames in os.walk(root):",
)
