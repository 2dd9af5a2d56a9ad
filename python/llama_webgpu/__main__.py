"""`python -m llama_webgpu`: the llama-webgpu command line (see cli.py)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
