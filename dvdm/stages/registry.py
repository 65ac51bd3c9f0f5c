"""The pipeline's stages by name: the one place that says which library function runs a `dvc.yaml` stage.

Each entry holds the stage function, its params.yaml section, the paths `dvc.yaml` gives it (keyed by the
CLI option that carries them: `in`, `out`, `model`, `autoencoder`, `metrics`), the JSON file where it records
everything it measured (`results`; the `metrics` file holds only its headline, see `metrics_file`) and whether
an interrupted run can resume from its last checkpoint (`OUT/checkpoint`). A resumable stage resumes only from a
checkpoint whose fingerprint (its params section + the content of its inputs) matches the run's; otherwise it
starts over and says so. The CLI commands (and so `dvc repro`) and the Prefect flows all run a
stage through its entry, so they cannot diverge; a test checks the entries against `dvc.yaml`.

The stage modules are imported when a stage runs, not here: the CLI reads this registry for its defaults,
and `dvdm --help` must not pay for torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from dvdm.config import (DecomposeParams, EvaluateParams, ExportParams, IngestParams, TrainAEParams, TrainParams,
                         as_dict, section)
from dvdm.errors import ConfigError

log = logging.getLogger(__name__)

PARAMS_FILE = Path("params.yaml")  # the project's params file, relative to the project root (as dvc.yaml has it)

StagePaths = Mapping[str, Path | None]  # CLI option name -> path; `metrics` may be None (not written)
OUTPUT_KEYS = ("out", "metrics")         # the path options a stage writes; the others are its inputs


@dataclass(frozen=True)
class PipelineStage:
    """One stage of the pipeline: how to call its function and with what."""

    name: str                          # the dvc.yaml stage name
    command: str                       # the `dvdm` command that runs it
    section: str                       # its params.yaml section
    paths: Mapping[str, str]           # its paths relative to the project root, in dvc.yaml's option order
    function: Callable[..., Any]       # (params, paths[, resume=, fingerprint=]) -> the stage's summary
    resumable: bool = False            # checkpoints as it goes, so a retry can continue instead of restarting
    results: str | None = None         # its full results (JSON, inside its outputs), relative to the project

    def path(self, key: str) -> Path:
        """The project path the stage uses for option `key` (the CLI's default for it)."""
        return Path(self.paths[key])

    def arguments(self) -> list[str]:
        """The arguments of its `dvdm` command as dvc.yaml runs it (the same paths; a test checks dvc.yaml)."""
        args = [self.command, "--params", str(PARAMS_FILE)]
        for key, path in self.paths.items():
            args += [f"--{key}", path]
        return args

    def load_params(self, params_file: str | Path | None, overrides: Sequence[str] = ()) -> Any:
        """The stage's typed params section (defaults when `params_file` is None)."""
        return section(params_file, self.section, list(overrides))

    def run(self, params: Any, paths: StagePaths, resume: bool = False,
            inputs: Sequence[str | Path] | None = None) -> Any:
        """Run the stage function; `resume` continues from the output's last checkpoint when that checkpoint
        was written with the same settings and inputs (`inputs`: the paths the fingerprint covers, default the
        stage's input paths; the flow passes all its dvc.yaml dependencies, code included)."""
        if not self.resumable:
            if resume:
                raise ConfigError(f"stage {self.name} cannot resume (it keeps no checkpoint)")
            return self.function(params, paths)
        from dvdm.train.checkpoint import resume_point, run_fingerprint

        if inputs is None:
            inputs = [p for key, p in paths.items() if key not in OUTPUT_KEYS and p is not None]
        fingerprint = run_fingerprint(as_dict(params), inputs)
        if resume:
            step, why = resume_point(Path(paths["out"]) / "checkpoint", fingerprint)
            resume = step is not None
            # warnings: shown by the CLI and inside a flow alike (the flow's prints go to its INFO log)
            if resume:
                log.warning("%s: resuming from step %d: %s", self.name, step, why)
            elif (Path(paths["out"]) / "checkpoint").exists():
                log.warning("%s: starting over, not resuming: %s", self.name, why)
        return self.function(params, paths, resume=resume, fingerprint=fingerprint)


def _ingest(params: IngestParams, paths: StagePaths) -> dict[str, Any]:
    from dvdm.stages.ingest import run_ingest

    return run_ingest(params, paths["out"])


def _decompose(params: DecomposeParams, paths: StagePaths) -> dict[str, Any]:
    from dvdm.stages.decompose import headline_metrics, run_decompose
    from dvdm.stages.metrics_file import write_metrics

    stats = run_decompose(params, paths["in"], paths["out"])
    if paths.get("metrics") is not None:
        write_metrics(paths["metrics"], headline_metrics(stats))
    return stats


def _train_ae(params: TrainAEParams, paths: StagePaths, resume: bool = False,
              fingerprint: str | None = None) -> dict[str, Any]:
    from dvdm.stages.train_ae import run_train_ae

    return run_train_ae(params, paths["in"], paths["out"], resume=resume, fingerprint=fingerprint)


def _train_diffusion(params: TrainParams, paths: StagePaths, resume: bool = False,
                     fingerprint: str | None = None) -> dict[str, Any]:
    from dvdm.stages.train_diffusion import run_train_diffusion

    return run_train_diffusion(params, paths["in"], paths["out"], autoencoder_dir=paths.get("autoencoder"),
                               resume=resume, fingerprint=fingerprint)


def _evaluate(params: EvaluateParams, paths: StagePaths) -> dict[str, Any]:
    from dvdm.stages.evaluate import run_evaluate

    return run_evaluate(params, paths["model"], paths["in"], paths["out"], paths.get("metrics"))


def _export(params: ExportParams, paths: StagePaths) -> Any:
    from dvdm.export import export_model
    from dvdm.stages.metrics_file import write_metrics

    # the parity report (every graph's numbers, the end-to-end run's settings) stays in OUT/parity.json
    result = export_model(paths["model"], paths["out"], weights=params.weights, opset=params.opset,
                          steps=params.steps, guidance=params.guidance, eta=params.eta, sampler=params.sampler,
                          parity_steps=params.parity_steps, min_psnr=params.min_psnr)
    if paths.get("metrics") is not None:
        write_metrics(paths["metrics"], {"psnr": result.parity["end_to_end"]["psnr_db"] if result.parity else None})
    return result


STAGES: dict[str, PipelineStage] = {s.name: s for s in (
    PipelineStage("ingest", "ingest", "ingest", {"out": "data/ingested"}, _ingest),
    PipelineStage("decompose", "decompose", "decompose",
                  {"in": "data/ingested", "out": "data/decomposed", "metrics": "metrics/decompose.json"}, _decompose,
                  results="data/decomposed/stats.json"),
    PipelineStage("train-ae", "train-ae", "train_ae", {"in": "data/decomposed", "out": "models/autoencoder"},
                  _train_ae, resumable=True, results="models/autoencoder/results.json"),
    PipelineStage("train-diffusion", "train", "train",
                  {"in": "data/ingested", "autoencoder": "models/autoencoder", "out": "models/diffusion"},
                  _train_diffusion, resumable=True, results="models/diffusion/results.json"),
    PipelineStage("evaluate", "evaluate", "evaluate",
                  {"model": "models/diffusion", "in": "data/ingested", "out": "reports/evaluate",
                   "metrics": "metrics/evaluate.json"}, _evaluate, results="reports/evaluate/results.json"),
    PipelineStage("export", "export", "export",
                  {"model": "models/diffusion", "out": "models/export", "metrics": "metrics/export.json"}, _export,
                  results="models/export/parity.json"),
)}


def get_stage(name: str) -> PipelineStage:
    """The registered stage `name` (a dvc.yaml stage name)."""
    if name not in STAGES:
        raise ConfigError(f"no pipeline stage {name!r}; the registry has {', '.join(STAGES)}")
    return STAGES[name]
