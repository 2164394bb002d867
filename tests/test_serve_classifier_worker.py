"""The model worker with a document-type classifier: only photos are captioned, from the
backbone pass the classifier already made."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctype_tiny import biased_classifier
from PIL import Image
from serve_support import TINY_CAPTION, build_tiny_captioner

from captioner.serve.worker import JobOptions, ModelWorker


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_tiny_captioner(tmp_path_factory.mktemp("cap"))


def _pictures() -> list[Image.Image]:
    return [Image.new("RGB", (40 + 8 * i, 32), (30 * i, 90, 200 - 30 * i)) for i in range(3)]


def test_non_photos_are_classified_not_captioned_unless_asked(captioner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    classifier = biased_classifier(tmp_path / "text", captioner.backbone, favour="Text")
    worker = ModelWorker(captioner, classifier=classifier)
    assert worker.shared_backbone
    worker.start()
    try:
        output = worker.submit(_pictures(), JobOptions(beam_size=1)).result(60)
        assert [k.kind for k in output.kinds] == ["Text"] * 3
        assert output.results == [None, None, None]
        anyway = worker.submit(_pictures(), JobOptions(beam_size=1, caption_anyway=True)).result(60)
        assert [r.caption for r in anyway.results] == [TINY_CAPTION] * 3
        only = worker.submit(_pictures(), JobOptions(caption=False)).result(60)
        assert only.results == [None] * 3 and len(only.kinds) == 3
    finally:
        worker.stop()


def test_photos_get_the_same_captions_as_without_a_classifier(captioner, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    classifier = biased_classifier(tmp_path / "photo", captioner.backbone, favour="Photo")
    plain = ModelWorker(captioner)
    routed = ModelWorker(captioner, classifier=classifier)
    plain.start()
    routed.start()
    try:
        options = JobOptions(beam_size=2, max_length=12)
        a = plain.submit(_pictures(), options).result(60)
        b = routed.submit(_pictures(), options).result(60)
    finally:
        plain.stop()
        routed.stop()
    assert all(k.is_photo and k.kind == "Photo" for k in b.kinds)
    assert a.kinds is None
    for x, y in zip(a.results, b.results, strict=True):
        assert x.caption == y.caption
        assert x.token_log_probs == pytest.approx(y.token_log_probs, abs=1e-5)


def test_a_classifier_reading_style_statistics_gets_them_from_the_shared_pass(  # type: ignore[no-untyped-def]
    captioner, tmp_path: Path
) -> None:
    import dataclasses

    import torch

    from captioner.doctype.classifier import DocTypeClassifier
    from captioner.doctype.model import DocTypeHead

    plain = biased_classifier(tmp_path / "plain", captioner.backbone, favour="Photo")
    config = dataclasses.replace(plain.config, style_blocks=[3, 6], style_channels=112)
    torch.manual_seed(0)
    head = DocTypeHead.for_config(config)
    with torch.no_grad():
        head.linear.weight.mul_(50)  # random and sharp: every picture its own probabilities
    classifier = DocTypeClassifier(head, config, captioner.backbone)
    worker = ModelWorker(captioner, classifier=classifier)
    assert worker.shared_backbone
    worker.start()
    try:
        output = worker.submit(_pictures(), JobOptions(caption=False)).result(60)
    finally:
        worker.stop()
    for served, alone in zip(output.kinds, classifier(_pictures()), strict=True):
        for kind, p in alone.probabilities.items():
            assert served.probabilities[kind] == pytest.approx(p, abs=1e-5)
