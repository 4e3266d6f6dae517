#!/usr/bin/env python3
"""The backend API: an OpenAI-compatible gateway in front of an LLM engine (the package `gateway` beside this file).

Run: `python llm_backend.py`, configured by LLM_BACKEND_* environment variables (README.md lists them);
`python llm_backend.py ledger [--days N] [--csv]` prints the shared store's usage per key and day.
"""
from gateway.cli import main

if __name__ == "__main__":
    main()
