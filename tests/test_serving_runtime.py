"""serving without an export folder: no torch on import, provider choice (incl. onnxruntime-gpu's silent CPU
fallback), numpy DDIM vs the torch sampler, manifest loading errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

from dvdm.runtime import sessions as runtime  # noqa: E402
from serving.errors import ExportIntegrityError, ManifestError, ProviderError  # noqa: E402
from dvdm.runtime.ddim import DDIM, linspace_torch, spaced_timesteps  # noqa: E402
from dvdm.runtime.manifest import FORMAT, FORMAT_VERSION, load_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVING_MODULES = ("serving", "serving.errors",
                   # the runtime core the service runs models with
                   "dvdm.runtime.manifest", "dvdm.runtime.ddim", "dvdm.runtime.guidance", "dvdm.runtime.decode",
                   "dvdm.runtime.normalize",
                   "dvdm.runtime.sessions", "dvdm.runtime.text", "dvdm.runtime.pipeline",
                   "serving.settings", "serving.model", "serving.app", "serving.server",
                   # what serving.app / serving.model import on first use (registry access, video encoding)
                   "dvdm.tracking.store", "dvdm.tracking.registry", "dvdm.video.writer", "uvicorn", "mlflow")


def test_importing_serving_does_not_import_torch():
    code = ("import importlib, sys\n"
            f"for m in {SERVING_MODULES!r}: importlib.import_module(m)\n"
            "import serving; serving.OrtVideoPipeline; serving.choose_provider\n"
            "from serving.app import create_app; create_app('models:/dvdm@champion')\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"serving imported torch: {r.stdout}"


# ------------------------------------------------------------------------------------------ providers
class FakeSession:
    """Stands in for InferenceSession: reports `active` providers and returns `result` from run()."""

    def __init__(self, active, result=(3.0,)):
        self.active, self.result = active, result

    def get_providers(self):
        return list(self.active)

    def run(self, _outputs, _feeds):
        return [np.array(self.result, np.float32)]


def fake_ort(monkeypatch, available, active, result=(3.0,)):
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: list(available))
    monkeypatch.setattr(runtime.ort, "InferenceSession", lambda *a, **k: FakeSession(active, result))


def test_cpu_build_chooses_cpu_with_one_log_line(caplog):
    if runtime.CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with caplog.at_level(logging.INFO, logger="dvdm.runtime.sessions"):
        choice = runtime.choose_provider("auto")
    assert choice.name == "cpu" and choice.providers == (runtime.CPU,)
    lines = [r.getMessage() for r in caplog.records if r.name == "dvdm.runtime.sessions"]
    assert len(lines) == 1 and "CPUExecutionProvider" in lines[0] and "not in this onnxruntime build" in lines[0]
    with pytest.raises(ProviderError, match="CUDA requested but not usable"):
        runtime.choose_provider("cuda")
    with pytest.raises(ProviderError, match="must be one of"):
        runtime.choose_provider("tpu")


def test_silent_cuda_fallback_is_detected(monkeypatch, caplog):
    # onnxruntime-gpu without usable CUDA: lists CUDA, but the session runs on CPU
    fake_ort(monkeypatch, [runtime.CUDA, runtime.CPU], [runtime.CPU])
    with caplog.at_level(logging.INFO, logger="dvdm.runtime.sessions"):
        choice = runtime.choose_provider("auto")
    assert choice.name == "cpu" and "fell back" in choice.reason
    assert "fell back" in caplog.records[-1].getMessage()
    with pytest.raises(ProviderError, match="fell back"):
        runtime.choose_provider("cuda")


def test_wrong_probe_result_is_not_cuda(monkeypatch):
    fake_ort(monkeypatch, [runtime.CUDA, runtime.CPU], [runtime.CUDA, runtime.CPU], result=(0.0,))
    assert runtime.choose_provider("auto").name == "cpu"


def test_working_cuda_is_chosen_and_sessions_are_checked(monkeypatch):
    fake_ort(monkeypatch, [runtime.CUDA, runtime.CPU], [runtime.CUDA, runtime.CPU])
    choice = runtime.choose_provider("auto")
    assert choice.name == "cuda" and choice.provider == runtime.CUDA
    assert runtime.choose_provider("cpu").name == "cpu"
    runtime.create_session(b"model", choice)  # lands on CUDA: fine
    fake_ort(monkeypatch, [runtime.CUDA, runtime.CPU], [runtime.CPU])
    with pytest.raises(ProviderError, match="fell back silently"):
        runtime.create_session(b"model", choice)


def test_real_cpu_session_runs_probe_model():
    choice = runtime.ProviderChoice("cpu", (runtime.CPU,), "test")
    session = runtime.create_session(runtime._PROBE_MODEL, choice, threads=1)
    assert session.run(None, {"x": np.array([2.0], np.float32)})[0].tolist() == [4.0]


# ------------------------------------------------------------------------------------------ sampler
def test_timesteps_are_torch_linspace_rounded():
    torch = pytest.importorskip("torch")

    for total in (1, 7, 50, 1000):
        for n in range(1, total + 1):
            expected = torch.linspace(total - 1, 0, n, dtype=torch.float64).round().long().numpy()
            np.testing.assert_array_equal(spaced_timesteps(total, n), expected)
    np.testing.assert_array_equal(linspace_torch(999.0, 0.0, 37),
                                  torch.linspace(999, 0, 37, dtype=torch.float64).numpy())


@pytest.mark.parametrize("solver", ["ddim", "dpm++"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_numpy_sampler_matches_torch_sampler(prediction, solver):
    torch = pytest.importorskip("torch")
    from dvdm.diffusion import DDIMSampler, DPMSolverSampler, GaussianDiffusion

    diffusion = GaussianDiffusion.create("cosine", 100, prediction=prediction)
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3, 3)).astype(np.float32) * 0.3
    noise = rng.standard_normal((2, 3, 2, 4, 4)).astype(np.float32)

    def np_model(x, t):  # any deterministic function of (x, t) will do
        return (np.einsum("oc,bc...->bo...", weight, x) * np.float32(1 + t / 100)).astype(np.float32)

    def torch_model(x, t):
        return torch.from_numpy(np_model(x.numpy(), int(t[0])))

    sampler = {"ddim": DDIMSampler, "dpm++": DPMSolverSampler}[solver](diffusion)
    ref = sampler.sample(torch_model, noise.shape, num_steps=7, noise=torch.from_numpy(noise))
    ours = DDIM(diffusion.alphas_cumprod.tolist(), prediction).sample(np_model, noise, 7, solver=solver)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-5)
    if solver != "ddim":  # a different method, not a relabelled DDIM
        assert np.abs(ours - DDIM(diffusion.alphas_cumprod.tolist(), prediction).sample(np_model, noise, 7)).max() > 1e-3


def test_ddim_rejects_bad_requests():
    ddim = DDIM([0.9, 0.5, 0.1], "eps")
    with pytest.raises(ValueError, match="steps"):
        ddim.sample(lambda x, t: x, np.zeros((1, 1), np.float32), 4)
    with pytest.raises(ValueError, match="eta"):
        ddim.sample(lambda x, t: x, np.zeros((1, 1), np.float32), 2, eta=-1)
    with pytest.raises(ValueError, match="sampler must be one of"):
        ddim.sample(lambda x, t: x, np.zeros((1, 1), np.float32), 2, solver="euler")
    with pytest.raises(ValueError, match="deterministic"):
        ddim.sample(lambda x, t: x, np.zeros((1, 1), np.float32), 2, eta=0.5, solver="dpm++",
                    rngs=[np.random.default_rng(0)])
    with pytest.raises(ManifestError):
        DDIM([0.9, 0.5], "score")


# ------------------------------------------------------------------------------------------ manifest
def test_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such export folder"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(ManifestError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ManifestError, match="not a dvdm export manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ManifestError, match="not supported"):
        load_manifest(tmp_path)
    base = {"format": FORMAT, "format_version": 1, "clip": {}, "target_shape": [], "normalization": {},
            "diffusion": {}, "sampler": {}, "image": {}, "text": None, "decode": {},
            "graphs": {"denoiser": {"file": "d.onnx"}}}
    (tmp_path / "manifest.json").write_text(json.dumps(base))
    with pytest.raises(ManifestError, match="lacks files"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**base, "files": {"x.onnx": {"sha256": "0" * 64}}}))
    with pytest.raises(ManifestError, match="not listed"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**base, "graphs": {"denoiser": {"file": "../d.onnx"}},
                                                        "files": {"../d.onnx": {"sha256": "0" * 64}}}))
    with pytest.raises(ManifestError, match="unsafe file name"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**base, "files": {"d.onnx": {"sha256": "0" * 64}}}))
    with pytest.raises(ExportIntegrityError, match="d.onnx is listed in the manifest but missing"):
        load_manifest(tmp_path)
    (tmp_path / "d.onnx").write_bytes(b"abc")
    with pytest.raises(ExportIntegrityError, match="sha256 .* differs"):
        load_manifest(tmp_path)
    assert load_manifest(tmp_path, verify=False)["graphs"]["denoiser"]["file"] == "d.onnx"
