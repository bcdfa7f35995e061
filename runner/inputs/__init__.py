"""Inputs: finding image files, decoding them, and turning them into model input tensors."""
