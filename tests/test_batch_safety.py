"""`panosync batch` under hostile folders and files (issue 27): one batch at a time in a folder (a
lock), no file replaced that panosync did not write, PNGs kept on resume only when their pixels are
the ones written, a full disk or an unwritable summary one sentence, resume linear, every bad line
reported at once, names that collide on case-insensitive file systems refused, long values cut.
Most run on a stand-in engine that paints each panorama at once; the SIGTERM test runs pocket."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.PngImagePlugin
import pytest

from panosync.batch.jobs import BatchJob, read_jobs
from panosync.batch.lock import LOCK
from panosync.batch.run import BatchFault, run_batch
from panosync.cli import main
from panosync.metadata import DIGEST, KEY, read_metadata
from panosync.models import resolve_model
from panosync.runner.maker import Done, Made

SMALL = dict(width=128, num_inference_steps=3)


def write_jobs(path: Path, *jobs) -> Path:
    path.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs))
    return path


def batch(jobs_file, out, *options):
    return main(["batch", str(jobs_file), "--model", "pocket", "--out", str(out), "--quiet", *options])


class Painter:
    """An engine that paints each panorama in one colour (its seed's) at once; `during(key)` runs
    while a task is made, as a step callback would."""

    slots = 1
    workers = [{"host": "here", "pid": 0}]

    def __init__(self, during=None):
        self.queue, self.during, self.submitted = [], during, []

    @property
    def busy(self):
        return bool(self.queue)

    def free(self):
        return self.slots - len(self.queue)

    def submit(self, key, call):
        self.queue.append((key, call))
        self.submitted.append(key)

    def wait(self, timeout=None):
        key, call = self.queue.pop(0)
        if self.during is not None:
            self.during(key)
        colour = (call["seed"] * 37 % 256, 90, 160)
        image = PIL.Image.new("RGB", (call["width"], call["height"]), colour)
        return [Done(key, made=Made(image, 0.01, "cpu", "float32", {"host": "here", "pid": 0}))]

    def geometry(self):
        raise AssertionError("every canvas is known")

    def close(self):
        pass


def run(jobs_file, out, engine=None, **options):
    jobs = read_jobs(jobs_file, {"model": "pocket"}, resolve_model("pocket"))
    engine = engine or Painter()
    return run_batch(jobs, out, lambda on_step: engine, jobs_file, {"kind": "local"}, quiet=True, **options)


def five(tmp_path, seed=0, name="jobs.jsonl"):
    return write_jobs(tmp_path / name, *({"prompt": "hills", "seed": seed + n, "name": f"p{n}", **SMALL}
                                         for n in range(5)))


def pixels(path):
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def resave(path, change_pixels=None, change_metadata=None):
    """Write `path` again with its metadata's text as it is (or changed) and its pixels as they
    are (or changed), as a hand edit in an image editor that keeps the text chunks would."""
    with PIL.Image.open(path) as image:
        text, picture = image.text[KEY], image.convert("RGB")
    if change_pixels:
        picture = change_pixels(picture)
    if change_metadata:
        text = json.dumps(change_metadata(json.loads(text)))
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text(KEY, text)
    picture.save(path, pnginfo=info)


# 1. One batch at a time in a folder.

def test_a_second_batch_into_a_folder_being_written_is_refused_and_the_first_is_whole(tmp_path):
    """The issue's two batches at once (A and B, same names, other seeds, one --out): B is refused
    in one sentence while A runs, and A's PNGs and summary are all A's."""
    a, b, out = five(tmp_path, 0, "A.jsonl"), five(tmp_path, 100, "B.jsonl"), tmp_path / "twin"
    refusals = []

    def second_batch(key):
        if key == 2:
            with pytest.raises(ValueError) as refused:
                run(b, out)
            refusals.append(str(refused.value))

    summary = run(a, out, Painter(during=second_batch))
    host = socket.gethostname()
    assert refusals == [f"--out {out} is being written by another panosync batch (pid {os.getpid()} on {host}); "
                        f"wait for it or choose another --out (if no batch is writing there, remove {out / LOCK})."]
    assert [read_metadata(out / f"p{n}.png")["seed"] for n in range(5)] == [0, 1, 2, 3, 4]
    assert summary["counts"]["made"] == 5 and json.loads((out / "summary.json").read_text())["jobs_file"] == str(a)
    assert not (out / LOCK).exists()  # released: B may run now
    assert run(b, out)["counts"]["made"] == 5


def test_a_later_batch_replacing_pngs_of_other_parameters_says_so(tmp_path, capsys):
    """The probe's A then B into one folder (same names, other seeds): B makes its own PNGs, and
    says which of A's it replaces, --quiet or not."""
    a, b, out = five(tmp_path, 0, "A.jsonl"), five(tmp_path, 100, "B.jsonl"), tmp_path / "twin"
    run(a, out)
    capsys.readouterr()
    assert run(b, out)["counts"]["made"] == 5
    err = capsys.readouterr().err
    assert "making again 5 PNGs made before with other parameters" in err and "p0.png" in err


def test_the_cli_refuses_a_held_folder_in_one_sentence_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        assert batch(five(tmp_path), out) == 2
    finally:
        holder.kill()
        holder.wait()
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"(pid {holder.pid} on {socket.gethostname()}); wait for it" in error
    assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing made, the lock not taken


def test_a_lock_whose_process_is_gone_is_taken_over_and_another_hosts_is_not(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    assert run(five(tmp_path), out)["counts"]["made"] == 5 and not (out / LOCK).exists()
    (out / LOCK).write_text(json.dumps({"pid": 1234, "host": "another-machine"}))
    with pytest.raises(ValueError, match=r"\(pid 1234 on another-machine\); wait for it or choose another --out "
                                         r"\(if no batch is writing there, remove .*\.panosync-batch\.lock\)\.$"):
        run(five(tmp_path), out)
    (out / LOCK).write_text("")  # a batch killed between creating its lock and writing it, long ago
    os.utime(out / LOCK, (time.time() - 60, time.time() - 60))
    assert run(five(tmp_path), out)["counts"]["kept"] == 5


@pytest.mark.parametrize("ending", [KeyboardInterrupt, RuntimeError, ValueError])
def test_the_lock_is_released_however_the_batch_ends(tmp_path, ending):
    def fail(key):
        if key == 3:
            raise ending("stop")

    with pytest.raises(ending):
        run(five(tmp_path), tmp_path / "out", Painter(during=fail))
    assert not (tmp_path / "out" / LOCK).exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]["made"] == 2


@pytest.mark.slow
def test_sigterm_ends_a_batch_as_ctrl_c_does(tmp_path):
    """SIGTERM (a scheduler's stop, `kill`): the finished PNGs kept, the summary written and marked
    interrupted, the lock released, one line on stderr."""
    lines = [{"prompt": "snowy mountains", "seed": seed, "name": f"p{seed}", **SMALL} for seed in range(2)]
    lines.append({"prompt": "snowy mountains", "seed": 9, "name": "long", "width": 128, "num_inference_steps": 200})
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", *lines), tmp_path / "out"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "panosync.cli", "batch", str(jobs), "--model", "pocket",
                                "--out", str(out), "--quiet"], stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + 120
        while not (out / "p1.png").exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)  # into the long one
        process.send_signal(signal.SIGTERM)
        _, error = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, error
    assert error.strip() == "panosync: terminated" and "Traceback" not in error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and [j["status"] for j in summary["jobs"]] == ["made", "made", "not run"]
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "summary.json"]  # no lock, no .tmp


# 2. A file panosync did not write is not replaced.

@pytest.mark.parametrize("foreign", ["text", "png without metadata", "summary"])
def test_a_file_panosync_did_not_write_is_named_and_nothing_runs(tmp_path, capsys, foreign):
    out, jobs = tmp_path / "out", five(tmp_path)
    out.mkdir()
    if foreign == "text":
        path = out / "p1.png"
        path.write_text("my notes\n")
    elif foreign == "png without metadata":
        path = out / "p3.png"
        PIL.Image.new("RGB", (128, 64), (1, 2, 3)).save(path)
    else:
        path = out / "summary.json"
        path.write_text("my summary of the week\n")
    before = path.read_bytes()
    assert batch(jobs, out) == 2
    error = capsys.readouterr().err
    assert error == (f"panosync: error: {path} was not written by panosync, and the batch would replace it: move it "
                     f"away, or give --overwrite to replace it.\n")
    assert path.read_bytes() == before and sorted(p.name for p in out.iterdir()) == [path.name]
    summary = run(jobs, out, overwrite=True)  # what --overwrite asks
    assert summary["counts"]["made"] == 5 and path.read_bytes() != before


def test_overwrite_is_an_option_of_batch(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "p0.png").write_text("notes")
    (out / "p4.png").write_text("notes")
    assert batch(five(tmp_path), out) == 2
    assert "p0.png (and 1 more files of the jobs' names) was not written" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "--overwrite" in capsys.readouterr().out


# 3. Resume verifies the pixels.

def test_a_png_whose_pixels_were_edited_or_carry_no_digest_is_made_again_saying_so(tmp_path, capsys):
    jobs, out = five(tmp_path), tmp_path / "out"
    run(jobs, out)
    made = {n: pixels(out / f"p{n}.png") for n in range(5)}
    assert all(isinstance(read_metadata(out / f"p{n}.png")[DIGEST], str) for n in range(5))

    def scribble(picture):
        picture.putpixel((5, 5), (255, 255, 255))
        return picture

    resave(out / "p1.png", change_pixels=scribble)  # metadata kept, pixels edited
    resave(out / "p2.png", change_metadata=lambda m: {k: v for k, v in m.items() if k != DIGEST})  # older panosync
    resave(out / "p3.png")  # re-compressed, same pixels: still verified
    capsys.readouterr()
    summary = run(jobs, out)
    assert [j["status"] for j in summary["jobs"]] == ["kept", "made", "made", "kept", "kept"]
    error = capsys.readouterr().err
    assert "making again 1 PNG whose pixels changed after panosync wrote them: p1.png." in error
    assert "making again 1 PNG without a digest of their pixels to verify them by (written by an older panosync): " \
           "p2.png." in error
    assert all(np.array_equal(pixels(out / f"p{n}.png"), made[n]) for n in range(5))


# 4. Resume is linear, with progress from the start.

def test_checking_many_jobs_is_linear_and_shows_progress(tmp_path, capsys):
    count = 20_000  # quadratic (`job not in todo`), this took minutes
    parameters = {"prompt": "hills", "width": 128, "height": 64, "seed": 1}
    jobs = [BatchJob(n, f"p{n}", dict(parameters, seed=n), {"model": "pocket", **parameters, "seed": n}, True)
            for n in range(1, count + 1)]

    def interrupted(on_step):
        raise KeyboardInterrupt

    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_batch(jobs, tmp_path / "out", interrupted, "jobs.jsonl", {"kind": "local"})
    assert time.perf_counter() - started < 10
    assert f"checking {count:,} jobs" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["counts"]["not run"] == count


# 5. A full disk, an unwritable summary.

def test_a_full_disk_stops_the_batch_in_one_sentence_keeping_what_is_made(tmp_path, monkeypatch):
    import panosync.metadata

    jobs, out, engine = five(tmp_path), tmp_path / "out", Painter()
    save_png = panosync.metadata.save_png

    def fill_up(image, path, parameters):
        if Path(path).name == "p2.png":
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_png(image, path, parameters)

    monkeypatch.setattr(panosync.metadata, "save_png", fill_up)
    with pytest.raises(BatchFault) as fault:
        run(jobs, out, engine)
    assert str(fault.value) == (f"{out / 'p2.png'} could not be written (No space left on device), so the batch stopped "
                                f"there: free some space (or remount {out} writable) and rerun to make the rest.")
    assert engine.submitted == [1, 2, 3]  # lines 4 and 5 not tried
    summary = json.loads((out / "summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["made", "made", "failed", "not run", "not run"]
    assert summary["stopped"] == str(fault.value) and not (out / LOCK).exists()


def test_a_summary_that_cannot_be_written_is_one_sentence_exit_1_and_the_pngs_are_kept(tmp_path, monkeypatch,
                                                                                         capsys):
    import panosync.batch.run

    jobs, out = five(tmp_path), tmp_path / "out"
    run(jobs, out)  # the PNGs the CLI keeps: it loads no model

    def full(summary, folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(panosync.batch.run, "write_summary", full)
    assert batch(jobs, out) == 1
    error = capsys.readouterr().err
    assert error == (f"panosync: error: {out / 'summary.json'} could not be written (No space left on device); the 5 "
                     f"finished PNGs are kept, and a rerun writes it.\n")
    assert len(list(out.glob("p*.png"))) == 5 and not (out / LOCK).exists()


def test_a_folder_where_the_summary_goes_is_refused_before_work(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "summary.json").mkdir(parents=True)
    assert batch(five(tmp_path), out) == 2
    error = capsys.readouterr().err
    assert f"{out / 'summary.json'} is a folder or another file" in error and error.count("\n") == 1
    assert not list(out.glob("*.png"))


# 6–8. The jobs file: every bad line at once, names that collide, long values cut.

def test_every_bad_line_is_reported_at_once(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills"}, {"prompt": "hills", "width": 130},
                      {"prompt": "hills", "steps": 3}, {"prompt": "a sea"}, "{")
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"panosync: error: {jobs} has 3 bad lines, and nothing was run:\n  line 2: width must be")
    assert "\n  line 3: steps is no field of a job" in error and "\n  line 5: not valid JSON" in error
    many = write_jobs(tmp_path / "many.jsonl", *(["{"] * 25))
    assert batch(many, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert error.count("not valid JSON") == 20 and error.endswith("\n  and 5 more.\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("first, second", [("Sky", "sky"), ("line-9", "Line-9")])
def test_names_that_differ_only_in_case_are_refused_naming_both_lines(tmp_path, capsys, first, second):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills", "name": first}, {"prompt": "a sea"},
                      {"prompt": "hills", "name": second})
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err
    if first == "Sky":
        assert "line 3: name 'sky' and line 1's 'Sky' differ only in case, the same file on macOS and Windows" in error
    else:
        assert "line 1: name 'line-9' is how jobs without a name are named" in error
        assert "line 3: name 'Line-9' is how jobs without a name are named" in error


@pytest.mark.parametrize("line", [{"prompt": "hills", "x" * 1_000_000: 1},
                                  {"prompt": "hills", "name": "n" * 1_000_000},
                                  {"prompt": "hills", "name": ["n" * 1_000_000]}])
def test_long_values_are_cut_short_in_the_sentence(tmp_path, capsys, line):
    jobs = write_jobs(tmp_path / "jobs.jsonl", line)
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert len(error) < 600 and "characters)" in error and error.count("\n") == 1, error[:1000]


def test_names_windows_keeps_for_devices_are_refused(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills", "name": "CON", **SMALL},
                      {"prompt": "hills", "name": "nul.png", **SMALL}, {"prompt": "hills", "name": "console", **SMALL})
    with pytest.raises(ValueError) as refused:
        read_jobs(jobs, {"model": "pocket"}, resolve_model("pocket"))
    assert "line 1: name 'CON' is a device on Windows" in str(refused.value)
    assert "line 2: name 'nul.png' is a device on Windows" in str(refused.value)
    assert "line 3" not in str(refused.value)
