"""Techniques: each a frozen config satisfying ``slimserve.techniques.Technique``."""
