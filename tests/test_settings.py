"""The one settings layer: every front end is made from settings.PARAMETERS, the precedence of a
value's sources, and every family of hostile input refused before any model work, with one
sentence (exit 2 on the command, 422 naming the field on the API)."""

import ast
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import PIL.Image
import PIL.PngImagePlugin
import pytest

from panosync import models, settings
from panosync.cli import build_parser, main
from panosync.metadata import save_png

SRC = Path(__file__).parents[1] / "src" / "panosync"


def imports_of(path: Path) -> set[str]:
    """The panosync modules a file imports, as dotted names relative to the package ("cli", "server.jobs")."""
    package = path.relative_to(SRC).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [".".join(base + [alias.name]) for alias in node.names]
                found.update(name.strip(".") for name in names)
            elif node.module and node.module.startswith("panosync"):
                found.add(node.module.removeprefix("panosync").strip("."))
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("panosync").strip(".") for alias in node.names
                         if alias.name.startswith("panosync"))
    return found


def test_no_front_end_imports_another():
    for path in [*SRC.glob("server/*.py"), *SRC.glob("eval/*.py")]:
        imported = imports_of(path)
        assert "cli" not in imported, f"{path.name} imports the command module"
        other = "eval" if path.parent.name == "server" else "server"
        assert not any(name == other or name.startswith(other + ".") for name in imported), path
    settings_imports = imports_of(SRC / "settings.py")
    assert not any(name.split(".")[0] in ("cli", "server", "eval") for name in settings_imports), settings_imports


def import_graph() -> dict[str, set[str]]:
    """Every panosync module and the panosync modules it imports, at module level or inside a
    function (a package by its own name: "backbones" is backbones/__init__.py)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix("__init__").strip(".")
        modules[name or "panosync"] = imports_of(path)
    return {name: {imported for imported in found if imported in modules and imported != name}
            for name, found in modules.items()}


def test_no_import_cycles():
    """Imports run one way (docs/DESIGN.md): leaves, backbones, pipelines, settings, models,
    registry, front ends. A cycle, even through an import inside a function, means a cut is wrong."""
    graph = import_graph()
    done, path = set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_the_lower_layers_import_nothing_above_them():
    graph = import_graph()
    assert graph["families"] == graph["errors"] == set() and graph["geometry"] == {"errors"}
    for name in ("settings", "geometry", "families"):
        above = {imported for imported in graph[name] if imported.split(".")[0] in (
            "backbones", "registry", "models", "pipeline", "xl", "sd3", "flux", "control", "control_sd3",
            "control_flux", "schedulers", "fast")}
        assert not above, (name, above)
    for name in [name for name in graph if name.startswith("backbones.")]:
        outside = {imported for imported in graph[name] if not imported.startswith("backbones")}
        assert outside <= {"geometry", "families", "schedulers", "views"}, (name, outside)


def test_every_parameter_reaches_every_front_end():
    from panosync.eval.command import NOT_EVALUATED, SHARED_PARAMETERS, SYNC_PARAMETERS
    from panosync.server.schema import CONTROL_FIELDS, FIELDS, LORA_FIELDS, PredictionRequest

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command, names in (("generate", settings.PIPELINE_NAMES),
                           ("control", settings.PIPELINE_NAMES + settings.CONTROL_NAMES)):
        destinations = {action.dest for action in commands[command]._actions}
        assert set(names) <= destinations, set(names) - destinations
    served = {p.name for p in settings.PARAMETERS if p.served}
    assert set(FIELDS + CONTROL_FIELDS) == served == set(PredictionRequest.model_fields) - set(LORA_FIELDS)
    assert {"fast_modes", "sync_image_scale", "anchor", "tiled_decode"} <= set(FIELDS)
    assert set(SHARED_PARAMETERS + SYNC_PARAMETERS + NOT_EVALUATED) == set(settings.PIPELINE_NAMES)
    evaluate = {action.dest for action in commands["evaluate"]._actions}
    assert set(SHARED_PARAMETERS + SYNC_PARAMETERS) <= evaluate


@pytest.mark.slow
def test_a_new_parameter_added_in_settings_appears_in_every_front_end(tmp_path):
    """One Parameter more in settings.PARAMETERS, and nothing else: the command, the API's schema,
    the page and evaluate take it."""
    script = tmp_path / "new_parameter.py"
    script.write_text("""
import sys
from panosync import settings
new = settings.Parameter("sparkle", float, 0.5, "how much it sparkles", minimum=0, maximum=1)
settings.PARAMETERS += (new,)
settings.BY_NAME["sparkle"] = new
settings.PIPELINE_NAMES += ("sparkle",)
from panosync.cli import build_parser
parser = build_parser()
args = parser.parse_args(["generate", "a", "--sparkle", "0.25"])
assert args.sparkle == 0.25
assert parser.parse_args(["evaluate", "--prompts", "p", "--out", "o", "--sparkle", "0.5"]).sparkle == 0.5
from panosync.server.schema import FIELDS, PredictionRequest
assert "sparkle" in FIELDS and PredictionRequest(prompt="a", sparkle=0.75).given() == {"prompt": "a", "sparkle": 0.75}
try:
    PredictionRequest(prompt="a", sparkle=2)
except Exception as error:
    assert "less than or equal to 1" in str(error)
else:
    raise AssertionError("the API took sparkle 2")
from panosync.server import ui
from panosync.server.generation import PanoramaModel
from panosync.server.limits import Limits
from panosync.tiny import tiny_random_components
from panosync.pipeline import SyncDiffusionPipeline
pipe = SyncDiffusionPipeline(**tiny_random_components(window=8, vae_factor=2))
ui.SPEED_INPUTS += ("sparkle",)  # where the page shows it: a layout choice, not a definition
ui.SLIDER_SPANS["sparkle"] = (0, 1, 0.05)
page = ui.build_ui(PanoramaModel(pipe, "tiny", settings.model_defaults(None)), Limits(), sys.argv[1])
assert any(getattr(block, "elem_id", None) == "sparkle" for block in page.blocks.values())
print("ok")
""")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC.parent)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_precedence_given_then_png_then_recommended_then_paper():
    stored = {"sync_weight": 5.0, "guidance_scale": 3.0, "seed": 4}
    recommended = {"sync_weight": 40.0, "guidance_scale": 6.0, "num_inference_steps": 30}
    values = settings.resolve({"sync_weight": 1.0, "seed": None}, stored, recommended)
    assert values["sync_weight"] == 1.0  # given
    assert values["guidance_scale"] == 3.0 and values["seed"] == 4  # the PNG's (an option left out is None)
    assert values["num_inference_steps"] == 30  # the model's
    assert values["sync_decay_rate"] == 0.95 and values["fast_modes"] == []  # the paper's
    assert settings.paper_defaults(control=True)["sync_threshold"] == 10  # ControlSync's paper


def test_the_pipelines_defaults_are_the_settings_defaults():
    """Every pipeline's call takes the settings table's defaults, with its family's (families.py)
    over the paper's; diffusers' own parameters may be given by position, SyncDiffusion's by name."""
    import inspect

    import panosync
    from panosync.families import FAMILY_DEFAULTS

    diffusers_names = {"prompt", "height", "width", "num_inference_steps", "guidance_scale", "negative_prompt"}
    pipelines = [getattr(panosync, name) for name in panosync.__all__ if name.endswith("Pipeline")
                 and not name.startswith("Auto")]
    assert len(pipelines) == 8
    for pipeline in pipelines:
        control = pipeline.__name__.startswith("ControlSync")
        signature = inspect.signature(pipeline.__call__).parameters
        expected = {**settings.paper_defaults(control), **FAMILY_DEFAULTS[pipeline.family]}
        for name in settings.PIPELINE_NAMES:
            default = signature[name].default
            default = list(default) if isinstance(default, tuple) else default
            if name == "negative_prompt":
                default = "" if default is None else default  # None: no negative prompt, as in diffusers
            assert name == "prompt" or default == expected[name], (pipeline.__name__, name)
            kind = signature[name].kind
            assert (kind is inspect.Parameter.KEYWORD_ONLY) == (name not in diffusers_names), (pipeline.__name__, name)


def test_the_command_uses_the_models_recommended_settings_and_the_png_over_them(tmp_path, sync_pipe, monkeypatch):
    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    (folder / "recommended.json").write_text(json.dumps({"sync_weight": 40.0, "num_inference_steps": 30,
                                                          "fast_modes": ["no_unet_backward"]}))
    seen = {}

    def make_panorama(args, request, source, out, load=None, inputs=None):
        seen.update(request)
        return 0

    monkeypatch.setattr("panosync.cli.make_panorama", make_panorama)
    assert main(["generate", "a", "--model", str(folder), "--out", str(tmp_path / "a.png")]) == 0
    assert (seen["sync_weight"], seen["num_inference_steps"], seen["fast_modes"]) == (40.0, 30, ["no_unet_backward"])
    png = tmp_path / "stored.png"
    save_png(PIL.Image.new("RGB", (4, 4)), png, {"prompt": "b", "model": str(folder), "sync_weight": 7.0,
                                                  "fast_modes": []})
    assert main(["generate", "--from-png", str(png), "--fast", "reuse_noise", "--out", str(tmp_path / "b.png")]) == 0
    assert (seen["prompt"], seen["sync_weight"], seen["num_inference_steps"]) == ("b", 7.0, 30)
    assert seen["fast_modes"] == ["reuse_noise"]


# ----------------------------------------------------------------------- hostile inputs, by family


def tampered_png(path: Path, text: str) -> str:
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("panosync", text)
    PIL.Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return str(path)


def run_refused(argv, capsys, monkeypatch, message):
    """Run the command; it must exit 2 with one line holding `message`, having loaded no model."""
    from test_cli import no_loading

    monkeypatch.setattr(models, "load_pipeline", no_loading)
    monkeypatch.setattr(models, "load_control_pipeline", no_loading)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("text,message", [
    ("[1, 2]", "are a JSON array, not an object"),
    ("[" * 100000 + "]" * 100000, "are not JSON"),
    ('"a string"', "are a JSON string, not an object"),
    ("{not json", "are not JSON"),
    ('{"prompt": "a", "model": "tiny-random", "guidance_scale": "NaN"}', "guidance_scale must be a number, got 'NaN'"),
    ('{"prompt": "a", "model": "tiny-random", "seed": "x"}', "seed must be a whole number, got 'x'"),
    ('{"prompt": "a", "model": "tiny-random", "seed": true}', "seed must be a whole number, got True"),
    ('{"prompt": "a", "model": "tiny-random", "sync_weight": 1e999}', "sync_weight must be a finite number"),
    ('{"prompt": 5, "model": "tiny-random"}', "prompt must be text, got 5"),
    ('{"prompt": "a", "model": ["tiny-random"]}', "model must be text"),
    ('{"prompt": "a", "model": "tiny-random", "fast_modes": "turbo"}', "fast_modes must be a list, got 'turbo'"),
])
def test_a_tampered_png_is_one_sentence(tmp_path, capsys, monkeypatch, text, message):
    png = tampered_png(tmp_path / "tampered.png", text)
    run_refused(["generate", "--from-png", png, "--out", str(tmp_path / "out.png")], capsys, monkeypatch, message)


def test_a_refused_value_is_shown_cut_short():
    """A megabyte sent as a width is not echoed back whole (the HTTP API's 422 uses these sentences)."""
    sentence = settings.refusal("width", "x" * 10**6)
    assert sentence.startswith("width must be a whole number, got 'xxx") and sentence.endswith(
        "… (1,000,002 characters).") and len(sentence) < 150
    assert settings.refusal("width", "128") == "width must be a whole number, got '128'."
    assert settings.refusal("width", 128) is None and settings.refusal("no_such_parameter", 1) is None


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_one_sentence_as_on_the_server(tmp_path, capsys, monkeypatch, prompt):
    run_refused(["generate", prompt, "--model", "tiny-random", "--out", str(tmp_path / "x.png")], capsys, monkeypatch,
                "prompt must not be empty: say what the panorama shows")


@pytest.mark.parametrize("option", ["prompt", "--negative-prompt"])
def test_a_prompt_of_bytes_that_are_no_text_is_one_sentence(tmp_path, capsys, monkeypatch, option):
    """The shell hands Python bytes that are no UTF-8 as lone surrogates ("\\udcff"): refused before
    loading, not a tokenizer's traceback after it."""
    words = ["\udcff\udcfe"] if option == "prompt" else ["a", option, "\udcff"]
    name = option.lstrip("-").replace("-", "_")
    run_refused(["generate", *words, "--model", "tiny-random", "--out", str(tmp_path / "x.png")], capsys, monkeypatch,
                f"{name} must be UTF-8 text")


def test_outputs_are_checked_before_generating(tmp_path, capsys, monkeypatch):
    common = ["generate", "a", "--model", "tiny-random", "--width", "512", "--steps", "1"]
    run_refused([*common, "--out", str(tmp_path)], capsys, monkeypatch, "is a folder: give a file name")
    a_file = tmp_path / "file"
    a_file.write_text("")
    run_refused([*common, "--out", str(a_file / "x.png")], capsys, monkeypatch, "is a file")
    pipe = tmp_path / "pipe"  # as /dev/full or /dev/sda would be: the panorama must not replace it
    os.mkfifo(pipe)
    run_refused([*common, "--out", str(pipe)], capsys, monkeypatch, "is a device, pipe or socket, not a file")
    assert stat.S_ISFIFO(os.lstat(pipe).st_mode)
    dangling = tmp_path / "dangling.png"
    dangling.symlink_to(tmp_path / "missing" / "x.png")
    run_refused([*common, "--out", str(dangling)], capsys, monkeypatch, "which does not exist: give the file name")
    assert dangling.is_symlink()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        run_refused([*common, "--out", str(locked / "x.png")], capsys, monkeypatch, "cannot be made or written")


@pytest.mark.parametrize("side,message", [(20000, "its header claims more pixels than any image"),  # PIL's limit
                                          (9000, "= 81,000,000 pixels, more than the 67,108,864 allowed")])
def test_a_huge_condition_is_refused_from_its_header(tmp_path, capsys, monkeypatch, side, message):
    """A 20000 × 20000 palette PNG is a few hundred kilobytes: refused before it is decoded."""
    bomb = tmp_path / "bomb.png"
    PIL.Image.new("P", (side, side)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    run_refused(["control", "a", "--model", "tiny-random", "--controlnet", "tiny-random", "--condition", str(bomb)],
                capsys, monkeypatch, message)


@pytest.mark.parametrize("options,message", [
    (["--seeds", "0-4294967296"], "--seeds must be from 0 to 4294967295, got 0-4294967296"),
    (["--seeds", "0-4294967295"], "--seeds names more than 100,000 seeds"),
    (["--guidance-scale", "nan"], "guidance_scale must be a finite number"),
    (["--sync-weight", "inf"], "sync_weight must be a finite number"),
    (["--steps", "100000"], "num_inference_steps must be from 1 to 1000"),
    (["--view-batch-size", "0"], "view_batch_size must be 1 or more"),
    (["--fast", "none", "--anchor", "99", "--width", "1024"], "anchor must be a view index from 0 to"),
    (["--out", "FILE"], "is a file: give a folder"),
])
def test_evaluate_refuses_hostile_options_before_loading(tmp_path, capsys, monkeypatch, options, message):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a landscape\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    options = [str(a_file) if option == "FILE" else option for option in options]
    out = [] if "--out" in options else ["--out", str(tmp_path / "out")]
    run_refused(["evaluate", "--model", "tiny-random", "--prompts", str(prompts), *out, *options], capsys,
                monkeypatch, message)


def test_serve_and_ui_refuse_bad_options_before_loading(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    run_refused(["serve", "--port", "0", "--model", "tiny-random", "--view-batch-size", "0", "--state-dir", str(tmp_path / "s")],
                capsys, monkeypatch, "view_batch_size must be 1 or more")
    run_refused(["ui", "--port", "0", "--model", "tiny-random", "--out-dir", str(a_file)], capsys, monkeypatch, "is a file")
    run_refused(["serve", "--port", "0", "--model", "tiny-random", "--device", "foo", "--state-dir", str(tmp_path / "s")], capsys,
                monkeypatch, "--device foo is not a device")


def test_presets_set_the_fast_modes(tmp_path, sync_pipe):
    """On a model that recommends a fast mode, "faithful" and "paper" are the paper's gradient in
    every step, and "fast" syncs the first quarter of the steps with reuse_noise and lpips_alex."""
    from panosync.models import resolve_model
    from panosync.presets import PRESET_NAMES, presets as presets_of

    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    (folder / "recommended.json").write_text(json.dumps({"sync_weight": 40.0, "num_inference_steps": 30,
                                                          "fast_modes": ["no_unet_backward"]}))
    source = resolve_model(str(folder))
    presets = presets_of(settings.model_defaults(source), source.geometry)
    assert list(presets) == ["recommended", "fast", "faithful", "paper"]
    assert presets["recommended"]["fast_modes"] == ["no_unet_backward"]
    assert presets["paper"]["fast_modes"] == [] and presets["faithful"]["fast_modes"] == []
    assert presets["faithful"]["sync_threshold"] is None and presets["faithful"]["sync_weight"] == 40.0
    assert presets["fast"]["fast_modes"] == ["lpips_alex", "reuse_noise"]
    assert presets["fast"]["sync_threshold"] == 8 and presets["fast"]["sync_weight"] == 40.0  # 30 steps: the first 8
    assert presets["paper"]["sync_weight"] == 20.0 and presets["paper"]["stride"] == source.geometry.window // 4
    assert all(set(values) == set(PRESET_NAMES) for values in presets.values())


def test_a_model_without_recommended_settings_has_fast_and_paper_presets():
    from panosync.models import resolve_model
    from panosync.presets import presets as presets_of

    source = resolve_model("tiny-random")
    presets = presets_of(settings.model_defaults(source), source.geometry)
    assert list(presets) == ["fast", "paper"]  # recommended and faithful would be the paper's
    assert presets["fast"]["sync_threshold"] == 13  # a quarter of 50 steps, rounded up
    control = presets_of(settings.model_defaults(source, control=True), source.geometry, control=True)
    # ControlSync's paper syncs its first 10 of 50: fast syncs no more than that
    assert control["paper"]["sync_threshold"] == 10 and control["fast"]["sync_threshold"] == 10


def test_the_fast_preset_leaves_lpips_alex_out_where_alexnet_cannot_see_the_views():
    from panosync.presets import fast_preset_modes, fast_threshold

    assert fast_preset_modes(64) == fast_preset_modes(31) == ["lpips_alex", "reuse_noise"]
    assert fast_preset_modes(30) == fast_preset_modes(16) == ["reuse_noise"]
    assert fast_preset_modes(None) == ["lpips_alex", "reuse_noise"]
    assert (fast_threshold(30), fast_threshold(50), fast_threshold(3), fast_threshold(50, 10)) == (8, 13, 1, 10)


def test_the_commands_preset_sets_the_sync_settings_under_the_options_given(tmp_path, sync_pipe, monkeypatch):
    folder = tmp_path / "model"
    sync_pipe.save_pretrained(folder)
    (folder / "recommended.json").write_text(json.dumps({"sync_weight": 14.0, "num_inference_steps": 30,
                                                          "sync_threshold": 8, "fast_modes": ["reuse_noise"]}))
    seen = {}

    def make_panorama(args, request, source, out, load=None, inputs=None):
        seen.clear()
        seen.update(request)
        return 0

    monkeypatch.setattr("panosync.cli.make_panorama", make_panorama)
    common = ["generate", "a", "--model", str(folder), "--out", str(tmp_path / "a.png")]
    sync_keys = ("sync_weight", "num_inference_steps", "sync_threshold", "fast_modes")
    fast = ["lpips_alex", "reuse_noise"]

    def run(*options, argv=common):
        assert main([*argv, *options]) == 0
        return tuple(seen[key] for key in sync_keys)

    assert run() == (14.0, 30, 8, ["reuse_noise"])
    assert run("--preset", "faithful") == (14.0, 30, None, [])
    assert run("--preset", "fast") == (14.0, 30, 8, fast)
    assert run("--preset", "fast", "--steps", "40") == (14.0, 40, 8, fast)  # the model's 8 is fewer than 10
    assert run("--preset", "fast", "--sync-threshold", "3") == (14.0, 30, 3, fast)
    # a scale the given leaves the loss's images too small for AlexNet (32 px × 0.5): lpips_alex left out
    assert run("--preset", "fast", "--sync-image-scale", "0.5")[3] == ["reuse_noise"]
    assert run("--preset", "paper") == (20.0, 50, None, [])
    assert run("--preset", "paper", "--sync-weight", "5") == (5.0, 50, None, [])
    # over a file's values: fast and faithful change the sync step only, recommended brings the model's back
    png = tmp_path / "stored.png"
    save_png(PIL.Image.new("RGB", (4, 4)), png, {"prompt": "b", "model": str(folder), "sync_weight": 7.0,
                                                  "num_inference_steps": 20, "fast_modes": []})
    from_file = ["generate", "--from", str(png), "--out", str(tmp_path / "b.png")]
    assert run(argv=from_file) == (7.0, 20, 8, [])
    assert run("--preset", "fast", argv=from_file) == (7.0, 20, 5, fast)  # a quarter of 20
    assert run("--preset", "faithful", argv=from_file) == (7.0, 20, None, [])
    assert run("--preset", "recommended", argv=from_file) == (14.0, 30, 8, ["reuse_noise"])
    # upscale takes it too (it runs generate's request)
    wide = tmp_path / "wide.png"
    save_png(PIL.Image.new("RGB", (64, 32)), wide, {"prompt": "b", "model": str(folder)})
    upscale = ["upscale", str(wide), "--out", str(tmp_path / "up.png")]
    assert run("--preset", "faithful", argv=upscale) == (14.0, 30, None, [])
    assert run(argv=upscale) == (14.0, 30, 8, ["reuse_noise"])
    with pytest.raises(SystemExit) as refused:
        main([*common, "--preset", "turbo"])
    assert refused.value.code == 2


def test_controlsyncs_presets_keep_its_papers_threshold(tmp_path, monkeypatch):
    seen = {}

    def make_panorama(args, request, source, out, load=None, inputs=None):
        seen.update(request)
        return 0

    monkeypatch.setattr("panosync.cli.make_panorama", make_panorama)
    condition = tmp_path / "edges.png"
    PIL.Image.new("RGB", (1024, 512)).save(condition)
    for preset, threshold in (("faithful", 10), ("paper", 10), ("fast", 10)):
        seen.clear()
        assert main(["control", "a", "--model", "tiny-random", "--controlnet", "tiny-random", "--condition",
                     str(condition), "--preset", preset, "--out", str(tmp_path / "c.png")]) == 0
        assert seen["sync_threshold"] == threshold, preset


@pytest.mark.slow
def test_the_command_runs_without_the_extras(tmp_path):
    """`pip install panosync` brings what the pipelines need: the command works without the
    server's, the page's, evaluate's and OpenCV's packages, and a command that needs one says
    which extra brings it."""
    script = tmp_path / "lean.py"
    script.write_text("""
import sys
BLOCKED = {"pydantic", "pydantic_core", "fastapi", "starlette", "uvicorn", "gradio", "torchmetrics", "matplotlib", "cv2"}
for name in BLOCKED:  # None in sys.modules: not installed, for `import` and for importlib.util.find_spec alike
    sys.modules[name] = None
from panosync.cli import main
import panosync, panosync.pipeline, panosync.control, panosync.settings
assert main(["generate", "a", "--model", "tiny-random", "--width", "100"]) == 2
assert main(["serve", "--port", "0", "--model", "tiny-random", "--state-dir", sys.argv[1]]) == 2
assert main(["evaluate", "--model", "tiny-random", "--prompts", sys.argv[2], "--out", sys.argv[1] + "/eval",
             "--width", "1024", "--steps", "1"]) == 2
print("ok")
""")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC.parent)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "state"), str(prompts)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    errors = done.stderr.strip().splitlines()
    assert errors[0] == "panosync: error: width must be a multiple of 8 pixels (the VAE factor), got 100."
    assert errors[1] == ("panosync: error: panosync serve needs uvicorn, which comes with the serve extra: "
                         "pip install 'panosync[serve]'.")
    assert "which comes with the eval extra: pip install 'panosync[eval]'." in errors[2]
