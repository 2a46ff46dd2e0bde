"""Measuring: timing, quality, speed, reports, plots, MLflow tracking. (The goal's verdict is
``core/verdict.py``; tune, check and preflight, which run pipelines, sit above.)"""
