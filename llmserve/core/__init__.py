"""Core types shared by every layer: errors with status codes, data types, tensors."""
