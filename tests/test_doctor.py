"""`docval-sft doctor` (issue 18): on this CPU machine for real, and fed made-up GPU machines."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from docval_sft import doctor
from docval_sft.cli import app
from docval_sft.doctor import Gpu, HubAccess, Machine, ModelShape

ROOT = Path(__file__).resolve().parent.parent
GB = 10**9


def _no_gpu() -> bool:
    import torch

    return not torch.cuda.is_available()


@pytest.fixture
def demo_cwd(demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory as after `make-demo-data demo-out`: the demo preset's model path exists."""
    (tmp_path / "demo-out").mkdir()
    (tmp_path / "demo-out" / "tiny-gemma3").symlink_to(demo.model_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.skipif(not _no_gpu(), reason="checks what doctor says on a machine without a GPU")
def test_doctor_on_this_cpu_machine_says_no_gpu_and_the_demo_runs(demo_cwd: Path) -> None:
    runner = CliRunner()
    human = runner.invoke(app, ["doctor", "--output-dir", "demo-out/run"])
    assert human.exit_code == 0, human.output
    assert "no GPU" in human.output
    assert "training can start with the demo preset" in human.output
    report = json.loads(runner.invoke(app, ["doctor", "--json", "--output-dir", "demo-out/run"]).stdout)
    assert report["can_start"] is True and report["recommended_preset"] == "demo" and report["preset"] == "demo"
    fits = {f["preset"]: f["fits"] for f in report["presets"]}
    assert fits == {"a100": False, "h100": False, "3090-8bit": False, "full-ft": False, "4b-24gb": False,
                    "27b-4bit": False, "demo": True, "demo-learn": True}
    checks = {c["topic"]: c for c in report["checks"]}
    assert checks["gpu"]["status"] == "warn" and checks["gpu"]["fix"]
    assert checks["model"]["status"] == "ok" and "local directory" in checks["model"]["text"]
    assert checks["disk"]["status"] == "ok" and "needs about" in checks["disk"]["text"]
    # the versions the guide's "Verify Installation" printed
    for name in ("torch", "transformers", "peft"):
        assert f"{name} " in checks["libraries"]["text"]

    # a GPU preset asked for by name cannot start here: exit 1, and the verdict names the preset that can
    a100 = runner.invoke(app, ["doctor", "--preset", "a100", "--json"])
    assert a100.exit_code == 1
    verdict = json.loads(a100.stdout)["verdict"]
    assert "a100 preset cannot start here: needs a GPU" in verdict and "demo" in verdict


def test_demo_model_not_built_yet_is_a_step_not_a_blocker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    hub = doctor.probe_hub("demo-out/tiny-gemma3")  # a folder name, never asked on the hub
    assert hub.looks_like_path and not hub.local_dir
    d = doctor.diagnose(_machine(hub=hub), "demo")
    model = next(f for f in d.findings if f.topic == "model")
    assert model.status == "warn" and model.fix.startswith("docval-sft make-demo-data demo-out")
    assert d.can_start
    # any other missing folder blocks
    d = doctor.diagnose(_machine(hub=doctor.probe_hub("./models/mine")), "demo")
    assert not d.can_start and "no such directory" in d.verdict


# ---------------------------------------------------------------- made-up machines


def _machine(**changes: object) -> Machine:
    """This machine's libraries as the lock pins them, no GPU, a local model and plenty of disk."""
    base = Machine(python="3.11.7", requires_python=">=3.11", versions={"torch": "2.13.0+cpu", "transformers": "5.24.0",
                   "peft": "0.21.2", "bitsandbytes": "0.50.2"},
                   required={"torch": ">=2.6", "transformers": "<6,>=5.23", "peft": ">=0.18",
                             "bitsandbytes": ">=0.46.1"},
                   locked={"torch": "2.13.0+cpu", "transformers": "5.24.0", "peft": "0.21.2", "bitsandbytes": "0.50.2"},
                   lock_file="requirements/lock.txt", hub=HubAccess("google/gemma-3-12b-it", cached=True),
                   disk_free_bytes=500 * GB)
    return dataclasses.replace(base, **changes)


H100 = Gpu("NVIDIA H100 80GB HBM3", 85_045_870_592, True, "9.0")
RTX3090 = Gpu("NVIDIA GeForce RTX 3090", 25_447_170_048, True, "8.6")
V100 = Gpu("Tesla V100-SXM2-32GB", 34_089_730_048, False, "7.0")
A100_80 = Gpu("NVIDIA A100-SXM4-80GB", 85_899_345_920, True, "8.0")


def _gpu_machine(*gpus: Gpu, bnb: bool = True, **changes: object) -> Machine:
    return _machine(gpus=gpus, torch_cuda="12.8", versions={"torch": "2.8.0+cu128", "transformers": "5.24.0",
                    "peft": "0.21.2", "bitsandbytes": "0.50.2"}, bnb_usable=bnb,
                    bnb_detail="an 8-bit layer runs on cuda:0" if bnb else "an 8-bit layer fails on cuda:0: no kernel",
                    **changes)


def _fits(d: doctor.Diagnosis) -> set[str]:
    return {f.preset for f in d.fits if f.fits}


def test_an_80gb_h100_fits_the_a100_and_h100_presets() -> None:
    d = doctor.diagnose(_gpu_machine(H100))
    assert {"a100", "h100"} <= _fits(d) and "full-ft" not in _fits(d)
    assert d.recommended == "a100" and d.preset == "a100" and d.can_start
    gpu = next(f for f in d.findings if f.topic == "gpu0")
    assert gpu.status == "ok" and "H100" in gpu.text and "85.0 GB" in gpu.text and "bf16" in gpu.text
    # a CUDA build of torch is what a GPU machine should have: not compared with the lock's CPU build
    assert not any(f.topic == "lock" for f in d.findings)


def test_a_24gb_3090_fits_the_8bit_and_4b_presets_and_8bit_needs_bitsandbytes() -> None:
    d = doctor.diagnose(_gpu_machine(RTX3090))
    # 12B only in 8-bit; Gemma 3 4B in bf16 by the estimator's figure (18 GB); the guide's 12B student is recommended
    assert _fits(d) == {"3090-8bit", "4b-24gb", "demo", "demo-learn"} and d.recommended == "3090-8bit" and d.can_start
    a100 = next(f for f in d.fits if f.preset == "a100")
    assert "needs 80 GB per GPU" in a100.why and "25 GB" in a100.why
    # bitsandbytes that cannot run on the card: no 8-bit preset, and the reason is in the line
    broken = doctor.diagnose(_gpu_machine(RTX3090, bnb=False), "3090-8bit")
    assert not broken.can_start and "bitsandbytes" in broken.verdict and "no kernel" in broken.verdict
    assert broken.recommended == "demo"
    bnb = next(f for f in broken.findings if f.topic == "bitsandbytes")
    assert bnb.status == "warn" and bnb.fix


def test_no_bf16_gpu_fits_no_gpu_preset() -> None:
    d = doctor.diagnose(_gpu_machine(V100))
    assert _fits(d) == {"demo", "demo-learn"}
    assert next(f for f in d.findings if f.topic == "gpu0").status == "warn"


def test_full_fine_tuning_needs_an_h200_or_several_gpus() -> None:
    h200 = Gpu("NVIDIA H200", 150_754_820_096, True, "9.0")
    assert "full-ft" in _fits(doctor.diagnose(_gpu_machine(h200)))
    sharded = next(f for f in doctor.diagnose(_gpu_machine(*[A100_80] * 8)).fits if f.preset == "full-ft")
    assert sharded.fits and "fsdp_full_ft.yaml" in sharded.why
    assert "full-ft" not in _fits(doctor.diagnose(_gpu_machine(A100_80)))


def test_estimator_plug_in_decides_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one function the memory estimator will replace is the one the fit uses."""
    monkeypatch.setattr(doctor, "gpu_memory_needed_gb", lambda preset: (20.0, "estimated"))
    d = doctor.diagnose(_gpu_machine(RTX3090))
    assert {"a100", "h100", "3090-8bit"} <= _fits(d)
    assert "estimated" in next(f for f in d.fits if f.preset == "a100").why


def test_library_problems() -> None:
    old = _machine(versions={"torch": "2.13.0+cpu", "transformers": "4.57.0", "peft": None, "bitsandbytes": "0.50.2"})
    d = doctor.diagnose(old, "demo")
    fails = {f.topic: f for f in d.findings if f.status == "fail"}
    assert set(fails) == {"transformers", "peft"} and not d.can_start
    assert fails["transformers"].fix == "pip install 'transformers<6,>=5.23'"
    assert "not installed" in fails["peft"].text
    # in range but not the lock's version: a warning, the run can start
    drift = doctor.diagnose(_machine(versions={**_machine().versions, "transformers": "5.25.0"}), "demo")
    lock = next(f for f in drift.findings if f.topic == "lock")
    assert lock.status == "warn" and "transformers 5.25.0 (lock 5.24.0)" in lock.text and drift.can_start
    assert not doctor.diagnose(_machine(python="3.10.12"), "demo").can_start


def test_read_lock_pins() -> None:
    pins = doctor.read_lock(ROOT / "requirements" / "lock.txt")
    assert pins["torch"].startswith("2.") and "transformers" in pins and "huggingface-hub" in pins


@pytest.mark.parametrize(("hub", "status", "words"), [
    (HubAccess("google/gemma-3-12b-it", cached=True, token=False), "ok", "in the Hugging Face cache"),
    (HubAccess("google/gemma-3-12b-it", offline=True), "fail", "HF_HUB_OFFLINE is set"),
    (HubAccess("google/gemma-3-12b-it", reachable=True, access="gated", token=False), "fail", "gated"),
    (HubAccess("google/gemma-3-12b-it", reachable=True, access="ok", token=True), "ok", "may download it"),
    (HubAccess("google/gemma-3-12b-it", reachable=False, access="error", detail="timed out"), "fail", "timed out"),
    (HubAccess("org/nothing", reachable=True, access="not_found"), "fail", "not on"),
])
def test_model_access(hub: HubAccess, status: str, words: str) -> None:
    d = doctor.diagnose(_gpu_machine(H100, hub=hub))
    model = next(f for f in d.findings if f.topic == "model")
    assert model.status == status and words in model.text
    assert d.can_start is (status == "ok")
    if status == "fail":
        assert model.fix
    if hub.access == "gated":
        assert "hf auth login" in model.fix and "gemma-3-12b-it" in model.fix


def _run_probe(endpoint: str, timeout: float) -> tuple[dict, float]:
    # the clock starts after the imports: what is timed is the probe (a loaded 2-core machine imports slowly)
    code = ("import dataclasses, json, time; import huggingface_hub.hf_api; from docval_sft.doctor import probe_hub; "
            "start = time.monotonic(); "
            f"hub = dataclasses.asdict(probe_hub('google/gemma-3-12b-it', timeout={timeout})); "
            "print(json.dumps({**hub, 'seconds': time.monotonic() - start}))")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": "/nonexistent-hf-home",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hub = json.loads(done.stdout)
    return hub, hub.pop("seconds")


def test_unreachable_hub_is_reported_in_seconds_never_a_hang() -> None:
    """A hub that never answers (a socket that accepts and stays silent) and one that refuses: both reported as
    unreachable within the probe's time limit."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nobody ever answers them
    try:
        hub, seconds = _run_probe(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1.0)
    finally:
        silent.close()
    assert hub["access"] == "error" and hub["reachable"] is False and not hub["offline"]
    assert seconds < 2 * 1.0 + 1 + 2.5  # the probe's cap (2 x its timeout + 1 s) + slack; retries took minutes
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    hub, _ = _run_probe(f"http://127.0.0.1:{port}", timeout=1.0)
    assert hub["access"] == "error" and hub["detail"]
    assert "cannot be reached" in doctor.check_hub(_machine(hub=HubAccess(**hub)))[0].text


def test_disk_estimate_and_shortage() -> None:
    # a 2-layer stand-in: only the language model's projections get an adapter (the vision tower's do not)
    shape = ModelShape(10_000_000, {
        "model.language_model.layers.0.self_attn.q_proj": (64, 64),
        "model.language_model.layers.0.mlp.down_proj": (256, 64),
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj": (32, 32),
    })
    from docval_sft.presets import get_preset

    a100 = get_preset("a100")
    n = doctor.lora_params(a100, shape)
    assert n == 32 * (64 + 64) + 32 * (256 + 64)
    need, _ = doctor.disk_needed_bytes(a100, shape)
    assert need == (a100.save_total_limit + 1) * 12 * n + 4 * n
    full, _ = doctor.disk_needed_bytes(get_preset("full-ft"), shape)
    assert full == 4 * 3 * 2 * 10_000_000 + 2 * 10_000_000  # bf16 weights + two bf16 moments, 3+1 checkpoints, final
    short = doctor.diagnose(_gpu_machine(H100, shape=ModelShape(12 * GB, {}), disk_free_bytes=50 * GB), "full-ft")
    disk = next(f for f in short.findings if f.topic == "disk")
    assert disk.status == "fail" and "save_total_limit" in disk.fix and not short.can_start
    # the guide's model without its config here: the guide's 100 GB, as a warning
    guess = doctor.diagnose(_gpu_machine(H100, disk_free_bytes=50 * GB))
    disk = next(f for f in guess.findings if f.topic == "disk")
    assert disk.status == "warn" and "100.0 GB" in disk.text and guess.can_start


def test_bitsandbytes_probe_runs_an_8bit_layer_on_this_cpu() -> None:
    usable, detail = doctor.probe_bitsandbytes("cpu")
    assert usable, detail
    assert "8-bit layer runs on cpu" in detail


def test_importing_doctor_imports_neither_torch_nor_bitsandbytes() -> None:
    code = "import sys, docval_sft.doctor; print(sorted({'torch', 'bitsandbytes'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "[]", done.stderr


def test_flash_attn_is_reported_by_what_it_does_here() -> None:
    def flash(m: Machine) -> doctor.Finding:
        return next(f for f in doctor.diagnose(m).findings if f.topic == "flash-attn")

    assert flash(_gpu_machine(H100, flash_attn="2.8.3")).status == "ok"
    broken = flash(_gpu_machine(H100, flash_attn="2.8.3", flash_attn_error="undefined symbol: _ZN3c10"))
    assert broken.status == "warn" and "undefined symbol" in broken.text and broken.fix
    assert flash(_gpu_machine(V100, flash_attn="2.8.3")).status == "note"  # compute 7.0: not supported
    missing = flash(_machine())
    assert missing.status == "note" and "not installed" in missing.text
    assert doctor._import_error("json") == "" and "No module named" in doctor._import_error("no_such_module_x")
