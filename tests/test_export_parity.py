"""Every exported component of the tiny pipelines matches torch in ONNX Runtime (fp32: rel. L2 <= 1e-4),
at two resolutions and two batch sizes, with the graph's dynamic dimensions named and free."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_diffusion import DEMO_FOR_FAMILY

pytestmark = pytest.mark.slow  # one export per family, about a minute each on 2 cores


@pytest.mark.parametrize("family_name", DEMO_FOR_FAMILY)
def test_export_parity(family_name, export_family):
    from genserve.families import FAMILIES

    report, out_dir = export_family(family_name)
    family = FAMILIES[family_name]
    assert [c.name for c in report.components] == [c.name for c in family.components]
    for component in report.components:
        shapes = {(r.request.batch, r.request.height, r.request.width) for r in component.parity}
        assert len({b for b, _, _ in shapes}) == 2 and len({(h, w) for _, h, w in shapes}) == 2, shapes
        for result in component.parity:
            assert result.worst <= 1e-4, f"{component.name} at {result.request}: {result.errors}"
        assert (out_dir / component.path).is_file()


@pytest.mark.parametrize("family_name", DEMO_FOR_FAMILY)
def test_exported_graphs_match_torch_on_fresh_inputs(family_name, export_family, demo_dir):
    """Independently of the export's own check: new seeds, a batch of 3 and a third resolution."""
    import torch

    from genserve import torch_sessions
    from genserve.export.components import ComponentModule, load_module, random_inputs
    from genserve.export.parity import relative_l2
    from genserve.families import FAMILIES, ShapeRequest, read_configs, read_model_index

    _, out_dir = export_family(family_name)
    family = FAMILIES[family_name]
    pipeline_dir = demo_dir / DEMO_FOR_FAMILY[family_name]
    configs, model_index = read_configs(pipeline_dir, family), read_model_index(pipeline_dir)
    m = family.pixel_multiple(configs)
    request = ShapeRequest(3, 5 * m, 2 * m, 11, with_image=True)
    for spec in family.components:
        config = configs[spec.module]
        wrapper = ComponentModule(load_module(pipeline_dir, spec.module, model_index, torch.float32), spec, config)
        inputs = random_inputs(spec, config, family.dims(request, configs), torch.float32, seed=987)
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(*inputs)]
        session = torch_sessions.open_session(out_dir / spec.name / "1" / "model.onnx")
        actual = torch_sessions.run(session, [t.name for t in spec.active_inputs(config)], inputs)
        for tensor, a, e in zip(spec.outputs, actual, expected, strict=True):
            assert a.shape == e.shape
            assert relative_l2(a, e) <= 1e-4, f"{spec.name}.{tensor.name}"


@pytest.mark.parametrize("family_name", DEMO_FOR_FAMILY)
def test_manifest_names_dynamic_dimensions(family_name, export_family):
    import json

    import onnx

    from genserve.manifest import FORMAT, Manifest

    _, out_dir = export_family(family_name)
    typed = Manifest.read(out_dir)
    assert typed.family == family_name and typed.format == FORMAT and typed.precision == "fp32"
    manifest = json.loads((out_dir / "manifest.json").read_text())  # the file's own keys, as other tools read them
    assert manifest["family"] == family_name and manifest["complete"] and manifest["precision"] == "fp32"
    assert (out_dir / "pipeline" / "model_index.json").is_file()
    assert not list((out_dir / "pipeline").rglob("*.safetensors")), "weights belong in the ONNX files only"
    for name, entry in manifest["components"].items():
        model = onnx.load(out_dir / entry["path"], load_external_data=False)
        graph_inputs = {i.name: i for i in model.graph.input}
        assert list(graph_inputs) == [t["name"] for t in entry["inputs"]]
        assert [o.name for o in model.graph.output] == [t["name"] for t in entry["outputs"]]
        for tensor in entry["inputs"]:
            dims = graph_inputs[tensor["name"]].type.tensor_type.shape.dim
            for dim_name, size, dim in zip(tensor["dims"], tensor["shape"], dims):
                if size == -1:
                    assert dim.dim_param == dim_name, f"{name}.{tensor['name']}: {dim}"
                else:
                    assert dim.dim_value == size
        if entry["ort_fusions"]:
            assert any(n.domain == "com.microsoft" for n in model.graph.node)


def test_editing_family_exports_a_vae_encoder_whose_mode_is_the_mean(export_family):
    """Kontext encodes the reference image with the posterior's mode: the first half of the parameters."""
    _, out_dir = export_family("flux")
    from genserve import torch_sessions

    session = torch_sessions.open_session(out_dir / "vae_encoder" / "1" / "model.onnx")
    import torch

    images = torch.rand(1, 3, 16, 24) * 2 - 1
    (parameters,) = torch_sessions.run(session, ["images"], [images])
    mean, logvar = np.split(parameters, 2, axis=1)
    assert mean.shape == (1, 4, 8, 12) and np.all(np.isfinite(logvar))
