"""Training a tiny demo model of the Qwen3.5 architecture (issue 12)."""
