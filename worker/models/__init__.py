"""Model definitions (Hugging Face architectures) and their weight loading."""
