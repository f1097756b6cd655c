"""TinyThinker: distilling an LLM teacher's recall/analyze/summarize reasoning into a small T5 student."""
__version__ = "0.1.0"
