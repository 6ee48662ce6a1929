"""Training loops: shared building blocks, the invertible classifiers, VIBI / L2X."""
