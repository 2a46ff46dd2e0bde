"""Measuring: timing, quality, speed, the verdict, reports, tuning, checks."""
