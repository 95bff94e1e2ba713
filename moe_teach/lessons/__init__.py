"""Lesson support: the toy task, balancing experiments, performance sweeps, plots and timing.

Uses the model library and :mod:`moe_teach.lm`; nothing below it imports this package.
"""
