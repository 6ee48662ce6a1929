"""Explanations: VIBI, boundary projections, attribution methods (one call shape)."""
