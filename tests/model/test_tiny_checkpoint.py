"""The tiny checkpoint builder and the config validation."""

from __future__ import annotations

import hashlib
import json

import pytest

from model.checkpoint import CheckpointError, validate_checkpoint
from model.tiny import VARIANTS, build_tiny_checkpoint


def _digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def test_builder_is_deterministic(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", "full", seed=7)
    b = build_tiny_checkpoint(tmp_path / "b", "full", seed=7)
    c = build_tiny_checkpoint(tmp_path / "c", "full", seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_validates(tmp_path, variant):
    path = build_tiny_checkpoint(tmp_path / variant, variant)
    info = validate_checkpoint(path)
    assert info.has_audio == (variant != "no-audio")
    assert info.dynamic_resolution == (variant == "dynamic")


@pytest.mark.parametrize(
    "field",
    [
        "force_image_size",
        "text_config.hidden_size",
        "vision_config.args.model",
        "sound_config.sampling_rate",
        "sound_config",
    ],
)
def test_missing_required_field_is_named(tmp_path, field):
    path = build_tiny_checkpoint(tmp_path / "ck", "full")
    cfg = json.loads((path / "config.json").read_text())
    node = cfg
    *parents, leaf = field.split(".")
    for key in parents:
        node = node[key]
    del node[leaf]
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=field.replace(".", r"\.")):
        validate_checkpoint(path)


def test_forbidden_sound_key_is_named(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "ck", "full")
    cfg = json.loads((path / "config.json").read_text())
    cfg["sound_config"]["scale_input"] = False
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="sound_config.scale_input"):
        validate_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        validate_checkpoint(tmp_path)
