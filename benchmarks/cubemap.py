"""Which library cuts the sphere into cube faces and puts it back together for `panosync export`:
py360convert or pytorch360convert, measured on this machine's CPU.

    python benchmarks/cubemap.py                   # writes benchmarks/CUBEMAP.md and CUBEMAP.json
    python benchmarks/cubemap.py --panorama-only   # makes runs/cubemap/pano.png alone (pocket.cubemap_picture)

For each library (py360convert twice: it resamples with OpenCV where cv2 imports, with SciPy where
not, and the `sphere` extra alone brings no OpenCV):
- accuracy, bilinear, faces W/4 on a side: the round trip equirectangular → cube → equirectangular
  on a synthetic image (a smooth colour function of the direction, 512 × 256, so the truth is known
  everywhere) and on a real one (a pocket panorama of the whole sphere, 512 × 256, made with the
  command below when runs/cubemap/pano.png is missing), as PSNR, mean and largest absolute error
  over every pixel and channel (nothing left out: poles, seam, face edges); and each direction
  alone against the synthetic image's truth at the texel and pixel centres (cubemap.py's
  convention), which shows where a library's sampling grid sits;
- time: 2048 × 1024 → six 512-pixel faces and back, the first call in a process (what one
  `panosync export` pays; py360convert caches its sampling maps) and the fastest of 5 repeats, at
  OMP_NUM_THREADS threads (2 unless set), each the fastest of 3 processes (the cores are shared);
- install weight: the installed size of the package and of everything it requires (read from the
  installed distributions), and what it adds to panosync's own requirements;
- maintenance: the latest release and its date, from PyPI's JSON API (recorded as unknown offline).

    OMP_NUM_THREADS=2 panosync generate "snowy mountains" --model pocket --width 512 --height 256 \\
        --loop-closure --seed 100 --out runs/cubemap/pano.png

It needs both libraries: `pip install py360convert pytorch360convert` (the `sphere` extra brings
only the first).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "src")]

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

from panosync import cubemap  # noqa: E402
from panosync.files import write_atomically  # noqa: E402

REAL = ROOT / "runs" / "cubemap" / "pano.png"
GENERATE = ["generate", "snowy mountains", "--model", "pocket", "--width", "512", "--height", "256",
            "--loop-closure", "--seed", "100", "--out", str(REAL)]
ACCURACY_WIDTH, TIMING_WIDTH, REPEATS, PROCESSES = 512, 2048, 5, 3
PACKAGES = {"py360convert (OpenCV)": "py360convert", "py360convert (SciPy)": "py360convert",
            "pytorch360convert": "pytorch360convert"}


# ------------------------------------------------------------------------------ the libraries
# Each as two functions of numpy arrays (H, W, C) float32 in [0, 1], the faces in py360convert's
# list order (cubemap.LIBRARY_ORDER; pytorch360convert keeps the same), and a reset that drops
# what the library caches, so a first call can be timed again.


def py360convert_functions(backend: str):
    import py360convert
    import py360convert.utils as utils

    if backend == "SciPy":
        utils.cv2 = None  # its own switch: the samplers use OpenCV only when this module is there
    elif utils.cv2 is None:
        return None

    def reset():
        for sampler in (utils.EquirecSampler, utils.CubeFaceSampler):
            for name in ("from_cubemap", "from_equirec"):
                if name in vars(sampler):
                    vars(sampler)[name].__func__.cache_clear()
        utils.xyzcube.cache_clear()
        utils.equirect_uvgrid.cache_clear()
        utils.equirect_facetype.cache_clear()

    def to_faces(image, size):
        return py360convert.e2c(image, face_w=size, mode="bilinear", cube_format="list")

    def to_equirect(faces, width):
        return py360convert.c2e(list(faces), width // 2, width, mode="bilinear", cube_format="list")

    return to_faces, to_equirect, reset


def pytorch360convert_functions():
    import pytorch360convert
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

    def to_faces(image, size):
        faces = pytorch360convert.e2c(torch.from_numpy(image).permute(2, 0, 1), face_w=size, mode="bilinear",
                                      cube_format="list")
        return [face.permute(1, 2, 0).numpy() for face in faces]

    def to_equirect(faces, width):
        tensors = [torch.from_numpy(np.ascontiguousarray(face)).permute(2, 0, 1) for face in faces]
        image = pytorch360convert.c2e(tensors, width // 2, width, mode="bilinear", cube_format="list")
        return image.permute(1, 2, 0).numpy()

    return to_faces, to_equirect, lambda: None


# ------------------------------------------------------------------------------ the images


def synthetic(directions: np.ndarray) -> np.ndarray:
    """A smooth colour function of the direction (continuous over the poles and the seam), float32."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    return np.stack([0.5 + 0.4 * x * np.cos(2 * y), 0.5 + 0.45 * y * z + 0.05 * x,
                     0.5 + 0.3 * np.sin(3 * x + 2 * z) + 0.15 * y], axis=-1).astype(np.float32)


def real_image() -> np.ndarray:
    if not REAL.exists():
        REAL.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "panosync.cli", *GENERATE], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    with PIL.Image.open(REAL) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def face_directions(face: str, positions: np.ndarray) -> np.ndarray:
    """Unit directions of a face's texels placed at `positions` in [-1, 1] (cubemap.texel_directions'
    table; it places them at their centres)."""
    s, t = np.meshgrid(positions, positions)
    one = np.ones_like(s)
    vectors = np.stack({"px": (one, -t, -s), "nx": (-one, -t, s), "py": (s, one, t), "ny": (s, -one, -t),
                        "pz": (s, -t, one), "nz": (-s, -t, -one)}[face], axis=-1)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def errors(found: np.ndarray, truth: np.ndarray) -> dict:
    """PSNR (peak 1) and the mean and largest absolute error in 8-bit levels, over every value."""
    difference = np.abs(found.astype(np.float64) - truth.astype(np.float64))
    mse = float((difference ** 2).mean())
    return dict(psnr=round(10 * np.log10(1 / mse), 2) if mse else float("inf"),
                mean_abs=round(float(difference.mean() * 255), 3), max_abs=round(float(difference.max() * 255), 2))


def accuracy(functions) -> dict:
    to_faces, to_equirect, _ = functions
    width, size = ACCURACY_WIDTH, ACCURACY_WIDTH // 4
    truth = synthetic(cubemap.pixel_directions(width, width // 2))
    true_faces = [synthetic(cubemap.texel_directions(name, size)) for name in cubemap.LIBRARY_ORDER]
    faces = to_faces(truth, size)
    real = real_image()
    real_width = real.shape[1]
    again = to_equirect(to_faces(real, real_width // 4), real_width)
    band = slice(real.shape[0] // 4, real.shape[0] * 3 // 4)  # latitudes within ±45°
    # the same faces sampled where the faces → equirect direction reads texel i (at its top-left corner,
    # s = 2i/N − 1), against the truth where it puts column x (its linspace grid): what is left is the
    # interpolation's own error
    corners = 2 * np.arange(size) / size - 1
    corner_faces = [synthetic(face_directions(name, corners)) for name in cubemap.LIBRARY_ORDER]
    longitude, latitude = np.meshgrid(np.linspace(-np.pi, np.pi, width), np.linspace(np.pi / 2, -np.pi / 2, width // 2))
    grid_truth = synthetic(np.stack([np.cos(latitude) * np.sin(longitude), np.sin(latitude),
                                     np.cos(latitude) * np.cos(longitude)], axis=-1))
    large = TIMING_WIDTH
    large_truth = synthetic(cubemap.pixel_directions(large, large // 2))
    large_faces = [synthetic(cubemap.texel_directions(name, large // 4)) for name in cubemap.LIBRARY_ORDER]
    large_error = np.abs(to_equirect(large_faces, large) - large_truth).max(axis=-1) * 255
    return dict(
        round_trip_synthetic=errors(to_equirect(faces, width), truth),
        round_trip_real=errors(again, real),
        round_trip_real_band=errors(again[band], real[band]),
        round_trip_real_half_faces=errors(to_equirect(to_faces(real, real_width // 2), real_width), real),
        faces_vs_truth=errors(np.stack(faces), np.stack(true_faces)),
        equirect_vs_truth=errors(to_equirect(true_faces, width), truth),
        equirect_of_corner_faces=errors(to_equirect(corner_faces, width), grid_truth),
        equirect_vs_truth_large=dict(max_abs=round(float(large_error.max()), 2),
                                     pixels_over_8=int((large_error > 8).sum())),
    )


def timing(name: str, threads: int | None = None) -> dict:
    """timing_once in PROCESSES fresh processes (at `threads`, else OMP_NUM_THREADS), each figure the
    fastest: the machine's cores are shared, and a first call can be timed only once in a process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.environ["OMP_NUM_THREADS"])}
    runs = [json.loads(subprocess.run([sys.executable, __file__, "--time", name], check=True, capture_output=True,
                                      text=True, env=env).stdout) for _ in range(PROCESSES)]
    return {key: min(run[key] for run in runs) for key in runs[0]}


def timing_once(functions) -> dict:
    to_faces, to_equirect, reset = functions
    image = synthetic(cubemap.pixel_directions(TIMING_WIDTH, TIMING_WIDTH // 2))
    size = TIMING_WIDTH // 4
    reset()
    started = time.perf_counter()
    faces = to_faces(image, size)
    first_faces = time.perf_counter() - started
    started = time.perf_counter()
    to_equirect(faces, TIMING_WIDTH)
    first_equirect = time.perf_counter() - started
    repeat_faces, repeat_equirect = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        faces = to_faces(image, size)
        repeat_faces.append(time.perf_counter() - started)
        started = time.perf_counter()
        to_equirect(faces, TIMING_WIDTH)
        repeat_equirect.append(time.perf_counter() - started)
    return dict(to_faces_first=round(first_faces, 3), to_faces_repeat=round(min(repeat_faces), 3),
                to_equirect_first=round(first_equirect, 3),
                to_equirect_repeat=round(min(repeat_equirect), 3))


# ------------------------------------------------------------------------------ install and upkeep


def direct_requirements(name: str) -> list[str]:
    """What `name` requires itself, here (markers evaluated, extras left out)."""
    found = []
    for text in importlib.metadata.distribution(name).requires or []:
        requirement = Requirement(text)
        if not requirement.marker or requirement.marker.evaluate({"extra": ""}):
            found.append(normalized(requirement.name))
    return sorted(set(found))


def requirements_closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distributions `name` needs (itself included), following requirements whose
    markers hold here, by normalized name."""
    seen, todo = set(), [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        key = normalized(current)
        if key in seen and not wanted:
            continue
        seen.add(key)
        try:
            distribution = importlib.metadata.distribution(current)
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in distribution.requires or []:
            requirement = Requirement(text)
            environments = [{"extra": extra} for extra in ("", *wanted)]
            if requirement.marker and not any(requirement.marker.evaluate(env) for env in environments):
                continue
            if normalized(requirement.name) not in seen or requirement.extras:
                todo.append((requirement.name, tuple(requirement.extras)))
    return seen


def normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_bytes(name: str) -> int:
    distribution = importlib.metadata.distribution(name)
    total = 0
    for file in distribution.files or []:
        path = Path(distribution.locate_file(file))
        if path.is_file():
            total += path.stat().st_size
    return total


def install_weight(package: str) -> dict:
    closure = requirements_closure(package)
    panosync = requirements_closure("panosync")
    added = sorted(closure - panosync - {normalized(package)})
    return dict(package_mib=round(installed_bytes(package) / 2**20, 2),
                requires=direct_requirements(package), closure=sorted(closure - {normalized(package)}),
                closure_mib=round(sum(installed_bytes(name) for name in closure) / 2**20, 1),
                adds_to_panosync=added,
                adds_to_panosync_mib=round(sum(installed_bytes(name) for name in {package, *added}) / 2**20, 2),
                version=importlib.metadata.version(package),
                license=importlib.metadata.metadata(package).get("License") or "")


def maintenance(package: str) -> dict:
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=15) as answer:
            record = json.load(answer)
    except (OSError, ValueError) as error:
        return dict(latest=None, released=None, note=f"PyPI not reached: {error}")
    dates = {version: min(file["upload_time"][:10] for file in files)
             for version, files in record["releases"].items() if files}
    latest = record["info"]["version"]
    year_ago = (datetime.date.today() - datetime.timedelta(days=365)).isoformat()
    return dict(latest=latest, released=dates.get(latest), first_release=min(dates.values()),
                releases=len(dates), releases_last_year=sum(date >= year_ago for date in dates.values()))


# ------------------------------------------------------------------------------ the report

CHOICE = "py360convert"
CHOSEN, OTHER = "py360convert (SciPy)", "pytorch360convert"  # the `sphere` extra alone, and the other


def why(results: dict, packages: dict, one_thread: dict, opencv_mib: int | None) -> str:
    """The reasons for CHOICE, in the measured figures (the `sphere` extra alone resamples with SciPy)."""
    chosen, other = results[CHOSEN], results[OTHER]

    def export_seconds(result):  # one export each way, as the command pays it
        return result["seconds"]["to_faces_first"] + result["seconds"]["to_equirect_first"]

    same = abs(chosen["accuracy"]["round_trip_synthetic"]["mean_abs"]
               - other["accuracy"]["round_trip_synthetic"]["mean_abs"]) < 0.05
    corners = other["accuracy"]["equirect_vs_truth_large"]
    ours = chosen["accuracy"]["equirect_vs_truth_large"]
    once = {"two": export_seconds(other), "one": one_thread["to_faces_first"] + one_thread["to_equirect_first"]}
    best = min(once.values())
    ratio = best / export_seconds(chosen)
    speed = ("faster, so speed speaks for it too" if ratio > 1.5 else "slower, which speaks against it"
             if ratio < 1 / 1.5 else "about as fast, so speed decides nothing")
    opencv = results.get("py360convert (OpenCV)")
    with_opencv = ""
    if opencv:
        gain = export_seconds(chosen) - export_seconds(opencv)
        with_opencv = (f"; OpenCV, which py360convert uses where the control extra brings it, saves {gain:.2f} s of "
                       f"that: worth having where it is, not worth {opencv_mib} MiB more in the sphere extra for a "
                       f"command that takes about a second" if gain > 0 else
                       f"; OpenCV, which py360convert uses where the control extra brings it, is no faster "
                       f"({export_seconds(opencv):.2f} s), so the sphere extra does not bring it")
    weight = packages["py360convert"]["install"], packages["pytorch360convert"]["install"]
    return (f"{'the same' if same else 'not the same'} accuracy as pytorch360convert over the faces, but where "
            f"pytorch360convert's faces → equirect puts {corners['pixels_over_8']} pixels of the "
            f"{TIMING_WIDTH}x{TIMING_WIDTH // 2} panorama more than 8 levels off (up to "
            f"{corners['max_abs']:.0f}, at the cube's corners), py360convert puts {ours['pixels_over_8']} (largest error {ours['max_abs']:.1f}); one "
            f"export each way, the first call in a process, takes {export_seconds(chosen):.2f} s with SciPy (the "
            f"`sphere` extra alone) against pytorch360convert's {best:.2f} s at its best ({once['one']:.2f} s on one "
            f"thread, {once['two']:.2f} s on {os.environ['OMP_NUM_THREADS']} while other work holds a core): {speed}"
            f"{with_opencv}; both add nothing to panosync's own requirements beyond a "
            f"{weight[0]['package_mib']:.1f} MiB wheel, but apart from panosync py360convert needs "
            f"{weight[0]['closure_mib']:,.0f} MiB (numpy, SciPy, Pillow) against torch's "
            f"{weight[1]['closure_mib']:,.0f}; their upkeep is alike (the table's last row)")


def library_functions(name: str):
    if name == "pytorch360convert":
        return pytorch360convert_functions()
    return py360convert_functions("OpenCV" if name.endswith("(OpenCV)") else "SciPy")


def main() -> None:
    if sys.argv[1:] == ["--panorama-only"]:
        real_image()
        return
    if sys.argv[1:2] == ["--time"]:
        print(json.dumps(timing_once(library_functions(sys.argv[2]))))
        return
    for package in sorted(set(PACKAGES.values())):
        if importlib.util.find_spec(package) is None:
            sys.exit(f"benchmarks/cubemap.py measures {package}, which is not installed: pip install {package}.")
    # SciPy last: switching py360convert to it is for the rest of the process
    libraries = {name: library_functions(name) for name in ("py360convert (OpenCV)", "pytorch360convert",
                                                            "py360convert (SciPy)")}
    results = {}
    for name, functions in libraries.items():
        if functions is None:
            print(f"{name}: not measured (OpenCV not installed)", flush=True)
            continue
        results[name] = dict(accuracy=accuracy(functions), seconds=timing(name))
        print(name, json.dumps(results[name]), flush=True)
    # torch on two threads slows down most while other work holds one of this machine's two cores: its
    # time on one thread, beside
    one_thread = timing("pytorch360convert", threads=1)
    packages = {package: dict(install=install_weight(package), maintenance=maintenance(package))
                for package in sorted(set(PACKAGES.values()))}
    try:
        opencv_mib = round(installed_bytes("opencv-python-headless") / 2**20)
    except importlib.metadata.PackageNotFoundError:
        opencv_mib = None
    versions = {}
    for module in ("numpy", "scipy", "opencv-python-headless", "torch"):
        try:
            versions[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            versions[module] = None
    everything = dict(results=results, packages=packages, choice=CHOICE,
                      why=why(results, packages, one_thread, opencv_mib), pytorch360convert_one_thread=one_thread,
                      opencv_mib=opencv_mib,
                      threads=int(os.environ["OMP_NUM_THREADS"]), machine=platform.processor() or platform.machine(),
                      python=platform.python_version(), versions=versions, date=datetime.date.today().isoformat(),
                      sizes=dict(accuracy=f"{ACCURACY_WIDTH}x{ACCURACY_WIDTH // 2}, faces {ACCURACY_WIDTH // 4}",
                                 timing=f"{TIMING_WIDTH}x{TIMING_WIDTH // 2}, faces {TIMING_WIDTH // 4}"))
    write_atomically(HERE / "CUBEMAP.json", json.dumps(everything, indent=1))
    write_atomically(HERE / "CUBEMAP.md", report(everything))
    print((HERE / "CUBEMAP.md").read_text())


def report(everything: dict) -> str:
    results, packages = everything["results"], everything["packages"]
    names = list(results)

    def row(label, value):
        return f"| {label} | " + " | ".join(value(name) for name in names) + " |"

    def error_cells(key):
        return lambda name: "{psnr:.1f} dB · {mean_abs:.2f} · {max_abs:.1f}".format(**results[name]["accuracy"][key])

    def seconds(key):
        def cell(name):
            figures = results[name]["seconds"]
            return f"{figures[key + '_first']:.2f} · {figures[key + '_repeat']:.2f}"

        return cell

    def package(name):
        return packages[PACKAGES[name]]

    def weight(name):
        install = package(name)["install"]
        added = ", ".join(install["adds_to_panosync"]) or "nothing"
        return (f"{install['package_mib']:.2f} MiB; needs {', '.join(install['requires'])} "
                f"({len(install['closure'])} packages with what they need, {install['closure_mib']:,.0f} MiB); adds "
                f"to panosync's requirements: {added}")

    def upkeep(name):
        record = package(name)["maintenance"]
        if not record.get("latest"):
            return "unknown (PyPI not reached)"
        return (f"{record['latest']}, {record['released']} ({record['releases']} releases since "
                f"{record['first_release'][:4]}, {record['releases_last_year']} in the last year)")

    versions = ", ".join(f"{name} {version}" for name, version in everything["versions"].items() if version)
    lines = ["# Cube maps: py360convert or pytorch360convert", "",
             f"`python benchmarks/cubemap.py`, {everything['date']}, CPU ({everything['machine']}), "
             f"{everything['threads']} threads, Python {everything['python']}, {versions}. Bilinear both ways.", "",
             f"Accuracy at {everything['sizes']['accuracy']}: PSNR · mean · largest absolute error in 8-bit levels, "
             "over every pixel and channel. Time at "
             f"{everything['sizes']['timing']}, seconds: the first call in a process (one `panosync export`) · "
             f"the fastest of {REPEATS} repeats; each the fastest of {PROCESSES} processes.", "",
             "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
             row("round trip, synthetic", error_cells("round_trip_synthetic")),
             row("round trip, pocket panorama", error_cells("round_trip_real")),
             row("… its latitudes within ±45°", error_cells("round_trip_real_band")),
             row("… through faces W/2 (`--face-size`)", error_cells("round_trip_real_half_faces")),
             row("faces vs truth (synthetic)", error_cells("faces_vs_truth")),
             row("equirect from true faces vs truth", error_cells("equirect_vs_truth")),
             row("… from faces at texel corners, vs truth on its grid", error_cells("equirect_of_corner_faces")),
             row(f"… at {TIMING_WIDTH}x{TIMING_WIDTH // 2}: pixels over 8 levels off · largest",
                 lambda name: "{pixels_over_8} · {max_abs:.1f}".format(
                     **results[name]["accuracy"]["equirect_vs_truth_large"])),
             row("equirect → faces, s", seconds("to_faces")),
             row("faces → equirect, s", seconds("to_equirect")),
             row("install", weight),
             row("latest release", upkeep),
             "",
             "The synthetic image is smooth, so its errors are the sampling grids' more than the interpolation's: "
             "both libraries' faces → equirect read a face's texel i as lying at its top-left corner, not its "
             "centre, half a texel off (given faces sampled there, and judged where it puts its columns and rows, "
             "it is off by the interpolation's error alone, the row \"from faces at texel corners\"), and their "
             "equirect → faces put the texels at the ends of their range (numpy's linspace), up to half a texel "
             "off at a face's edges; the rows next to the poles show it most. The "
             "pocket panorama loses what bilinear resampling twice loses of pixel-sized detail (faces W/4 sample the "
             "equator at the panorama's own resolution, between its pixels); its largest errors lie towards the poles, "
             "where the image has W pixels for a spot of the sphere, and the pocket model, not "
             "made for spheres, paints them all differently. Faces W/2 keep more of it. The machine's two cores "
             "are shared with other work, so its times vary from run to run, torch's on two threads by up to three "
             "times.", "",
             f"**Choice: {everything['choice']}**: {everything['why']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
