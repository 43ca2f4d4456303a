"""The Kubernetes manifests of ``docker/kubernetes``, rendered the way ``kubectl apply -k`` renders them.

PyPI has no library that reads a ``kustomization.yaml`` (the ``kustomize`` package generates
manifests from Python code instead), so this is the small part of kustomize those manifests use:
``resources`` (files and folders with their own kustomization), ``images`` (``newName``, ``newTag``,
``digest``) and ``patches`` given as JSON patches (RFC 6902, applied with ``jsonpatch``) on a
``target`` kind and name, or as a strategic-merge ``$patch: delete`` that removes a resource. Anything else in a
kustomization is refused, so a manifest that needs more of kustomize fails the tests (``tests/test_kubernetes.py``,
which also compares with ``kubectl kustomize`` where kubectl is installed) instead of being rendered wrongly.

    python -m genserve.deploy docker/kubernetes/overlays/cpu     # the YAML `kubectl apply -k` applies
"""

from __future__ import annotations

import sys
from pathlib import Path

KUSTOMIZATION = "kustomization.yaml"
MANIFESTS_DIR = Path(__file__).resolve().parents[1] / "docker" / "kubernetes"
_KNOWN_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}


class KustomizeError(ValueError):
    """A kustomization this renderer does not take, or a patch that does not apply."""


def load_yaml_documents(path: Path) -> list[dict]:
    import yaml

    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document is not None]


def render(folder: str | Path) -> list[dict]:
    """Every object the kustomization in ``folder`` produces, in resource order."""
    import yaml

    folder = Path(folder)
    kustomization = yaml.safe_load((folder / KUSTOMIZATION).read_text(encoding="utf-8"))
    unknown = set(kustomization) - _KNOWN_KEYS
    if unknown:
        raise KustomizeError(f"{folder / KUSTOMIZATION}: {', '.join(sorted(unknown))} not supported by genserve.deploy")
    objects: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        objects.extend(render(path) if path.is_dir() else load_yaml_documents(path))
    for patch in kustomization.get("patches", []):
        _apply_patch(objects, patch, folder)
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    return objects


def _apply_patch(objects: list[dict], patch: dict, folder: Path) -> None:
    import jsonpatch
    import yaml

    target = patch.get("target") or {}
    if set(target) - {"kind", "name"} or set(patch) - {"target", "path", "patch"}:
        raise KustomizeError(f"{folder}: only JSON patches on a target kind and name are supported: {patch}")
    operations = yaml.safe_load(patch["patch"]) if "patch" in patch else load_yaml_documents(folder / patch["path"])[0]
    if isinstance(operations, dict) and operations.get("$patch") == "delete" and not target:
        kept = [
            obj
            for obj in objects
            if (obj["kind"], obj["metadata"]["name"]) != (operations["kind"], operations["metadata"]["name"])
        ]
        if len(kept) == len(objects):
            raise KustomizeError(
                f"{folder}: nothing to delete for {operations['kind']}/{operations['metadata']['name']}"
            )
        objects[:] = kept
        return
    if not isinstance(operations, list):
        raise KustomizeError(
            f"{folder}: {patch.get('path', 'an inline patch')} is not a JSON patch (a list of operations)"
        )
    matched = [
        index
        for index, obj in enumerate(objects)
        if obj.get("kind") == target.get("kind", obj.get("kind"))
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
    ]
    if not matched:
        raise KustomizeError(f"{folder}: patch target {target} matches no resource")
    for index in matched:
        try:
            objects[index] = jsonpatch.apply_patch(objects[index], operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            raise KustomizeError(f"{folder}: patch {patch.get('path', '')} on {target}: {error}") from error


def _set_image(objects: list[dict], image: dict) -> None:
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = container["image"], ""
            if ":" in name.rsplit("/", 1)[-1]:  # a tag, not a registry's port
                name, tag = name.rsplit(":", 1)
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
            else:
                tag = image.get("newTag", tag)
                container["image"] = f"{name}:{tag}" if tag else name


def kustomizations(root: Path = MANIFESTS_DIR) -> list[Path]:
    """Every folder under ``root`` holding a kustomization (base and overlays)."""
    return sorted(path.parent for path in root.rglob(KUSTOMIZATION))


def main(argv: list[str] | None = None) -> int:
    import yaml

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(render(args[0]), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
