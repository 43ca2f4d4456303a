"""Command-line options made from a task's contract (:mod:`genserve.protocol`), what the diffusion
commands (``t2i``, ``edit``, ``edit-text``) share, and the input-file check of every command that reads one.

Every request field becomes an option (``steps`` -> ``--steps``, a true-by-default ``color_transfer``
-> ``--no-color-transfer``) with the contract's help text, so a new field reaches the command line
without an edit here.
"""

from __future__ import annotations

import argparse

from genserve import config
from genserve.schema import Contract

_TYPES = {"int": int, "float": float, "text": str}
_METAVARS = {"int": "N", "float": "X", "text": "TEXT"}


def add_field_arguments(parser: argparse.ArgumentParser, contract: Contract, skip: tuple[str, ...] = ()) -> None:
    """One option per field of ``contract`` not in ``skip``; unset options are not sent (server default)."""
    for field in contract.fields:
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            if field.default:
                parser.add_argument(
                    f"--no-{flag[2:]}",
                    dest=field.name,
                    action="store_false",
                    default=None,
                    help=f"do not: {field.help}",
                )
            else:
                parser.add_argument(flag, dest=field.name, action="store_true", default=None, help=field.help)
            continue
        default = f" (default {field.default})" if field.default is not None else ""
        parser.add_argument(
            flag,
            dest=field.name,
            type=_TYPES[field.type],
            choices=field.choices or None,
            metavar=None if field.choices else _METAVARS[field.type],
            help=field.help + default,
        )


def field_values(args: argparse.Namespace, contract: Contract, skip: tuple[str, ...] = ()) -> dict:
    """The values of the options :func:`add_field_arguments` added that were given."""
    values = {field.name: getattr(args, field.name, None) for field in contract.fields if field.name not in skip}
    return {name: value for name, value in values.items() if value is not None}


def require_files(*paths: str) -> None:
    """Refuse a missing input file here, before a connection is made, with its name."""
    from pathlib import Path

    from genserve.errors import InvalidInputError

    for path in paths:
        if not Path(path).is_file():
            raise InvalidInputError(f"{path}: no such file")


# --- t2i, edit, edit-text ------------------------------------------------------------------------------


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--protocol``: which server a one-request command talks to."""
    parser.add_argument(
        "--url",
        help=f"server host:port (default: {config.grpc_url()} for gRPC, {config.http_url()} for HTTP)",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")


def add_generation_command(
    subparsers, name: str, contract: Contract, positionals: tuple[str, ...], **texts: str
) -> argparse.ArgumentParser:
    """The parser of a diffusion command: its positional arguments (``image`` -> IMAGE) in order, then the
    options all of them take; ``texts`` are the parser's help and description."""
    parser = subparsers.add_parser(name, **texts)
    for positional in positionals:
        parser.add_argument(positional, metavar=positional.upper())
    add_generation_arguments(parser, contract)
    return parser


def add_generation_arguments(parser: argparse.ArgumentParser, contract: Contract) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="result image (.png, .jpg, .jpeg or .webp: the extension picks the format); with --num-images N > 1, "
        "OUT gets _0.._N-1 suffixes",
    )
    parser.add_argument(
        "--model",
        default=contract.model,
        help=f"served model (default {contract.model}, as `genserve build-repo` names it without --prefix; the demo "
        f"repository's are sd_{contract.model}, flux_{contract.model} and cogview4_{contract.model}, "
        "where the family has the task). A model the server lacks: the error lists those it has",
    )
    add_field_arguments(parser, contract, skip=("prompt", "image"))
    add_server_arguments(parser)
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (it shows the denoising steps when the server has the model's _stream variant)",
    )
    parser.add_argument("--json", action="store_true", help="print the server's metadata as JSON")


def generation_values(args: argparse.Namespace, contract: Contract) -> dict:
    return field_values(args, contract, skip=("prompt", "image"))


def generate(args: argparse.Namespace, contract: Contract, call):
    """``call(client, **values)`` with the command's values, once the served model is known to be there and to
    serve the sizes asked for (its default size filled in where it says one); through the model's streaming
    variant with a progress bar of the denoising steps when the server has one (gRPC), else the plain model."""
    from genserve.client import Client
    from genserve.client.client import output_format
    from genserve.protocol import STREAM_SUFFIX

    output_format(args.output)  # an extension it cannot write is refused before anything is sent
    values = generation_values(args, contract)
    with Client(args.url, protocol=args.protocol) as client:
        values = checked_for_model(client, args.model, TASK_OF_CONTRACT[contract.model], values)
        if args.no_progress or args.json or args.protocol != "grpc" or not client.is_ready(args.model + STREAM_SUFFIX):
            return call(client, model=args.model, **values)
        with StepBar(args.model) as bar:
            return call(client, model=args.model, progress=bar.update, **values)


# The contract model each generation command's task is named after (genserve.served_models' tasks).
TASK_OF_CONTRACT = {"text_to_image": "t2i", "edit_image": "tie", "edit_text": "vttie"}


def checked_for_model(client, model: str, task: str, values: dict) -> dict:
    """``values`` checked against what ``model`` serves, before anything is sent: the model exists and serves
    ``task`` (else the error names the models of that task the server has), the width and height asked for
    are sizes it serves, and a t2i request without a size gets the model's default size. Models whose
    repository predates the sizes in the config are checked by the server alone."""
    from genserve.errors import InvalidInputError
    from genserve.served_models import TASK_NAMES

    served = client.served_model(model)
    if served is None or served.task != task or served.streaming:
        what = "has no model" if client.model_config(model) is None else "has no " + TASK_NAMES[task] + " model"
        others = [m.name for m in client.served_models(task) if not m.streaming]
        listed = (
            f"its {TASK_NAMES[task]} models: {', '.join(others)} (choose one with --model)"
            if others
            else f"it serves no {TASK_NAMES[task]} model: serve a repository built by `genserve build-repo` "
            "(README, 'Using it'), or the demo's (`genserve demo-repo OUT`, models named sd_, flux_ and cogview4_ "
            "+ text_to_image, edit_image, edit_text)"
        )
        raise InvalidInputError(f"the server at {client.url} {what} {model!r}; {listed}")
    served.check_size(values.get("width"), values.get("height"))
    served.check_images(values.get("num_images"))
    if task == "t2i" and served.default_size is not None:
        values = {"width": served.default_size[0], "height": served.default_size[1], **values}
    return values


class StepBar:
    """The progress bar of the denoising steps, drawn from the first step reported: a request refused before
    it ran leaves no empty bar above its error. Not drawn where stderr is no terminal; cleared when done."""

    def __init__(self, label: str):
        self.label = label
        self._bar = None

    def update(self, report: dict) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=report["steps"], unit="step", desc=self.label, leave=False, dynamic_ncols=True, disable=None
            )
        self._bar.total = report["steps"]
        self._bar.update(report["step"] - self._bar.n)

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()


def write_results(args: argparse.Namespace, results) -> int:
    import json
    from pathlib import Path

    results = results if isinstance(results, list) else [results]
    out = Path(args.output)
    paths = [out] if len(results) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(results))]
    for result, path in zip(results, paths):
        result.save(path)
    meta = results[0].metadata
    if args.json:
        print(json.dumps(meta.to_json(), indent=2))
        return 0
    timings = meta.timings_ms
    print(
        f"wrote {', '.join(map(str, paths))}: {meta.width}x{meta.height}, seed {meta.seed}, "
        f"{meta.steps} steps, guidance {meta.guidance}, server {timings.get('total', 0):.0f} ms"
    )
    stages = ", ".join(f"{k} {v:.0f} ms" for k, v in timings.items() if k != "total")
    print(f"  stages: {stages}")
    for warning in meta.warnings:
        print(f"  warning: {warning}")
    return 0
