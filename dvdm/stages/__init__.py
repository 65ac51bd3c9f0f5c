"""One function per pipeline stage: paths + params in, paths + metrics out.

`registry.py` names them: for each `dvc.yaml` stage, its function, params section, paths and whether it
can resume. The CLI commands, `dvc.yaml` (through the CLI) and the Prefect flows all run a stage through
that entry, so a stage behaves the same wherever it runs. Nothing here imports Prefect or MLflow.
"""
