"""Serving over the Open Inference Protocol V2 (KServe/Triton). Extra ``[serve]``."""
