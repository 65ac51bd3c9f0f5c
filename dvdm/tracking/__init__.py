"""MLflow tracking and registry helpers: runs with explicit ids, artifacts, registry versions, aliases, promotion.

One concept per module:
- store: where the tracking store is (embedded SQLite in the work dir, or `MLFLOW_TRACKING_URI`), the client;
- runs: parent/child runs looked up by a deterministic key (safe under retries), params, metrics, tags;
- registry: the registered model `dvdm`: versions (logged MLflow pyfunc models holding the export), aliases,
  listing, download;
- promotion: the champion/challenger gate (a pure decision) and the alias move it allows;
- model_card: the HF-style model card shipped with every registered version.

Everything takes an `MlflowClient` and explicit run ids; nothing uses MLflow's fluent "active run" state,
which breaks under orchestrators (one process, many tasks, retries). Modules are imported on use
(`from dvdm.tracking.runs import start_run`), so importing the package does not import MLflow (~1-2 s).
"""
