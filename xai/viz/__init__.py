"""Figures: matplotlib basics and the figures people look at."""
