"""The language-model study: a character-level GPT on Tiny Shakespeare."""
