"""User tools: tiny and proxy checkpoints, GGUF conversion, the IPEX-LLM launcher."""
