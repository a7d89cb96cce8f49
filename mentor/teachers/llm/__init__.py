"""LLM teachers: an OpenAI-compatible server or a local causal LM, a probability for every label."""
