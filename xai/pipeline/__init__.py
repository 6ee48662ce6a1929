"""The pipeline layer: params.yaml, MLflow tracking, DVC paths, stage runner, sweep and bench commands.

The only part of xai that knows DVC, MLflow or params.yaml; the library beneath it does not."""
