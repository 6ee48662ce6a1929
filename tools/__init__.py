"""Repository tooling (not installed with the `xai` package): `python tools/docs.py` keeps the
README's and docs/'s generated results in step with the committed metrics."""
