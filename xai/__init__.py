"""xai: train models and explain their decisions (invertible boundaries, VIBI), reproducibly."""
