"""One function per pipeline stage: paths + params in, paths + metrics out.

The CLI, `dvc.yaml` (through the CLI) and the Prefect flows all call these, so a stage behaves the same
wherever it runs. Nothing here imports Prefect or MLflow.
"""
