"""The model card shipped with every registered version: Hugging Face's template sections, from plain dicts.

Model details (the method, ED-VDM / D-VDM / VDM, named by the target space), intended use, training data,
training procedure, evaluation (with the FVD protocol, because an FVD value means nothing without N, frames,
resolution and the I3D weights it was computed with), limitations, how to use, and the Hub's metadata
(license, pipeline tag, tags, datasets). The metadata is a fenced YAML block at the end, not front matter:
the MLflow UI renders a `.md` artifact as markdown, where front matter turns into one run-on heading.
Inputs are the dicts the stages already write (config sections, results.json), so the card is rendered,
never hand-written, and every number in it is traceable to a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from dvdm.utils.atomic import write_text

DEFAULT_INTENDED_USE = {
    "direct": "Research on image-to-video generation and on decoupling content (first frame) from motion "
              "(motion vectors + residuals); generating short clips that continue a given first frame, "
              "optionally guided by a caption.",
    "out_of_scope": "Producing realistic footage of real people or events, evidence, or any content meant "
                    "to deceive; any use where errors in generated motion could cause harm. The model was "
                    "trained on small, narrow datasets and does not generalise beyond them.",
}

DEFAULT_LIMITATIONS = [
    "Trained on a small, narrow dataset at low resolution; samples outside that domain degrade quickly.",
    "Motion is generated on a block grid; fine or non-rigid motion inside a block is left to the residual.",
    "FVD from fewer than a few hundred clips is noisy and biased upwards; compare numbers only under the "
    "same protocol (see Evaluation).",
    "The text encoder is a frozen sentence embedding; prompts unlike the training captions have little effect.",
]


def _described(space: str) -> str:
    """" (the space's own description)" for a registered space, else nothing."""
    from dvdm.spaces import SPACES

    return f" ({SPACES[space].description})" if space in SPACES else ""


def method_name(space: str | None) -> str | None:
    """The method a target space stands for, as its description names it first (`mvres` -> "ED-VDM",
    `diff` -> "D-VDM", `rgb` -> "VDM baseline"); None for an unknown space."""
    from dvdm.spaces import SPACES

    if space not in SPACES:
        return None
    return SPACES[space].description.split(":", 1)[0].strip() or None


def render_model_card(*, model: Mapping[str, Any], data: Mapping[str, Any], training: Mapping[str, Any],
                      evaluation: Mapping[str, Any], name: str = "dvdm", version: str | int | None = None,
                      intended_use: Mapping[str, str] | None = None,
                      limitations: Sequence[str] | None = None, license: str = "apache-2.0") -> str:
    """The card as markdown.

    - model: e.g. space, frames, height, width, parameters, architecture, onnx_files, mlflow_run_id
    - data: e.g. name/source, description, dvc_hash, clips (per split), captions
    - training: e.g. steps, batch_size, lr, ema_decay, seconds, device, git_commit, config (nested)
    - evaluation: the evaluate stage's results.json (fvd, kvd, psnr, ssim, fvd_protocol, fvd_notes,
      fvd_skipped, n_clips, split, params, ...)
    """
    use = {**DEFAULT_INTENDED_USE, **(intended_use or {})}
    title = f"{name} v{version}" if version is not None else name
    space = model.get("space")
    dataset = data.get("name") or data.get("source")
    method = method_name(space)
    lines = [f"# Model card: {title}", ""]

    lines += ["## Model details", ""]
    if method:
        lines += [f"Method: **{method}**.", ""]
    if space:
        lines += [f"Target space: `{space}`{_described(space)}.", ""]
    lines += [("Image-to-video diffusion: a 3D U-Net denoiser conditioned on the first frame and a caption "
               "samples the target space, which is decoded back to a clip."), ""]
    lines += _table({k: v for k, v in model.items() if k != "space"})

    lines += ["## Intended use", "", f"**Direct use.** {use['direct']}", "",
              f"**Out of scope.** {use['out_of_scope']}", ""]

    lines += ["## Training data", ""]
    if data.get("description"):
        lines += [str(data["description"]), ""]
    lines += _table({k: v for k, v in data.items() if k != "description"})

    lines += ["## Training procedure", ""]
    lines += _table({k: v for k, v in training.items() if k != "config"})
    if isinstance(training.get("config"), Mapping):
        lines += ["<details><summary>Resolved configuration</summary>", "", "```yaml",
                  _yaml(training["config"]).rstrip(), "```", "", "</details>", ""]

    lines += ["## Evaluation", ""] + _evaluation(evaluation)

    lines += ["## Limitations and risks", ""]
    lines += [f"- {item}" for item in (limitations if limitations is not None else DEFAULT_LIMITATIONS)] + [""]

    ref = f"{name}@champion"
    lines += ["## How to use", "", "```python",
              "from dvdm.tracking.registry import download_version",
              "from dvdm.tracking.store import open_client",
              "",
              f"download_version(open_client(), \"model/\", \"champion\", name=\"{name}\")  # {ref}",
              "```", "",
              "The version folder holds the ONNX graphs and `manifest.json` (target space, shapes, "
              "normalisation, noise schedule, tokenizer); `serving/` runs from those files alone. "
              "`dvdm models` lists the versions, their aliases and key metrics.", ""]

    lines += ["## Metadata", "", "The Hugging Face Hub's card metadata (front matter there):", "", "```yaml",
              _metadata(license, space, method, dataset).rstrip(), "```", ""]
    return "\n".join(lines)


def write_model_card(path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Render (see `render_model_card`) and write the card atomically, usually as `README.md`."""
    write_text(path, render_model_card(**kwargs))


# ---------------------------------------------------------------------------------------------- sections


METRIC_ROWS = (("fvd", "FVD (I3D), lower is better"), ("kvd", "KVD (I3D), lower is better"),
               ("psnr", "PSNR (dB) vs ground truth"), ("ssim", "SSIM vs ground truth"),
               ("first_frame_psnr", "first-frame PSNR (dB)"), ("warping_error", "warping error"),
               ("direction_accuracy", "motion direction accuracy"), ("speed_accuracy", "motion speed accuracy"),
               ("motion_accuracy", "motion-following accuracy"),
               ("sample_seconds_per_clip", "sampling time per clip (s)"))


def _evaluation(ev: Mapping[str, Any]) -> list[str]:
    if not ev:
        return ["Not evaluated.", ""]
    lines = []
    setup = {k: ev[k] for k in ("split", "n_clips", "n_real_clips", "samples_per_clip") if k in ev}
    params = ev.get("params") if isinstance(ev.get("params"), Mapping) else {}
    setup.update({f"sampling {k}": params[k] for k in ("sampler", "steps", "guidance", "seed") if k in params})
    if setup:
        lines += ["Held-out clips are generated from their ground-truth first frame and caption.", ""]
        lines += _table(setup)
    rows = [(label, ev[key]) for key, label in METRIC_ROWS if ev.get(key) is not None]
    known = {k for k, _ in METRIC_ROWS}
    rows += [(key, value) for key, value in ev.items() if key not in known and isinstance(value, (int, float))
             and not isinstance(value, bool) and key not in setup and key not in ("n_clips", "n_real_clips",
                                                                                 "samples_per_clip")]
    if rows:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
    for group in ("cfvd", "sfvd"):
        if isinstance(ev.get(group), Mapping):
            g = ev[group]
            lines += [f"- {group}: mean {_fmt(g.get('mean'))}, std {_fmt(g.get('std'))}"]
    lines += ([""] if lines and lines[-1] else []) + ["### FVD protocol", ""]
    protocol = ev.get("fvd_protocol")
    if isinstance(protocol, Mapping) and protocol:
        lines += _table(protocol)
        lines += [f"- note: {n}" for n in ev.get("fvd_notes") or []]
        lines += ["", "FVD values are comparable only between runs with the same protocol (number of clips, "
                  "frames, resolution, I3D weights).", ""]
    elif ev.get("fvd_skipped"):
        lines += [f"FVD was not computed: {ev['fvd_skipped']}.", ""]
    else:
        lines += ["FVD was not computed.", ""]
    return lines


def _metadata(license: str, space: str | None, method: str | None, dataset: str | None) -> str:
    tags = ["video-diffusion", "image-to-video", "onnx"] + [t for t in (method, space) if t]
    meta: dict[str, Any] = {"license": license, "library_name": "dvdm", "pipeline_tag": "image-to-video",
                            "tags": tags}
    if dataset:
        meta["datasets"] = [str(dataset)]
    return _yaml(meta)


def _table(values: Mapping[str, Any]) -> list[str]:
    rows = [(k, v) for k, v in values.items() if v is not None and not isinstance(v, Mapping)]
    nested = [(k, v) for k, v in values.items() if isinstance(v, Mapping)]
    for key, sub in nested:  # one level of nesting reads fine as dotted keys (clips.train)
        rows += [(f"{key}.{k}", v) for k, v in sub.items() if v is not None]
    if not rows:
        return []
    return ["| item | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(_plain(obj), sort_keys=False, default_flow_style=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
