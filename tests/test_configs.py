"""Every file in configs/ loads: warmstart's option files build their command's dataclass (no
unknown key, no value of the wrong type), and the Accelerate launcher configs load with Accelerate's
own loader."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import warmstart.config
from warmstart.config import build, read_config_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OPTION_FILES = sorted(p for p in CONFIGS.glob("*") if p.suffix in (".yaml", ".yml", ".toml"))
ACCELERATE_FILES = sorted((CONFIGS / "accelerate").glob("*.yaml"))

# Which command each option file is for: a new file in configs/ must be registered here to be
# checked.
COMMAND_OF = {
    "demo.yaml": "FinetuneConfig",
    "imdb-minilm-cpu.yaml": "FinetuneConfig",
    "imdb-distilbert.yaml": "FinetuneConfig",
    "imdb-90.yaml": "FinetuneConfig",
    "imdb-minilm-gpu.yaml": "FinetuneConfig",
}


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.name)
def test_every_config_file_is_registered_with_its_command(path):
    assert path.name in COMMAND_OF, (
        f"add configs/{path.name} to COMMAND_OF with its dataclass in warmstart.config"
    )


def test_every_registered_config_file_exists():
    assert sorted(COMMAND_OF) == sorted(p.name for p in OPTION_FILES)


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: p.name)
def test_config_file_builds_its_commands_dataclass(path):
    cls = getattr(warmstart.config, COMMAND_OF[path.name])
    cfg = build(
        cls, read_config_file(str(path)), source=str(path)
    )  # raises UserError on a bad key or type
    assert isinstance(cfg, cls)
    for name in ("data", "valid", "test"):
        value = getattr(cfg, name, None)
        assert value is None or isinstance(value, str), (
            f"{path.name}: {name} should be a path, got {value!r}"
        )


@pytest.mark.parametrize("path", ACCELERATE_FILES, ids=lambda p: p.name)
def test_accelerate_config_loads_with_accelerates_loader(path):
    try:
        from accelerate.commands.config.config_args import load_config_from_file

        inspect.signature(load_config_from_file).bind(str(path))
    except (ImportError, TypeError) as e:
        pytest.skip(
            f"accelerate's config loader is not load_config_from_file(path) in this version: {e}"
        )
    config = load_config_from_file(str(path))  # rejects unknown keys
    assert config.num_processes >= 1
