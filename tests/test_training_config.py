"""Training settings: YAML files, command-line overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioner.errors import CaptionerError
from captioner.training.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = TrainConfig.from_yaml(path)
    assert config.vocab_size == 5000


def test_overrides_are_typed_and_checked() -> None:
    config = TrainConfig().override(
        ["epochs=7", "learning_rate=2e-3", "model.dropout=0", "tags={a: b}"]
    )
    assert config.epochs == 7 and config.learning_rate == 0.002
    assert isinstance(config.model.dropout, float) and config.tags == {"a": "b"}
    assert config.model.hidden_dim == TrainConfig().model.hidden_dim  # the rest is kept
    with pytest.raises(CaptionerError, match="known KEY"):
        TrainConfig().override(["model.nonsense=1"])
    with pytest.raises(CaptionerError, match="expects float"):
        TrainConfig().override(["model.dropout=lots"])
    with pytest.raises(CaptionerError, match="known KEY"):
        TrainConfig().override(["nonsense=1"])
    with pytest.raises(CaptionerError, match="expects int"):
        TrainConfig().override(["epochs=many"])
    with pytest.raises(CaptionerError, match="lr_schedule"):
        TrainConfig().override(["lr_schedule=cosine-ish"])


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match="bad.yaml"):
        TrainConfig.from_yaml(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epoch: 3\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match="unknown training settings: epoch"):
        TrainConfig.from_yaml(unknown)
    flat = tmp_path / "flat.yaml"
    flat.write_text("dropout: 0.3\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match=r"under model: now.*model\.dropout"):
        TrainConfig.from_yaml(flat)
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  dropout: 0.3\n  hidden: 3\n", encoding="utf-8")
    with pytest.raises(CaptionerError, match="unknown decoder settings under model: hidden"):
        TrainConfig.from_yaml(nested)


def test_top_level_api_is_importable() -> None:
    import captioner

    assert captioner.Captioner.__name__ == "Captioner"
