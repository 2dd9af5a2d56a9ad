"""Coverage-guided fuzz targets (atheris): the GGUF load path and the tokenizer.

Run from the repository root, e.g. `python -m fuzz.gguf_load -max_total_time=60 fuzz/corpus/gguf`;
docs/reliability.md ("Fuzzing") gives the commands and the figures measured.
"""
