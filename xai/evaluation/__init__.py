"""Evaluation: measures, the neutral judge, imputation, intervals, the table of methods."""
