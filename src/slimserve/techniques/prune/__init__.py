"""Pruning: TF-MOT schedules, magnitude masks, structured pruning, gradual fine-tuning."""
