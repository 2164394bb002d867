"""The chain over an archive: routing by kind, the shared backbone pass, the catalogue
(resume/skip, duplicates, other models refused, exports), search ranking, and the bad folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from doctype_tiny import photo, text_page
from fault_corpus import BAD_IMAGES, GOOD_IMAGES, write_image_corpus
from pipeline_support import CAPTION, build_models, pipeline_args, write_mixed_folder

from captioner.caption.captioner import Captioner
from captioner.cli import main
from captioner.denoise.denoiser import load_denoiser
from captioner.doctype.classifier import DocTypeClassifier
from captioner.errors import CaptionerError
from captioner.pipeline.catalogue import TIMING_COLUMNS, Catalogue, fts_query
from captioner.pipeline.chain import Pipeline
from captioner.pipeline.settings import PipelineSettings
from captioner.vision.backbones import offline_mobilenet_weights

pytestmark = pytest.mark.skipif(
    offline_mobilenet_weights() is None, reason="offline MobileNetV2 weights not installed"
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("pipeline-models"))


@pytest.fixture(autouse=True)
def one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load(models: dict[str, Path], denoise: bool = True) -> tuple:
    captioner = Captioner.from_pretrained(models["captioner"])
    classifier = DocTypeClassifier.from_pretrained(
        models["classifier"], backbone=captioner.backbone
    )
    denoiser = load_denoiser(models["denoiser"]) if denoise else None
    return classifier, denoiser, captioner


def _rows(out: Path) -> dict[str, dict]:
    with Catalogue.open(out, readonly=True) as catalogue:
        return {Path(r["path"]).name: r for r in catalogue.rows()}


def _content(out: Path) -> list[dict]:
    with Catalogue.open(out, readonly=True) as catalogue:
        rows = list(catalogue.rows())
    for row in rows:
        for key in TIMING_COLUMNS:
            row.pop(key)
    return rows


def _sharing_pipeline(
    classifier: DocTypeClassifier, captioner: Captioner
) -> tuple[Pipeline, list[int]]:
    """A classifier + captioner chain that shares one backbone pass, and the batch sizes that
    pass is run on."""
    pipeline = Pipeline(classifier, None, captioner, PipelineSettings(num_workers=0))
    assert pipeline.shares_backbone
    seen: list[int] = []
    assert pipeline.captioner_backbone is not None
    pipeline.captioner_backbone.register_forward_hook(
        lambda _m, args, _o: seen.append(len(args[0]))
    )
    return pipeline, seen


def test_routing_by_kind_and_the_shared_backbone_pass(
    models: dict[str, Path], tmp_path: Path
) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=3, pages=3)
    classifier, _, captioner = _load(models)
    pipeline, seen = _sharing_pipeline(classifier, captioner)
    results = {Path(r.path).name: r for r in pipeline.run([folder])}
    assert sorted(results) == sorted(
        [
            "photo-00.jpg",
            "photo-01.jpg",
            "photo-02.jpg",
            "page-00.png",
            "page-01.png",
            "page-02.png",
        ]
    )
    for name, result in results.items():
        assert result.error is None and result.status == "done"
        assert result.kind == ("Photo" if name.startswith("photo") else "Text"), result
        assert result.captioned == (result.kind == "Photo")
        assert abs(sum(result.probabilities.values()) - 1.0) < 1e-5
        assert result.classifier_id and not result.denoised
    assert sum(seen) == 6  # one backbone pass per image, read by both models
    # the classifier gives the file on its own the kind and probabilities it gets in the chain
    alone_kind = classifier([folder / "more" / "page-01.png"])[0]
    assert results["page-01.png"].kind == alone_kind.kind
    for name, p in alone_kind.probabilities.items():
        assert results["page-01.png"].probabilities[name] == pytest.approx(p, abs=1e-5)
    # the grid read again gives the caption the captioner gives the file on its own
    alone = captioner.caption([folder / "photo-00.jpg"])[0]
    assert results["photo-00.jpg"].caption == alone.caption == CAPTION
    assert results["photo-00.jpg"].caption_log_prob == pytest.approx(alone.log_prob, abs=1e-4)


def test_a_classifier_of_another_input_size_runs_its_own_pass(
    models: dict[str, Path], tmp_path: Path
) -> None:
    import dataclasses

    from captioner.vision.backbones import load_backbone

    folder = write_mixed_folder(tmp_path / "in", photos=2, pages=2)
    trained, _, captioner = _load(models)
    config = dataclasses.replace(trained.config, image_size=96, backbone_weights_id="")
    classifier = DocTypeClassifier(
        trained.head, config, load_backbone("mobilenet_v2", "DEFAULT", 96)
    )
    pipeline = Pipeline(classifier, None, captioner, PipelineSettings(num_workers=0))
    assert not pipeline.shares_backbone
    sides: list[int] = []
    for backbone in (pipeline.classifier_backbone, pipeline.captioner_backbone):
        assert backbone is not None
        backbone.register_forward_hook(lambda _m, args, _o: sides.append(args[0].shape[-1]))
    results = {Path(r.path).name: r for r in pipeline.run([folder])}
    assert sorted(set(sides)) == [96, 224]  # each model read the image at its own size
    for name, result in results.items():
        alone = classifier([Path(result.path)])[0]
        assert result.kind == alone.kind, name
        for kind, p in alone.probabilities.items():
            assert result.probabilities[kind] == pytest.approx(p, abs=1e-5)
        if result.captioned:
            assert result.caption == captioner.caption([Path(result.path)])[0].caption


def test_a_classifier_reading_style_statistics_still_shares_the_pass(
    models: dict[str, Path], tmp_path: Path
) -> None:
    import dataclasses

    import torch

    from captioner.doctype.model import DocTypeHead

    folder = write_mixed_folder(tmp_path / "in", photos=2, pages=2)
    trained, _, captioner = _load(models)
    config = dataclasses.replace(trained.config, style_blocks=[3, 6], style_channels=112)
    torch.manual_seed(0)
    head = DocTypeHead.for_config(config)
    with torch.no_grad():
        head.linear.weight.mul_(50)  # random and sharp: every image its own probabilities
    assert captioner.backbone is not None
    classifier = DocTypeClassifier(head, config, captioner.backbone)
    pipeline, seen = _sharing_pipeline(classifier, captioner)
    results = list(pipeline.run([folder]))
    assert sum(seen) == len(results) == 4  # one pass per image, style statistics included
    for result in results:
        alone = classifier([Path(result.path)])[0]
        for kind, p in alone.probabilities.items():
            assert result.probabilities[kind] == pytest.approx(p, abs=1e-5), result.path


def test_denoised_photos_and_outputs(models: dict[str, Path], tmp_path: Path) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=2, pages=1)
    classifier, denoiser, captioner = _load(models)
    settings = PipelineSettings(num_workers=0, save_denoised=True, attention=True)
    pipeline = Pipeline(classifier, denoiser, captioner, settings)
    out = tmp_path / "out"
    results = {Path(r.path).name: r for r in pipeline.run([folder], out=out)}
    shot = results["photo-00.jpg"]
    assert shot.denoised and shot.captioned and shot.denoiser_id
    assert (out / shot.denoised_path).is_file() and (out / shot.attention_path).is_file()
    assert (out / shot.thumbnail).is_file() and (out / shot.denoised_thumbnail).is_file()
    from PIL import Image

    with Image.open(out / shot.denoised_path) as copy:
        assert copy.size == (shot.width, shot.height)  # the full-resolution copy
    page = results["page-00.png"]
    assert not page.denoised and not page.captioned and page.denoised_path is None
    # no half-written files left behind
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    notes = pipeline.notes()
    assert notes and "denoised" in notes[0]  # trained on clean images, given denoised ones


def test_large_jpeg_read_reduced_but_recorded_and_copied_whole(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """A scan-sized JPEG is decoded at the scale the models need; its row keeps the file's
    size and the full-resolution denoised copy is made from the whole picture."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    photo(300).resize((1400, 1000), Image.Resampling.BICUBIC).save(folder / "photo-big.jpg")
    classifier, denoiser, captioner = _load(models)
    settings = PipelineSettings(num_workers=0, save_denoised=True)
    small = Pipeline(classifier, denoiser, captioner, settings)
    (result,) = small.run([folder], out=tmp_path / "out")
    assert (result.width, result.height) == (1400, 1000)
    assert result.captioned and result.denoised
    with Image.open(tmp_path / "out" / result.denoised_path) as copy:
        assert copy.size == (1400, 1000)
    assert (result.row()["width"], result.row()["height"]) == (1400, 1000)


def test_optional_models(models: dict[str, Path], tmp_path: Path) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=1, pages=1)
    classifier, _, captioner = _load(models)
    only_captions = list(
        Pipeline(None, None, captioner, PipelineSettings(num_workers=0)).run([folder])
    )
    assert all(r.captioned and r.kind is None for r in only_captions)
    settings = PipelineSettings(num_workers=0, caption_all=True)
    every = list(Pipeline(classifier, None, captioner, settings).run([folder]))
    assert all(r.captioned and r.kind is not None for r in every)
    only_kinds = list(
        Pipeline(classifier, None, None, PipelineSettings(num_workers=0)).run([folder])
    )
    assert all(not r.captioned and r.kind is not None for r in only_kinds)
    with pytest.raises(CaptionerError, match="classifier, a captioner"):
        Pipeline(None, None, None)
    with pytest.raises(CaptionerError, match="not classes"):
        Pipeline(classifier, None, captioner, PipelineSettings(caption_kinds=("Painting",)))


def test_rerun_skips_catalogued_files_and_picks_up_new_ones(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=2, pages=2)
    out = tmp_path / "out"
    args = ["pipeline", str(folder), "--out", str(out), *pipeline_args(models)]
    assert main([*args, "--export", "csv", "jsonl"]) == 0
    first = _content(out)
    assert len(first) == 4 and "4 done" in capsys.readouterr().out
    assert main(args) == 0
    assert "4 kept" in capsys.readouterr().out
    assert _content(out) == first
    # a new file, a copy under another name, a changed file: only those are processed
    photo(999).save(folder / "new.jpg", quality=90)
    shutil.copy(folder / "photo-00.jpg", folder / "copy of photo-00.jpg")
    text_page(998).save(folder / "page-00.png")
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 copied" in printed and "2 done" in printed and "3 kept" in printed
    rows = _rows(out)
    assert len(rows) == 6
    copy = rows["copy of photo-00.jpg"]
    assert copy["same_as"].endswith("photo-00.jpg") and copy["caption"] == CAPTION
    assert copy["sha256"] == rows["photo-00.jpg"]["sha256"]
    with Catalogue.open(out, readonly=True) as catalogue:
        assert catalogue.count() == 6  # no duplicate rows
    # exports
    lines = (out / "catalogue.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["path"].startswith(str(folder))
    with open(out / "catalogue.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and {"p_Photo", "p_Text", "caption", "sha256"} <= set(table[0])
    assert main(["catalogue", "export", str(out), "--format", "jsonl", "--output",
                 str(tmp_path / "all.jsonl"), "--no-timings"]) == 0  # fmt: skip
    exported = [json.loads(x) for x in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(exported) == 6 and "decode_ms" not in exported[0]


def test_a_catalogue_of_other_models_is_refused_or_set_aside(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=1, pages=1)
    out = tmp_path / "out"
    args = ["pipeline", str(folder), "--out", str(out), *pipeline_args(models)]
    assert main(args) == 0
    before = _content(out)
    capsys.readouterr()
    assert main([*args, "--greedy"]) == 2
    error = capsys.readouterr().err
    assert "made with other models or settings (beam_size 3 -> 1)" in error
    assert "--new-catalogue" in error and error.count("\n") <= 4
    assert _content(out) == before  # untouched
    no_denoiser = [a for a in args if a not in ("--denoise", str(models["denoiser"]))]
    assert main(no_denoiser) == 2
    assert "denoiser" in capsys.readouterr().err
    assert main([*args, "--greedy", "--new-catalogue"]) == 0
    assert (out / "catalogue-1.sqlite").is_file()
    with Catalogue.open(out / "catalogue-1.sqlite", readonly=True) as old:
        assert old.signature["beam_size"] == 3 and old.count() == 2
    with Catalogue.open(out, readonly=True) as new:
        assert new.signature["beam_size"] == 1 and new.count() == 2


def test_search_ranks_captions_by_bm25(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = {
        "a.jpg": "a dog runs on a beach near the sea",
        "b.jpg": "a dog sleeps on a sofa",
        "c.jpg": "children play on a beach",
        "d.jpg": "a red car parked in a street",
        "e.jpg": "dogs on the beach, a dog and another dog",
        "f.jpg": None,  # not captioned (a text page)
    }
    with Catalogue.open(tmp_path / "cat", {"test": 1}) as catalogue:
        catalogue.write(
            [
                {"path": f"/archive/{name}", "kind": "Photo" if text else "Text",
                 "caption": text, "captioned": text is not None, "caption_score": 0.5}
                for name, text in captions.items()
            ]
        )  # fmt: skip
        hits = catalogue.search("dog on a beach")
        names = [Path(h.path).name for h in hits]
        # both words beat one word, which beats only "a"/"on"; the repeated, short "dog ...
        # beach" caption ranks first; the uncaptioned row never matches
        assert names[:2] == ["e.jpg", "a.jpg"] and set(names[2:4]) == {"b.jpg", "c.jpg"}
        assert names[4:] == ["d.jpg"]
        assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
        assert all(x.score >= y.score for x, y in zip(hits, hits[1:], strict=False))
        assert [Path(h.path).name for h in catalogue.search("dog beach", all_words=True)] == [
            "e.jpg",
            "a.jpg",
        ]
        assert catalogue.search("DOGS") and catalogue.search("car", kind="Text") == []
        # FTS5 syntax in the text is only text
        assert catalogue.search('beach" OR NOT (sofa') and catalogue.search("***") == []
    assert fts_query("dog, on a beach!") == '"dog" OR "on" OR "a" OR "beach"'
    assert main(["search", "dog on a beach", "--catalogue", str(tmp_path / "cat"), "--limit",
                 "2", "--json"]) == 0  # fmt: skip
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(p["path"]).name for p in printed] == ["e.jpg", "a.jpg"]
    with Catalogue.open(tmp_path / "cat", {"test": 1}) as catalogue:
        # an update replaces the indexed caption
        catalogue.write([{"path": "/archive/d.jpg", "caption": "a dog on a beach"}])
        assert "d.jpg" in {Path(h.path).name for h in catalogue.search("beach")}
        assert "d.jpg" not in {Path(h.path).name for h in catalogue.search("car")}


def test_the_bad_folder(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    write_image_corpus(bad)  # corrupt, truncated, zero-byte, huge, CMYK, 16-bit, ...
    (bad / "notes.txt").write_text("not an image at all\n")
    (bad / "sub").mkdir()
    shutil.copy(bad / "ok_photo.jpg", bad / "sub" / "same photo, other name.jpg")
    (bad / "sub" / "loop").symlink_to(bad, target_is_directory=True)  # back to a walked folder
    (bad / "self").symlink_to(bad / "self")  # a link to itself
    (bad / "dangling.jpg").symlink_to(bad / "absent.jpg")
    os.mkfifo(bad / "pipe")
    as_root = os.geteuid() == 0  # root reads files whatever their permissions
    if not as_root:
        locked = bad / "locked.jpg"
        shutil.copy(bad / "ok_photo.jpg", locked)
        locked.chmod(0)
        (bad / "closed").mkdir()
        (bad / "closed" / "hidden.jpg").write_bytes((bad / "ok_photo.jpg").read_bytes())
        (bad / "closed").chmod(0)
    out = tmp_path / "out"
    try:
        code = main(["pipeline", str(bad), "--out", str(out), *pipeline_args(models)])
    finally:
        if not as_root:
            (bad / "closed").chmod(0o755)
    assert code == 1  # the run finishes; the exit code says something failed
    printed = capsys.readouterr()
    rows = _rows(out)
    for name in GOOD_IMAGES:
        assert rows[name]["error"] is None and rows[name]["kind"] in ("Photo", "Text"), name
    for name in BAD_IMAGES:
        assert rows[name]["error"], name
        assert f"failed {bad / name}" in printed.err
    assert "not an image" in rows["notes.txt"]["error"]
    assert "empty file" in rows["empty.jpg"]["error"]
    assert "too large" in rows["bomb.png"]["error"]
    duplicate = rows["same photo, other name.jpg"]
    assert duplicate["sha256"] == rows["ok_photo.jpg"]["sha256"]
    assert duplicate["same_as"] == str(bad / "ok_photo.jpg")
    with Catalogue.open(out, readonly=True) as catalogue:
        skipped = {Path(p).name: why for p, why in catalogue.not_walked()}
    assert "symbolic link loop" in skipped["loop"] and "already walked" in skipped["loop"]
    assert "symbolic link loop" in skipped["self"]
    assert "broken symbolic link" in skipped["dangling.jpg"]
    assert "FIFO" in skipped["pipe"]
    if not as_root:
        assert "permission denied" in rows["locked.jpg"]["error"]
        assert "permission denied" in skipped["closed"]
    # every entry of the folder is a row or a reason
    entries = {p.name for p in bad.iterdir()} | {p.name for p in (bad / "sub").iterdir()}
    assert entries - {"sub"} <= set(rows) | set(skipped)
    # a re-run does not retry what failed, unless asked
    capsys.readouterr()
    assert main(["pipeline", str(bad), "--out", str(out), *pipeline_args(models)]) == 1
    assert " done" not in capsys.readouterr().out.splitlines()[0]
    assert main(["pipeline", str(bad), "--out", str(out), "--retry-failed", "--quiet",
                 *pipeline_args(models)]) == 1  # fmt: skip
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{len(BAD_IMAGES) + 1 + (not as_root)} failed" in first


def test_the_catalogue_refuses_what_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(CaptionerError, match="junk.sqlite: not a readable catalogue"):
        Catalogue.open(tmp_path / "junk.sqlite", {"a": 1})
    db = sqlite3.connect(tmp_path / "other.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(CaptionerError, match="not a captioner catalogue"):
        Catalogue.open(tmp_path / "other.sqlite", {"a": 1})
    with pytest.raises(CaptionerError, match="no catalogue here"):
        Catalogue.open(tmp_path / "empty", readonly=True)


def test_review_page_index(models: dict[str, Path], tmp_path: Path) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=1, pages=1)
    out = tmp_path / "out"
    assert main(["pipeline", str(folder), "--out", str(out), *pipeline_args(models)]) == 0
    text = (out / "index.html").read_text()
    start = text.index('id="catalogue-data">') + len('id="catalogue-data">')
    data = json.loads(text[start : text.index("</script>", start)])
    items = {Path(i["p"]).name: i for i in data["items"]}
    assert items["photo-00.jpg"]["c"] == CAPTION and items["photo-00.jpg"]["k"] == "Photo"
    assert items["photo-00.jpg"]["h"] == "../in/photo-00.jpg"  # relative: works from file://
    assert (out / items["photo-00.jpg"]["dt"]).is_file()
    assert "c" not in items["page-00.png"]


def test_a_catalogue_inside_its_input_is_not_walked(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_mixed_folder(tmp_path / "in", photos=1, pages=1)
    out = folder / "catalogue"
    args = ["pipeline", str(folder), "--out", str(out), "--classifier", str(models["classifier"]),
            "--caption-kinds", "Text", "--model", str(models["captioner"]), "--workers", "0",
            "--no-progress"]  # fmt: skip
    for _ in range(2):  # the second run must not catalogue the first one's thumbnails
        assert main(args) == 0
        rows = _rows(out)
        assert sorted(rows) == ["page-00.png", "photo-00.jpg"]
    assert rows["page-00.png"]["captioned"] and not rows["photo-00.jpg"]["captioned"]
    with Catalogue.open(out, readonly=True) as catalogue:
        assert [Path(p).name for p, _ in catalogue.not_walked()] == ["catalogue"]
    assert "not walked" in capsys.readouterr().err
