"""The batch runner (`genserve run`) on contest task files, through the live server."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
from PIL import Image

from genserve.client import ClientPool
from genserve.client.batch import BatchRunner, quality_record
from genserve.client.submission import check_submission
from genserve.client.tasks import read_task_file, read_tasks
from genserve.errors import InvalidInputError
from genserve.ports import free_ports

TASK_HEADER = "index,task_type,prompt,ori_image,target_image\n"
PHOTOS = ["2008_002506.jpg", "2008_001009.jpg", "2008_001322.jpg", "2008_002079.jpg", "2008_007676.jpg", "dogs.jpg"]


@pytest.fixture
def images(tmp_path, faces_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(faces_dir / name, folder / name)
    return folder


def run_command(task_file, out, *args: str) -> list[str]:
    """``genserve run TASK_FILE --out OUT ARGS --no-progress`` as a user types it (in a child process)."""
    return [sys.executable, "-m", "genserve.cli", "run", str(task_file), "--out", str(out), *args, "--no-progress"]


def write_tasks(folder, rows: list[str]):
    path = folder / "task.csv"
    path.write_text(TASK_HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


def read_result(out):
    with open(out / "result.csv", encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


# --- the task file ------------------------------------------------------------------------------------


def test_task_file_with_bom_and_every_task_type_is_read(tmp_path):
    path = tmp_path / "task.csv"
    path.write_text(
        TASK_HEADER + '1,t2i,"a red fox, in snow",,\n2,TIE,make it night,a.jpg,\n'
        "3,vttie,把“开”改成“关”,b.png,\n4,deepfake,,c.jpg,d.jpg\n",
        encoding="utf-8-sig",
    )
    tasks = read_tasks(path)
    assert [(t.index, t.task_type) for t in tasks] == [("1", "t2i"), ("2", "tie"), ("3", "vttie"), ("4", "deepfake")]
    assert tasks[0].prompt == "a red fox, in snow" and tasks[2].prompt == "把“开”改成“关”"
    assert all(task.problem() is None for task in tasks)


@pytest.mark.parametrize(
    "content, message",
    [
        ("index,task_type,prompt\n1,t2i,x\n", "missing column"),
        (TASK_HEADER + "1,t2i,a,,\n1,t2i,b,,\n", "appears twice"),
        (TASK_HEADER + "../x,t2i,a,,\n", "cannot name an output file"),
        (TASK_HEADER + ",t2i,a,,\n", "empty index"),
        (TASK_HEADER + "a\x00b,t2i,a,,\n", "control characters"),
        (TASK_HEADER + "x" * 300 + ",t2i,a,,\n", "longer than 128 bytes"),
    ],
)
def test_a_broken_task_file_is_refused_whole(tmp_path, content, message):
    path = tmp_path / "task.csv"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        read_tasks(path)


def test_task_files_as_spreadsheets_save_them_are_read_with_notes(tmp_path):
    """Issue 33: Excel's trailing empty rows, and GBK (Excel's CSV on Chinese Windows), were refused whole."""
    rows = "1,t2i,一只猫在雪地里,,\n 2 ,vttie,把“开”改成“关”,sign.png,\n,,,,\n , ,,,\n\n"
    path = tmp_path / "task.csv"
    path.write_bytes((TASK_HEADER + rows).encode("gbk"))
    read = read_task_file(path)
    assert read.encoding == "gb18030" and [t.prompt for t in read.tasks] == ["一只猫在雪地里", "把“开”改成“关”"]
    assert read.notes[0].startswith(f"{path}: not UTF-8 text (byte 0xd4 on line 2); read as GB18030")
    assert "一只猫在雪地里" in read.notes[0]  # the team sees what it was read as
    assert f"{path}: skipped 2 empty row(s) (lines 4-5)" in read.notes
    # The index exactly as written (the organizers match it so), its spaces noted; the other cells trimmed.
    assert [t.index for t in read.tasks] == ["1", " 2 "] and read.tasks[1].ori_image == "sign.png"
    assert any("' 2 ' (line 3)" in note for note in read.notes)
    named = read_task_file(path, encoding="gbk")
    assert named.tasks == read.tasks and not any("GB18030" in note for note in named.notes)
    with pytest.raises(InvalidInputError, match=r"not utf-8 text \(byte 0xd4 on line 2\)"):
        read_task_file(path, encoding="utf-8")
    with pytest.raises(InvalidInputError, match="unknown encoding 'klingon'"):
        read_task_file(path, encoding="klingon")
    # A UTF-8 file with a damaged byte: its Chinese text is no GB18030 either (what the bytes of UTF-8's
    # three-byte characters rarely are), so it is refused, the byte named.
    path.write_bytes((TASK_HEADER + "1,t2i,一只猫,,\n2,t2i,雪地").encode() + b"\xc0A,,\n")
    with pytest.raises(InvalidInputError, match=r"not UTF-8 text \(byte 0xc0 on line 3\), nor GB18030"):
        read_task_file(path)


def test_missing_task_file_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="no such task file"):
        read_tasks(tmp_path / "nope.csv")


# --- runs through the server --------------------------------------------------------------------------


def read_csv(path):
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return {row["index"]: row for row in csv.DictReader(handle)}


@pytest.mark.server
def test_failed_rows_get_stand_ins_and_a_rerun_retries_exactly_them(triton_server, images, tmp_path):
    rows = [
        "a1,deepfake,,2008_002506.jpg,2008_001009.jpg",
        "a2,deepfake,,missing.jpg,2008_001009.jpg",
        "a3,painting,a cat,,",
        "a4,t2i,,,",
        "a5,deepfake,,dogs.jpg,2008_001009.jpg",
        "a6,deepfake,,2008_001322.jpg,2008_001009.jpg",
    ]
    tasks = read_tasks(write_tasks(images, rows))
    out = tmp_path / "out"
    with ClientPool([triton_server.grpc_url], retries=1, backoff_s=0.1) as pool:
        summary = BatchRunner(pool, images, out, concurrency=2, progress=False, team="TeamX").run(tasks)

    # Every row, in order, gen_image the file name: the organizers accept nothing less.
    assert read_result(out) == [["index", "gen_image"]] + [[f"a{i}", f"a{i}.jpg"] for i in range(1, 7)]
    assert (out / "result.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # utf-8-sig
    assert summary.submission == out / "TeamX_图片生成_result.zip" and check_submission(summary.submission, tasks) == []
    with zipfile.ZipFile(summary.submission) as archive:
        assert sorted(archive.namelist()) == ["imgs/" + f"a{i}.jpg" for i in range(1, 7)] + ["result.csv"]
    failures = {o.task.index: o.error for o in summary.failed}
    assert (
        set(failures) == {"a2", "a3", "a4", "a5"}
        and summary.stand_ins == ["a2", "a3", "a4", "a5"]
        and not summary.complete
    )
    assert "image file not found" in failures["a2"] and "unknown task_type 'painting'" in failures["a3"]
    assert "t2i needs a prompt" in failures["a4"] and "no face found in the ori image" in failures["a5"]
    # The stand-ins: ori re-encoded where ori can serve (JPEG, ori's size), else a neutral image.
    stand_in = Image.open(out / "imgs" / "a5.jpg")
    assert stand_in.format == "JPEG" and stand_in.size == Image.open(images / "dogs.jpg").size
    assert all(abs(v - 128) <= 2 for band in Image.open(out / "imgs" / "a4.jpg").getextrema() for v in band)
    marked = read_csv(out / "failures.csv")
    assert marked["a5"]["fallback"] == "ori_image re-encoded" and marked["a3"]["fallback"] == "neutral grey image"
    assert marked["a2"]["fallback"].startswith("neutral grey image (ori_image unusable: image file not found")
    quality = read_csv(out / "quality.csv")
    assert list(quality) == [f"a{i}" for i in range(1, 7)]
    assert quality["a5"]["fallback"] == "ori_image re-encoded" and "no face found" in quality["a5"]["fallback_reason"]
    assert quality["a1"]["fallback"] == "" and float(quality["a1"]["identity_cosine"]) > 0.9
    assert summary.proxies["deepfake"]["identity_cosine"] > 0.9
    assert "stand-in" in summary.table() and "4 stand-ins in the submission" in summary.table()
    # The face swap's sharpness inside ori's face box, and no blur flag for a swap of faces of similar size.
    assert float(quality["a1"]["sharpness"]) >= 0.6 and quality["a1"]["blur_flag"] == "" and not summary.soft
    # Each failure here is the input's own (a missing file, an unknown task type, no prompt, no face): final.
    assert {o.task.index for o in summary.final} == {"a2", "a3", "a4", "a5"} and not summary.retriable
    assert summary.only_final_left and "4 failed (4 final)" in summary.table()
    assert marked["a5"]["final"] == "yes: a rerun sends it again only once its input changes"

    # The missing photo arrives: the rerun sends the row whose input changed, and replaces its stand-in; the
    # other final rows, their input unchanged, are not sent again (reported as they were).
    shutil.copy(images / "2008_002079.jpg", images / "missing.jpg")
    finished = {index: (out / "imgs" / f"{index}.jpg").stat().st_mtime_ns for index in ("a1", "a5", "a6")}
    with ClientPool([triton_server.grpc_url], retries=1, backoff_s=0.1) as pool:
        again = BatchRunner(pool, images, out, concurrency=2, progress=False, team="TeamX").run(tasks)
    assert sorted(o.task.index for o in again.outcomes) == ["a2", "a3", "a4", "a5"]
    assert [o.task.index for o in again.outcomes if o.retried] == ["a2"]
    assert [o.task.index for o in again.outcomes if o.ok] == ["a2"] and again.stand_ins == ["a3", "a4", "a5"]
    assert {o.task.index: o.error for o in again.final} == {i: failures[i] for i in ("a3", "a4", "a5")}
    assert {index: (out / "imgs" / f"{index}.jpg").stat().st_mtime_ns for index in finished} == finished
    assert read_csv(out / "quality.csv")["a2"]["fallback"] == "" and "a2" not in read_csv(out / "failures.csv")
    assert read_csv(out / "failures.csv")["a5"]["final"].startswith("yes: not sent again, its input is unchanged")
    assert check_submission(again.submission, tasks) == []
    # Asked to, a rerun sends the final rows again all the same.
    with ClientPool([triton_server.grpc_url], retries=1, backoff_s=0.1) as pool:
        forced = BatchRunner(pool, images, out, progress=False, team="TeamX", retry_final=True).run(tasks)
    assert sorted(o.task.index for o in forced.outcomes if o.retried) == ["a3", "a4", "a5"]


def test_without_fallback_failed_rows_are_left_out_and_no_zip_is_written(images, tmp_path):
    tasks = read_tasks(write_tasks(images, ["n1,t2i,a cat,,", "n2,tie,make it night,2008_002506.jpg,"]))
    out = tmp_path / "out"
    (dead_port,) = free_ports(1)
    with ClientPool([f"127.0.0.1:{dead_port}"], retries=0) as pool:
        complete = BatchRunner(pool, images, out, progress=False).run(tasks)  # stand-ins: a zip to upload
        assert complete.submission == out / "team_图片生成_result.zip" and complete.submission.is_file()
        summary = BatchRunner(pool, images, out, progress=False, fallback=False).run(tasks)
    assert read_result(out) == [["index", "gen_image"]]
    assert (
        summary.submission is None and not (out / "team_图片生成_result.zip").exists()
    )  # none of the earlier run either
    assert summary.missing == ["n1", "n2"] and "2 row(s) have no image (n1, n2)" in summary.submission_problem
    assert {row["fallback"] for row in read_csv(out / "failures.csv").values()} == {"none: the row is missing"}


def test_a_zip_over_the_size_limit_is_refused_with_its_size(images, tmp_path):
    tasks = read_tasks(write_tasks(images, ["z1,tie,x,2008_002506.jpg,", "z2,tie,x,2008_001009.jpg,"]))
    (dead_port,) = free_ports(1)
    with ClientPool([f"127.0.0.1:{dead_port}"], retries=0) as pool:
        summary = BatchRunner(pool, images, tmp_path / "out", progress=False, team="t", max_zip_bytes=50_000).run(tasks)
    assert summary.submission is None and not list((tmp_path / "out").glob("*.zip*"))
    assert (
        "over the contest's limit of 0.00 GB" in summary.submission_problem
        and "make the images smaller" in summary.submission_problem
    )


@pytest.mark.server
@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_or_losing_rows(triton_server, images, tmp_path):
    pairs = [
        ("2008_002506.jpg", "2008_001009.jpg"),
        ("2008_001322.jpg", "2008_001009.jpg"),
        ("2008_002079.jpg", "2008_002506.jpg"),
        ("2008_007676.jpg", "2008_001322.jpg"),
    ]
    rows = [f"r{i},deepfake,,{ori},{target}" for i, (ori, target) in enumerate(pairs * 3)]
    task_file = write_tasks(images, rows)
    out = tmp_path / "out"
    command = run_command(task_file, out, "--url", triton_server.grpc_url, "--concurrency", "1")

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = out / "progress.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.wait()
    finished = {json.loads(line)["index"] for line in journal.read_text().splitlines() if line.strip()}
    assert 3 <= len(finished) < len(rows), "the kill should land mid-run"
    before = {index: (out / "imgs" / f"{index}.jpg").stat().st_mtime_ns for index in finished}
    assert all((out / "imgs" / f"{index}.jpg").is_file() for index in finished)
    # result.csv is rewritten just after each journal line: a kill in between leaves it one row behind,
    # never with a row the journal lacks; the rerun below completes it.
    listed = [row[0] for row in read_result(out)[1:]] if (out / "result.csv").exists() else []
    assert (
        listed == sorted(listed, key=lambda i: int(i[1:]))
        and set(listed) <= finished
        and len(listed) >= len(finished) - 1
    )

    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"({len(finished)} from an earlier run)" in completed.stdout
    for index, mtime in before.items():  # not redone
        assert (out / "imgs" / f"{index}.jpg").stat().st_mtime_ns == mtime
    assert [row[0] for row in read_result(out)[1:]] == [f"r{i}" for i in range(len(rows))]
    assert not list((out / "imgs").glob(".*partial*"))


@pytest.mark.server
def test_requests_fail_over_to_a_live_replica(triton_server, images, tmp_path):
    (dead_port,) = free_ports(1)
    tasks = read_tasks(write_tasks(images, [f"f{i},deepfake,,2008_002506.jpg,2008_001009.jpg" for i in range(4)]))
    with ClientPool([f"127.0.0.1:{dead_port}", triton_server.grpc_url], retries=2, backoff_s=0.05) as pool:
        summary = BatchRunner(pool, images, tmp_path / "out", concurrency=2, progress=False).run(tasks)
    assert not summary.failed and summary.finished == 4


@pytest.mark.server
def test_a_refused_request_is_not_retried(triton_server, faces_dir):
    from genserve.client import RequestError

    with ClientPool([triton_server.grpc_url], retries=3, backoff_s=5.0) as pool:
        started = time.monotonic()
        with pytest.raises(RequestError, match="no face found") as error:
            pool.swap_face(faces_dir / "dogs.jpg", faces_dir / "2008_001009.jpg")
        assert not error.value.retriable
        assert time.monotonic() - started < 5.0  # no backoff slept


@pytest.mark.server
def test_cli_run_says_what_is_left_and_exits_3_when_only_final_failures_are(triton_server, images, tmp_path):
    task_file = write_tasks(
        images, ["ok,deepfake,,2008_002506.jpg,2008_001009.jpg", "bad,deepfake,,dogs.jpg,2008_001009.jpg"]
    )
    command = run_command(task_file, tmp_path / "out", "--url", triton_server.grpc_url)
    for attempt in ("first", "rerun"):
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        # The zip is written, and a rerun cannot change what is left: not 1, which says "run again".
        assert completed.returncode == 3, (attempt, completed.stdout + completed.stderr)
        assert "bad (deepfake): no face found in the ori image" in completed.stdout
        assert "1 row(s) failed for good" in completed.stdout and "fix the task file or the images" in completed.stdout
        assert "run the same command again" not in completed.stdout
    assert "1/2 rows finished (1 from an earlier run)" in completed.stdout
    assert "[final, not sent again: input unchanged]" in completed.stdout


def test_cli_run_exits_1_while_rows_may_pass_on_a_rerun(images, tmp_path):
    task_file = write_tasks(images, ["t1,tie,make it night,2008_002506.jpg,", "t2,tie,x,missing.jpg,"])
    (dead_port,) = free_ports(1)
    completed = subprocess.run(
        run_command(task_file, tmp_path / "out", "--url", f"127.0.0.1:{dead_port}", "--retries", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "1 row(s) failed for a reason that may pass" in completed.stdout
    assert "run the same command again to retry them" in completed.stdout
    assert "1 row(s) failed for good" in completed.stdout  # t2: its image is missing


def test_quality_record_flags_a_soft_face_swap():
    from genserve.client.tasks import Task
    from genserve.metadata import SwapMetadata

    task = Task("d1", "deepfake", "", "ori.jpg", "target.jpg", line=2)

    def record(ratio):
        metadata = SwapMetadata([500, 375], {}, [], [0], {}, sharpness=[{"face": 0, "ratio": ratio}])
        return quality_record(task, metadata)

    assert record(0.19)["sharpness"] == 0.19 and record(0.19)["blur_flag"].startswith("soft: 0.19 of ori's sharpness")
    assert record(0.79)["blur_flag"] == ""


def test_task_models_from_the_command_line():
    from genserve.client.tasks import parse_task_models

    assert parse_task_models(["t2i=cogview4_text_to_image", "tie=flux_edit_image"]) == {
        "t2i": "cogview4_text_to_image",
        "tie": "flux_edit_image",
    }
    for bad in (["deepfake=face_swap"], ["t2i="], ["paint=x"]):
        with pytest.raises(InvalidInputError, match="expected TASK=MODEL"):
            parse_task_models(bad)


# --- a task file from elsewhere ---------------------------------------------------------------------


def test_a_task_file_that_is_not_utf8_is_one_clear_line(tmp_path):
    task_file = tmp_path / "task.csv"
    task_file.write_bytes((TASK_HEADER + "1,t2i,caf\xe9 au lait,,\n").encode("latin-1"))
    completed = subprocess.run(
        run_command(task_file, tmp_path / "out"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines() == [
        f"genserve run: error: {task_file}: not UTF-8 text (byte 0xe9 on line 2), nor GB18030; save it as UTF-8, "
        "or name its encoding with --encoding"
    ]
    completed = subprocess.run(
        run_command(task_file, tmp_path / "out", "--encoding", "latin-1", "--url", "127.0.0.1:1", "--retries", "0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "genserve run: error" not in completed.stderr and "1 (t2i): no genserve server answers" in completed.stdout


def test_images_outside_the_images_folder_are_refused_alike(images, tmp_path):
    (images / "link.jpg").symlink_to("/etc/hostname")
    rows = [
        "p1,deepfake,,/etc/shadow,2008_001009.jpg",
        "p2,deepfake,,/no/such/file.jpg,2008_001009.jpg",
        "p3,tie,x,../../x.jpg,",
        "p4,deepfake,,2008_002506.jpg,link.jpg",
        "p5,deepfake,,missing.jpg,2008_001009.jpg",
    ]
    tasks = read_tasks(write_tasks(images, rows))
    (dead_port,) = free_ports(1)
    with ClientPool([f"127.0.0.1:{dead_port}"], retries=0, timeout_s=5) as pool:
        summary = BatchRunner(pool, images, tmp_path / "out", concurrency=1, progress=False).run(tasks)
        failures = {o.task.index: o.error for o in summary.failed}
        # Existing or not, inside the filesystem or not: the same answer, and nothing sent.
        for index, name in (
            ("p1", "/etc/shadow"),
            ("p2", "/no/such/file.jpg"),
            ("p3", "../../x.jpg"),
            ("p4", "link.jpg"),
        ):
            assert (
                failures[index] == f"image {name!r} is not under the images folder {images} "
                "(absolute paths and '..' are refused; --allow-outside-images allows them)"
            )
        assert failures["p5"].startswith("image file not found")  # inside the folder: said plainly
        # Allowed on request: the file is read and sent (here: to a server that is not there).
        allowed = BatchRunner(pool, images, tmp_path / "out2", progress=False, allow_outside_images=True).run(
            tasks[3:4]
        )
        assert "no genserve server answers" in allowed.failed[0].error


def test_reports_neutralize_formulas_but_result_csv_keeps_the_index_exactly(images, tmp_path):
    tasks = read_tasks(
        write_tasks(images, ["=1+2,painting,x,,", "@SUM(A1),=cmd|' /C calc'!A0,x,,", "-1,t2i,,,", " 7 ,t2i,,,"])
    )
    out = tmp_path / "out"
    with ClientPool(["127.0.0.1:1"], retries=0) as pool:
        summary = BatchRunner(pool, images, out, progress=False).run(tasks)
    with open(out / "failures.csv", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [row[:2] for row in rows] == [
        ["'=1+2", "painting"],
        ["'@SUM(A1)", "'=cmd|' /c calc'!a0"],
        ["-1", "t2i"],
        [" 7 ", "t2i"],
    ]
    # The organizers match rows on index: it is the task file's, byte for byte (spaces too: issue 33).
    assert read_result(out) == [
        ["index", "gen_image"],
        ["=1+2", "=1+2.jpg"],
        ["@SUM(A1)", "@SUM(A1).jpg"],
        ["-1", "-1.jpg"],
        [" 7 ", " 7 .jpg"],
    ]
    assert (out / "imgs" / " 7 .jpg").is_file()
    assert check_submission(summary.submission, tasks) == []


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of 64 KiB (or read-only) at a path, for a full or read-only output folder."""
    mounted = []

    def mount(options: str):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.server
@pytest.mark.parametrize("kind, message", [("full", "No space left on device"), ("read-only", "Read-only file system")])
def test_an_output_folder_that_fails_ends_the_run_in_one_line(triton_server, images, small_filesystem, kind, message):
    folder = small_filesystem("size=64k" if kind == "full" else "ro,size=64k")
    if kind == "full":
        (folder / "filler").write_bytes(b"\0" * 40 * 1024)  # room for the journal, not for an image
    task_file = write_tasks(images, ["d1,deepfake,,2008_002506.jpg,2008_001009.jpg"])
    completed = subprocess.run(
        run_command(task_file, folder / "out", "--url", triton_server.grpc_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1, completed.stdout
    (line,) = completed.stderr.strip().splitlines()
    assert line.startswith("genserve run: error: cannot write ") and message in line
    assert not [path for path in folder.rglob("*") if "partial" in path.name]
