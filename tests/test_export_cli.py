"""`genserve export` on bad input: a clear error, nothing in OUT_DIR that looks like an export, and an
interrupted export that resumes."""

from __future__ import annotations

import json
import shutil

import pytest
from fixtures_diffusion import run_cli


def _no_export_left(out_dir) -> bool:
    leftovers = [p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
    return not out_dir.exists() and not leftovers


def test_not_a_pipeline_folder(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    out = tmp_path / "out"
    assert run_cli("export", str(tmp_path / "src"), str(out), "--no-progress") == 1
    assert "not a diffusers pipeline folder (no model_index.json)" in capsys.readouterr().err
    assert _no_export_left(out)


def test_unknown_pipeline_class(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    assert run_cli("export", str(tmp_path / "src"), str(tmp_path / "out"), "--no-progress") == 1
    assert "WanPipeline belongs to no known family" in capsys.readouterr().err


def test_family_that_does_not_match(demo_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("export", str(demo_dir / "cogview4"), str(out), "--family", "flux", "--no-progress") == 1
    assert "holds a CogView4Pipeline (cogview4 family), not a flux pipeline" in capsys.readouterr().err
    assert _no_export_left(out)


def test_unknown_family_is_refused_by_the_parser(demo_dir, tmp_path):
    with pytest.raises(SystemExit):
        run_cli("export", str(demo_dir / "sd"), str(tmp_path / "out"), "--family", "wan")


def test_missing_weights(demo_dir, tmp_path, capsys):
    source = tmp_path / "sd"
    shutil.copytree(demo_dir / "sd", source)
    for weights in (source / "vae").glob("*.safetensors"):
        weights.unlink()
    out = tmp_path / "out"
    assert run_cli("export", str(source), str(out), "--no-progress") == 1
    assert "vae has no weight files" in capsys.readouterr().err
    assert _no_export_left(out)


@pytest.mark.slow
def test_failure_midway_keeps_finished_stages_and_a_rerun_resumes(demo_dir, tmp_path, capsys):
    """Weights that exist but are corrupt fail while exporting, after the text encoder's stages are done:
    OUT_DIR is no complete export (no manifest), but a rerun once the weights are mended reuses the text
    encoder's stages and exports only the rest. A rerun of a complete export reuses everything; --force
    redoes everything; a folder that is no export is never written into."""
    from genserve.errors import ExportError
    from genserve.manifest import Manifest

    source = tmp_path / "sd"
    shutil.copytree(demo_dir / "sd", source)
    good_vae = {path.name: path.read_bytes() for path in (source / "vae").glob("*.safetensors")}
    for name in good_vae:
        (source / "vae" / name).write_bytes(b"not safetensors")
    out = tmp_path / "out"
    args = [
        "export",
        str(source),
        str(out),
        "--no-progress",
        "--no-optimize",
        "--component",
        "text_encoder",
        "--component",
        "vae_decoder",
    ]
    assert run_cli(*args) != 0
    assert "could not load vae" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no complete export"):
        Manifest.read(out)
    assert (out / ".stages" / "text_encoder" / "parity.json").is_file()  # the text encoder is whole

    for name, data in good_vae.items():
        (source / "vae" / name).write_bytes(data)
    assert run_cli(*args) == 0
    report = capsys.readouterr().out
    assert "reused from an earlier run: text_encoder (onnx, parity)" in report
    assert "rel. L2" in report and "peak host memory" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and set(manifest["components"]) == {"text_encoder", "vae_decoder"}

    assert run_cli(*args) == 0
    assert (
        "reused from an earlier run: text_encoder (onnx, parity); vae_decoder (onnx, parity)" in capsys.readouterr().out
    )
    assert run_cli(*args, "--force") == 0
    assert "reused" not in capsys.readouterr().out
    assert Manifest.read(out).components["vae_decoder"].parity

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    assert run_cli("export", str(source), str(stray), "--no-progress", "--component", "text_encoder") == 1
    assert "is no export" in capsys.readouterr().err
    assert [p.name for p in stray.iterdir()] == ["notes.txt"]


def test_tensorrt_is_skipped_with_a_message_without_gpu(demo_dir, tmp_path, capsys):
    from genserve.export.tensorrt import tensorrt_unavailable

    reason = tensorrt_unavailable()
    if reason is None:
        pytest.skip("this host can build TensorRT engines")
    out = tmp_path / "out"
    assert (
        run_cli(
            "export",
            str(demo_dir / "sd"),
            str(out),
            "--tensorrt",
            "--no-progress",
            "--no-optimize",
            "--component",
            "text_encoder",
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"TensorRT engines skipped: {reason}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["text_encoder"]["tensorrt"] == {"skipped": reason}
