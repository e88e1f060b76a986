"""The recipe configs that ship inside the package, addressable by name from anywhere.

    python -m finetune_opt.recipes.finetune_glue --config sst2     (a packaged config, by name)
    python -m finetune_opt.recipes.finetune_glue --config my.yaml  (a file: an existing path wins)
    finetune-opt configs                                           (list them, with a line each)
    finetune-opt configs cp sst2 my.yaml                           (copy one out to edit)

A study's `base_config` takes the same names, or a path relative to the study file's folder.
"""

import os
import re
from pathlib import Path

from finetune_opt.errors import ConfigError

DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """The packaged configs' names: their file names without .yaml, sorted."""
    return sorted(p.stem for p in DIR.glob("*.yaml"))


def packaged_path(name: str) -> Path | None:
    """The packaged config called `name` (no folder, no .yaml), or None."""
    return DIR / f"{name}.yaml" if isinstance(name, str) and name in names() else None


def resolve(config: str, relative_to: str | None = None, what: str = "config") -> str:
    """A config file, or failing that a packaged config's name -> the path to read. A relative path is
    taken against `relative_to` (a study file's folder), else the working directory. Neither: one line
    naming the packaged configs."""
    if not isinstance(config, str) or not config:
        raise ConfigError(f"{what} must be a file or the name of a packaged config, got {config!r}")
    path = os.path.join(relative_to, config) if relative_to else config  # (an absolute config stays itself)
    if os.path.isfile(path):
        return path
    packaged = packaged_path(config)
    if packaged is not None:
        return str(packaged)
    where = f" in {relative_to}" if relative_to and not os.path.isabs(config) else ""
    raise ConfigError(f"{what} {config!r} is neither a file{where} nor a packaged config; "
                      f"packaged configs: {', '.join(names())}")


def description(name: str) -> str:
    """The first sentence of the config's leading comment (its command lines, indented, left out)."""
    lines = []
    for line in packaged_path(name).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:]
        if text.startswith("  ") or not text.strip():  # "#   accelerate launch ...": an example command
            break
        lines.append(text.strip())
    return re.split(r"(?<=\.)\s", " ".join(lines), maxsplit=1)[0]


def recipe(name: str) -> str:
    """The recipe module that runs the config's task (`python -m <it> --config NAME`)."""
    import yaml

    from finetune_opt.tasks import get_task, recipe_module

    task = yaml.safe_load(packaged_path(name).read_text(encoding="utf-8"))["task"]
    return recipe_module(get_task(task).recipes["accelerate"])


def listing() -> str:
    """One line each: name, the recipe that runs it, what it is."""
    rows = [(name, recipe(name), description(name)) for name in names()]
    widths = [max(len(r[i]) for r in rows) + 2 for i in (0, 1)]
    return "\n".join(f"{n:<{widths[0]}}{r:<{widths[1]}}{d}" for n, r, d in rows)


def copy(name: str, dest: str) -> str:
    """Copy packaged config `name` to `dest` (a file, or an existing folder: dest/name.yaml); an
    existing file is never overwritten. Returns the path written."""
    source = packaged_path(name)
    if source is None:
        raise ConfigError(f"unknown packaged config {name!r}; choose one of: {', '.join(names())}")
    target = os.path.join(dest, f"{name}.yaml") if os.path.isdir(dest) else dest
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise ConfigError(f"cannot copy {name} to {target!r}: folder {folder!r} does not exist")
    try:
        with open(target, "x", encoding="utf-8") as f:  # "x": refuse an existing file, race-free
            f.write(source.read_text(encoding="utf-8"))
    except FileExistsError:
        raise ConfigError(f"{target!r} exists; not overwriting it: remove it or choose another destination") from None
    except OSError as e:
        raise ConfigError(f"cannot copy {name} to {target!r}: {e.strerror}") from None
    return target
