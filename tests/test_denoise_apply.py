"""`denoise apply`: names, formats and modes kept; inputs never replaced unless asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from denoise_tiny import active_denoiser, noisy_copy, one_thread, smooth_picture  # noqa: F401
from PIL import Image

from captioner.cli import main
from captioner.denoise import apply_denoiser, load_denoiser
from captioner.errors import CaptionerError


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = noisy_copy(smooth_picture(37, 53), 20)
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=90)
    Image.fromarray(rgb).convert("L").save(folder / "grey.png")
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, 53, dtype=np.uint8), (37, 1))])
    Image.fromarray(rgba, mode="RGBA").save(folder / "alpha.png")
    Image.fromarray(rgb).convert("LA").save(folder / "grey_alpha.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_keeps_names_formats_and_modes(tmp_path: Path, inputs: Path) -> None:
    denoiser = load_denoiser(active_denoiser(tmp_path / "dn"))
    report = apply_denoiser(denoiser, [inputs], tmp_path / "out", progress=False)
    names = sorted(p.name for p in report.written)
    assert names == ["alpha.png", "grey.png", "grey_alpha.png", "palette.gif", "photo.jpg"]
    assert list(report.failed) == [str(inputs / "broken.png")]
    expected = {
        "photo.jpg": ("JPEG", "RGB"),
        "grey.png": ("PNG", "L"),
        "alpha.png": ("PNG", "RGBA"),
        "grey_alpha.png": ("PNG", "LA"),
        "palette.gif": ("GIF", "P"),
    }
    for name, (fmt, mode) in expected.items():
        with Image.open(tmp_path / "out" / name) as out, Image.open(inputs / name) as source:
            assert (out.format, out.mode) == (fmt, mode), name
            assert out.size == source.size, name
    with Image.open(inputs / "alpha.png") as a, Image.open(tmp_path / "out" / "alpha.png") as b:
        assert np.array_equal(np.asarray(a)[..., 3], np.asarray(b)[..., 3])  # alpha untouched
        assert not np.array_equal(np.asarray(a)[..., :3], np.asarray(b)[..., :3])


def test_refuses_to_replace_inputs_unless_asked(tmp_path: Path, inputs: Path) -> None:
    model = active_denoiser(tmp_path / "dn")
    photo = inputs / "photo.jpg"
    before = photo.read_bytes()
    with pytest.raises(CaptionerError, match="replace an input"):
        apply_denoiser(load_denoiser(model), [photo], inputs, progress=False)
    assert photo.read_bytes() == before
    args = ["denoise", "apply", str(photo), "--model", str(model), "--out", str(inputs)]
    assert main([*args, "--no-progress"]) == 2
    assert photo.read_bytes() == before
    assert main([*args, "--no-progress", "--overwrite"]) == 0
    assert photo.read_bytes() != before


def test_cli_single_files_and_clashing_names(tmp_path: Path, inputs: Path) -> None:
    model = active_denoiser(tmp_path / "dn")
    out = tmp_path / "out"
    args = ["denoise", "apply", str(inputs / "grey.png"), str(inputs / "photo.jpg")]
    assert main([*args, "--model", str(model), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grey.png", "photo.jpg"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "grey.png").write_bytes((inputs / "grey.png").read_bytes())
    clash = [str(inputs / "grey.png"), str(other / "grey.png")]
    with pytest.raises(CaptionerError, match="both be written"):
        apply_denoiser(load_denoiser(model), clash, tmp_path / "o2", progress=False)
    bad = ["denoise", "apply", str(inputs / "broken.png"), "--model", str(model)]
    assert main([*bad, "--out", str(tmp_path / "o3"), "--no-progress"]) == 1


def test_cli_self_ensemble_changes_the_output_and_offers_the_denoisers_choices(
    tmp_path: Path, inputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from captioner.denoise.denoiser import SELF_ENSEMBLES

    model = active_denoiser(tmp_path / "dn")
    outputs = {}
    for k in (1, 8):
        out = tmp_path / f"x{k}"
        args = ["denoise", "apply", str(inputs / "photo.jpg"), "--model", str(model)]
        assert main([*args, "--out", str(out), "--self-ensemble", str(k), "--no-progress"]) == 0
        outputs[k] = np.asarray(Image.open(out / "photo.jpg"), dtype=np.int16)
    assert outputs[1].shape == outputs[8].shape and np.abs(outputs[1] - outputs[8]).max() > 0
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x3"), "--self-ensemble", "3"])
    assert f"choose from {', '.join(map(str, SELF_ENSEMBLES))}" in capsys.readouterr().err
