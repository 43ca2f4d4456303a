"""A newcomer's first hour (issue 34): the stumbles seen on a fresh clone, each held to its fix. Generation
commands check sizes against the served model before sending and name the models a server has; a client
at the wrong port is told which port it is; an output extension nothing is written as is refused; a failed
command leaves no empty progress bar; a rerun's summary lists every task type; setup and the wheel's build
say nothing when nothing is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_diffusion import run_cli
from fixtures_server import loopback_server

from genserve.errors import InvalidInputError
from genserve.ports import free_ports
from genserve.served_models import SERVING_PARAMETER, ServedModel, parse_size

ROOT = Path(__file__).resolve().parents[1]
ORI, TARGET = "2008_002506.jpg", "2008_001009.jpg"


# --- what a served model says it serves ---------------------------------------------------------------------


def pipeline_config(name: str, serving: dict | None, *, image: bool = False, decoupled: bool = False) -> dict:
    tensors = ["PROMPT", "STEPS", "SEED", "WIDTH", "HEIGHT", *(["IMAGE"] if image else [])]
    config = {"name": name, "input": [{"name": tensor} for tensor in tensors]}
    if serving is not None:
        config["parameters"] = {SERVING_PARAMETER: {"string_value": json.dumps(serving)}}
    if decoupled:
        config["model_transaction_policy"] = {"decoupled": True}
    return config


def test_a_served_model_says_its_task_and_sizes():
    serving = {"task": "t2i", "max_size": 256, "pixel_multiple": 16, "default_size": [256, 256], "max_images": 4}
    model = ServedModel.from_config({"config": pipeline_config("flux_text_to_image", serving)})  # gRPC's as_json
    assert (model.task, model.max_size, model.pixel_multiple, model.default_size) == ("t2i", 256, 16, (256, 256))
    model.check_size(240, None)
    for width in (1024, 250, 0):
        with pytest.raises(InvalidInputError) as refused:
            model.check_size(width, 256)
        assert str(refused.value) == (
            f"width {width} is not served by flux_text_to_image: it serves widths and heights in multiples of 16 up "
            "to 256 (default 256x256)"
        )
    with pytest.raises(InvalidInputError, match="at most 4"):
        model.check_images(5)
    assert ServedModel.from_config(pipeline_config("x_stream", serving, decoupled=True)).streaming
    # A repository built before the parameter: the task from the tensors (and the name), no sizes checked.
    old = ServedModel.from_config(pipeline_config("flux_edit_text", None, image=True))
    assert (old.task, old.knows_sizes) == ("vttie", False)
    old.check_size(100000, 3)
    assert ServedModel.from_config(pipeline_config("sd_edit_image", None, image=True)).task == "tie"
    assert ServedModel.from_config({"name": "face_swap", "input": [{"name": "ORI_IMAGE"}]}) is None
    assert ServedModel.from_config(pipeline_config("t", {**serving, "task": "deepfake"})) is None
    assert parse_size("512x768") == (512, 768)
    for bad in ("512", "axb", "512x", "-5x5", "1" * 9 + "x1"):
        with pytest.raises(InvalidInputError, match="WIDTHxHEIGHT"):
            parse_size(bad)


def test_build_repo_writes_what_the_service_checks(sd_repository):
    from genserve.diffusion.settings import ServiceSettings
    from genserve.triton.model_config import read_config

    for name in ("sd_text_to_image", "sd_edit_image_stream"):
        config = read_config(sd_repository / name)
        serving = json.loads(config.parameters[SERVING_PARAMETER].string_value)
        settings = ServiceSettings.read(sd_repository / name / "1")
        assert (serving["max_size"], serving["max_images"]) == (settings.max_size, settings.max_images)
        assert serving["task"] == settings.task
    assert json.loads(read_config(sd_repository / "sd_text_to_image").parameters[SERVING_PARAMETER].string_value)[
        "default_size"
    ] == [64, 64]  # the tiny SD pipeline's own default (its sample size 8 x VAE scale 8)


# --- files the commands would write wrongly -----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "t2i fox -o {out}/result.gif --url {url}",
        "edit {image} night -o {out}/result.gif --url {url}",
        "edit-text {image} A->B -o {out}/result --url {url}",
        "deepfake {image} {image} -o {out}/result.gif --url {url}",
    ],
)
def test_an_output_extension_nothing_is_written_as_is_refused_before_sending(command, tmp_path, capsys):
    """JPEG or PNG bytes in a .gif would be a file that lies: refused before any server is asked (none
    listens at the URL: a command that connected first would fail otherwise)."""
    image = tmp_path / "in.png"
    image.write_bytes(b"\x89PNG")
    argv = command.format(out=tmp_path, url=f"127.0.0.1:{free_ports(1)[0]}", image=image).split()
    assert run_cli(*argv) == 1
    error = capsys.readouterr().err
    assert "results are written as .png, .jpg, .jpeg, .webp" in error, error
    assert not list(tmp_path.glob("result*"))


# --- a client at the other protocol's port ------------------------------------------------------------------


@pytest.fixture
def front_alone():
    """The front on both ports with no tritonserver behind it: enough to be answered in either protocol."""
    http_port, grpc_port, nobody = free_ports(3)
    front = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "genserve.front",
            f"--http-listen=127.0.0.1:{http_port}",
            f"--http-upstream=127.0.0.1:{nobody}",
            f"--grpc-listen=127.0.0.1:{grpc_port}",
            f"--grpc-upstream=127.0.0.1:{nobody}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as one, socket.socket() as other:
                if one.connect_ex(("127.0.0.1", http_port)) == 0 and other.connect_ex(("127.0.0.1", grpc_port)) == 0:
                    break
            time.sleep(0.1)
        yield f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        front.terminate()
        front.wait(timeout=30)


def test_a_client_at_the_other_protocol_s_port_is_told_which_it_is(front_alone, faces_dir, tmp_path, capsys):
    http_url, grpc_url = front_alone
    out = str(tmp_path / "out.jpg")
    started = time.monotonic()
    assert run_cli("deepfake", str(faces_dir / ORI), str(faces_dir / TARGET), "-o", out, "--url", http_url) == 1
    error = capsys.readouterr().err
    assert f"{http_url} answers HTTP/1.1, not gRPC: it is an HTTP port" in error, error
    assert "--protocol http" in error and "Failed parsing HTTP/2" not in error
    assert time.monotonic() - started < 60  # said at once, not retried until the deadline
    assert run_cli("ocr", str(faces_dir / ORI), "--protocol", "http", "--url", grpc_url) == 1
    error = capsys.readouterr().err
    assert f"{grpc_url} does not answer HTTP/1.1: it may be a gRPC port" in error, error
    assert "Traceback" not in error


# --- a rerun with nothing to do -----------------------------------------------------------------------------


def test_a_rerun_with_every_row_done_sends_nothing_and_lists_every_task_type(tmp_path):
    """Every row finished by an earlier run with the same settings: no server is needed (there is none), and
    the summary counts each task type's rows, not only this run's."""
    from PIL import Image

    from genserve.client.batch import JOURNAL, BatchRunner
    from genserve.client.tasks import read_tasks

    (tmp_path / "task.csv").write_text(
        "index,task_type,prompt,ori_image,target_image\n1,t2i,a fox,,\n2,tie,night,a.jpg,\n"
        '3,vttie,"change ""A"" to ""B""",a.jpg,\n4,deepfake,,a.jpg,b.jpg\n5,t2i,a cat,,\n',
        encoding="utf-8",
    )
    tasks = read_tasks(tmp_path / "task.csv")
    out = tmp_path / "out"
    (out / "imgs").mkdir(parents=True)
    with open(out / JOURNAL, "w", encoding="utf-8") as journal:
        for task in tasks:
            Image.new("RGB", (8, 8)).save(out / "imgs" / f"{task.index}.jpg")
            proxies = {"identity_cosine": 0.9} if task.task_type == "deepfake" else {}
            record = {"index": task.index, "task_type": task.task_type, "settings": {}, "proxies": proxies}
            journal.write(json.dumps(record) + "\n")
    runner = BatchRunner(None, tmp_path, out, progress=False)
    assert runner.pending(tasks) == []
    summary = runner.run(tasks)
    assert summary.complete and summary.resumed == 5
    table = summary.table().splitlines()
    rows = {line.split()[0]: line.split()[1:4] for line in table[1:-1]}
    assert rows == {
        "t2i": ["2", "0", "0"],
        "tie": ["1", "0", "0"],
        "vttie": ["1", "0", "0"],
        "deepfake": ["1", "0", "0"],
    }
    assert "identity_cosine 0.900" in table[4] and "5/5 rows finished (5 from an earlier run)" in table[-1]
    # Another setting for t2i: its rows are pending again, and a runner without a server says so.
    other = BatchRunner(None, tmp_path, out, progress=False, request_options={"t2i": {"steps": 9}}, redo=True)
    assert [task.index for task in other.pending(tasks)] == ["1", "5"]


# --- quiet setup ----------------------------------------------------------------------------------------------


def test_setup_says_nothing_when_nothing_is_to_be_done():
    """scripts/setup.sh run again on the environment it set up: one line, no pip or setuptools output."""
    venv = Path(sys.prefix)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
    stamp = venv / ".genserve-setup"
    if not stamp.is_file() or stamp.read_text().strip() != wanted.hexdigest():
        pytest.skip("this environment was not set up by scripts/setup.sh from this tree's pyproject and constraints")
    done = subprocess.run(
        ["bash", ROOT / "scripts" / "setup.sh"],
        env={**os.environ, "GENSERVE_VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == "" and done.stdout.splitlines() == [done.stdout.strip()], done.stdout + done.stderr
    assert done.stdout.startswith("== ready: numpy 1.")


# --- generation commands against a served model --------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_server(sd_repository, tmp_path_factory):
    with loopback_server(tmp_path_factory, sd_repository) as server:
        yield server


def executions(grpc_url: str, model: str) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as client:
        (stats,) = client.get_inference_statistics(model, as_json=True)["model_stats"]
    counts = stats.get("inference_stats", {})
    return sum(int(counts.get(kind, {}).get("count", 0)) for kind in ("success", "fail"))


@pytest.mark.server
@pytest.mark.slow
def test_a_model_the_server_lacks_is_named_with_those_it_has(sd_server, tmp_path, capsys):
    out = str(tmp_path / "out.png")
    assert run_cli("t2i", "a fox", "-o", out, "--url", sd_server.grpc_url) == 1
    error = capsys.readouterr().err
    assert f"the server at {sd_server.grpc_url} has no model 'text_to_image'" in error, error
    assert "its text-to-image models: sd_text_to_image (choose one with --model)" in error
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert run_cli("edit-text", str(image), "A->B", "-o", out, "--url", sd_server.http_url, "--protocol", "http") == 1
    error = capsys.readouterr().err
    assert "has no model 'edit_text'; it serves no text edit model" in error and "genserve demo-repo" in error


@pytest.mark.server
@pytest.mark.slow
def test_sizes_are_checked_against_the_model_before_sending(sd_server, tmp_path, capsys):
    out = tmp_path / "out.png"
    before = executions(sd_server.grpc_url, "sd_text_to_image") + executions(
        sd_server.grpc_url, "sd_text_to_image_stream"
    )
    for size in (["--width", "1024"], ["--width", "64", "--height", "66"]):
        code = run_cli(
            "t2i", "a fox", "-o", str(out), "--model", "sd_text_to_image", "--url", sd_server.grpc_url, *size
        )
        assert code == 1
        error = capsys.readouterr().err
        assert "is not served by sd_text_to_image: it serves widths and heights in multiples of 4 up to 256" in error
    after = executions(sd_server.grpc_url, "sd_text_to_image") + executions(
        sd_server.grpc_url, "sd_text_to_image_stream"
    )
    assert after == before and not out.exists()  # nothing was sent
    # No size given: the model's own default, not a size it would refuse.
    assert (
        run_cli(
            "t2i", "a fox", "-o", str(out), "--model", "sd_text_to_image", "--url", sd_server.grpc_url, "--steps", "2"
        )
        == 0
    )
    assert "64x64" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(out).size == (64, 64)


@pytest.mark.server
@pytest.mark.slow
def test_a_failed_command_leaves_no_empty_progress_bar(sd_server, tmp_path):
    """In a terminal (a pseudo-terminal here), a request refused before its first step prints its error
    alone; one that runs draws the bar and clears it."""
    import pty

    def in_terminal(*argv: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            [sys.executable, "-m", "genserve.cli", *argv], stdin=follower, stdout=follower, stderr=follower
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the command ended
                break
            if not chunk:
                break
            output += chunk
        os.close(leader)
        return process.wait(timeout=300), output.decode(errors="replace")

    common = ["-o", str(tmp_path / "out.png"), "--model", "sd_text_to_image", "--url", sd_server.grpc_url]
    code, output = in_terminal("t2i", "   ", *common)  # refused by the model: an empty prompt
    assert code == 1 and "the prompt is empty" in output, output
    assert "step" not in output.replace("steps", ""), output  # no "0step [00:00, ?step/s]"
    code, output = in_terminal("t2i", "a fox", *common, "--steps", "3")
    assert code == 0 and "wrote" in output, output
