"""LLM teachers: label probabilities from an OpenAI-compatible endpoint or a local causal LM."""
