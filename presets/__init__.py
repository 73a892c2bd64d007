"""Built-in YAML presets (shipped as package data)."""
