"""Models: the black box, the invertible classifier, VIBI's explainer and approximator nets."""
