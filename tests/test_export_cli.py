"""`genserve export` on bad input: a clear error, and nothing in OUT_DIR that looks like an export."""

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
def test_failure_midway_leaves_nothing_and_force_replaces(demo_dir, tmp_path, capsys):
    """Weights that exist but are corrupt fail while exporting (after the first components are
    written): the staging folder goes, OUT_DIR never appears. Then a good export, a refusal to
    overwrite it, and --force."""
    source = tmp_path / "sd"
    shutil.copytree(demo_dir / "sd", source)
    for weights in (source / "vae").glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    out = tmp_path / "out"
    assert run_cli("export", str(source), str(out), "--no-progress", "--no-optimize", "--component", "text_encoder", "--component", "vae_decoder") != 0
    assert _no_export_left(out)

    good = ["export", str(demo_dir / "sd"), str(out), "--no-progress", "--no-optimize", "--component", "text_encoder"]
    assert run_cli(*good) == 0
    report = capsys.readouterr().out
    assert "rel. L2" in report and "peak host memory" in report
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    assert run_cli(*good) == 1
    assert "pass --force" in capsys.readouterr().err
    assert run_cli(*good, "--force") == 0
    assert _no_export_left(tmp_path / "nothing-else") and not list(tmp_path.glob(".out.*"))


def test_tensorrt_is_skipped_with_a_message_without_gpu(demo_dir, tmp_path, capsys):
    from genserve.export.tensorrt import tensorrt_unavailable

    reason = tensorrt_unavailable()
    if reason is None:
        pytest.skip("this host can build TensorRT engines")
    out = tmp_path / "out"
    assert run_cli("export", str(demo_dir / "sd"), str(out), "--tensorrt", "--no-progress", "--no-optimize", "--component", "text_encoder") == 0
    printed = capsys.readouterr().out
    assert f"TensorRT engines skipped: {reason}" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["components"]["text_encoder"]["tensorrt"] == {"skipped": reason}
