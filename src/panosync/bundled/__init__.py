"""Models shipped inside the package, as diffusers folders: `panosync generate --model pocket`,
`SyncDiffusionPipeline.from_pretrained("pocket")`; and ControlNets for them, as diffusers ControlNet
folders: `panosync control --model pocket --controlnet pocket-canny`. A folder may hold `recommended.json`, the
generation settings its authors recommend (the command uses them as its defaults)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bundled_model_folder(name: str) -> Path | None:
    """The folder of the bundled model called `name`, or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    folder = HERE / name
    return folder if (folder / "model_index.json").is_file() else None


def bundled_controlnet_folder(name: str) -> Path | None:
    """The folder of the bundled ControlNet called `name` (a config.json and no model_index.json), or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    folder = HERE / name
    is_controlnet = (folder / "config.json").is_file() and not (folder / "model_index.json").is_file()
    return folder if is_controlnet else None


def bundled_controlnet_names() -> list[str]:
    return sorted(p.parent.name for p in HERE.glob("*/config.json") if bundled_controlnet_folder(p.parent.name))


def bundled_model_names() -> list[str]:
    return sorted(p.parent.name for p in HERE.glob("*/model_index.json"))


def recommended_settings(folder: str | Path) -> dict:
    """The generation settings stored with a model folder, {} when it has none. A file that is not a
    JSON object is a SettingError naming the file: the model's authors wrote it, not the user. Its
    values are checked by models.check_recommended, its keys by settings.recommended_of."""
    from ..errors import SettingError
    from ..families import read_json_file

    path = Path(folder) / "recommended.json"
    if not os.path.lexists(path):
        return {}
    try:
        return read_json_file(path, "an object of settings")
    except ValueError as error:
        raise SettingError(None, str(error)) from None
