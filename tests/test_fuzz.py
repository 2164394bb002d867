"""Property-based fuzzing (hypothesis) of the annotation readers, tokenizer and vocabulary.

Bounded for CI: a fixed number of examples per property, derandomized (the same inputs on
every run, so a failure reproduces), no example database written to the work tree. The
contract under test: any input either reads into well-formed annotations or is refused with
a ``DatasetError`` naming the file; nothing else escapes.
"""

from __future__ import annotations

import json
import os
import string
import unicodedata
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from captioner.data.manifest import Manifest  # noqa: E402
from captioner.data.readers import (  # noqa: E402
    RawAnnotations,
    clean_file_name,
    read_annotations,
)
from captioner.data.text import tokenize  # noqa: E402
from captioner.data.vocabulary import SPECIALS, UNK, Vocabulary  # noqa: E402
from captioner.errors import DatasetError  # noqa: E402

#: Examples per property; raise for a longer, randomized local run:
#: ``CAPTIONER_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py``.
EXAMPLES = int(os.environ.get("CAPTIONER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

names = st.one_of(
    st.sampled_from(["a.jpg", "b.png", "dir/c.jpg", "../up.jpg", "/abs.jpg", "", " ", "C:x.jpg"]),
    st.text(min_size=0, max_size=12),
)
captions = st.one_of(
    st.sampled_from(["a red circle", "", "   ", ".", "Một con mèo", "two, dogs"]),
    st.text(max_size=30),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), names, captions)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def entry(keys: list[str], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    """Dicts with some of ``keys`` (plausible or junk values) and maybe a junk key."""
    return st.fixed_dictionaries({}, optional={k: values for k in keys})


coco_docs = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.one_of(entry(["id", "file_name"], st.one_of(st.integers(0, 3), names)), json_values),
            max_size=6,
        ),
        "annotations": st.lists(
            st.one_of(
                entry(["image_id", "caption"], st.one_of(st.integers(0, 3), captions)),
                json_values,
            ),
            max_size=8,
        ),
    }
)
karpathy_docs = st.fixed_dictionaries(
    {
        "images": st.lists(
            st.one_of(
                entry(
                    ["filename", "filepath", "split", "sentences"],
                    st.one_of(
                        names,
                        st.sampled_from(["train", "val", "test", "restval"]),
                        st.lists(
                            st.one_of(
                                entry(["raw", "tokens"], st.one_of(captions, st.lists(captions))),
                                json_values,
                            ),
                            max_size=3,
                        ),
                    ),
                ),
                json_values,
            ),
            max_size=6,
        )
    }
)
jsonl_lines = st.lists(
    st.one_of(
        entry(
            ["image", "caption", "captions", "split"], st.one_of(names, captions, json_values)
        ).map(json.dumps),
        st.text(max_size=20),
    ),
    max_size=8,
)
csv_lines = st.lists(
    st.one_of(
        st.tuples(names, captions).map(lambda p: f"{p[0]},{p[1]}"),
        st.tuples(names, captions).map(lambda p: f'"{p[0]}","{p[1]}"'),
        st.tuples(names, st.integers(0, 9), captions).map(lambda p: f"{p[0]}#{p[1]}\t{p[2]}"),
        st.text(alphabet=string.printable, max_size=20),
    ),
    max_size=8,
)


def check_well_formed(raw: RawAnnotations) -> None:
    for name, texts in raw.captions.items():
        assert clean_file_name(name) == name
        assert texts, f"{name} kept without captions"
        assert all(isinstance(t, str) and tokenize(t) for t in texts)
    assert set(raw.splits) <= set(raw.captions)
    assert all(isinstance(s, str) and s for s in raw.splits.values())
    for reason, items in raw.problems.items():
        assert isinstance(reason, str) and all(isinstance(i, str) for i in items)


def read_or_refuse(path: Path, fmt: str = "auto") -> None:
    try:
        raw = read_annotations(path, fmt)
    except DatasetError as exc:
        assert str(path) in str(exc)
        return
    check_well_formed(raw)


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".txt"]))
def test_any_bytes_read_or_refused(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"ann{suffix}"
    path.write_bytes(data)
    read_or_refuse(path)


@FUZZ
@given(doc=st.one_of(coco_docs, karpathy_docs, json_values))
def test_json_documents_read_or_refused(tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    read_or_refuse(path)
    for fmt in ("coco", "karpathy"):
        read_or_refuse(path, fmt)


@FUZZ
@given(lines=jsonl_lines)
def test_jsonl_lines_read_or_refused(tmp_path: Path, lines: list[str]) -> None:
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    read_or_refuse(path)


@FUZZ
@given(lines=csv_lines, suffix=st.sampled_from([".csv", ".txt"]))
def test_csv_and_flickr_lines_read_or_refused(
    tmp_path: Path, lines: list[str], suffix: str
) -> None:
    path = tmp_path / f"ann{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    read_or_refuse(path)
    for fmt in ("csv", "flickr"):
        read_or_refuse(path, fmt)


@FUZZ
@given(doc=json_values)
def test_manifest_load_reads_or_refuses(tmp_path: Path, doc: Any) -> None:
    path = tmp_path / "manifest.json"
    if isinstance(doc, dict):
        doc = {"format": "captioner-manifest", "version": 1, "image_root": "images", **doc}
    path.write_text(json.dumps(doc), encoding="utf-8")
    try:
        Manifest.load(path)
    except DatasetError as exc:
        assert str(path) in str(exc)


# ---------------------------------------------------------------------------- tokenizer


@FUZZ
@given(text=st.text(max_size=60))
def test_tokens_are_words_and_tokenizing_is_idempotent(text: str) -> None:
    tokens = tokenize(text)
    for token in tokens:
        assert token and not any(ch.isspace() for ch in token)
        assert not any(unicodedata.category(ch)[0] in "PS" for ch in token)
        assert unicodedata.normalize("NFC", token) == token
    assert tokenize(" ".join(tokens)) == tokens


@FUZZ
@given(corpus=st.lists(st.text(max_size=40), max_size=12), caption=st.text(max_size=40))
def test_vocabulary_encode_decode_round_trip(corpus: list[str], caption: str) -> None:
    vocab = Vocabulary.build(corpus, max_size=30)
    assert vocab.tokens[: len(SPECIALS)] == list(SPECIALS) and len(vocab) <= 30
    known = set(vocab.tokens[len(SPECIALS) :])
    expected = [w if w in known else UNK for w in tokenize(caption)]
    ids = vocab.encode(caption)
    assert vocab.decode(ids) == expected
    assert all(0 <= i < len(vocab) for i in ids)
    short = vocab.encode(caption, max_length=5)
    assert len(short) <= 5 and vocab.decode(short) == expected[:3]
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.fingerprint() == vocab.fingerprint()


@FUZZ
@given(doc=st.one_of(json_values, st.fixed_dictionaries({"tokens": json_values})))
def test_vocabulary_from_any_json_is_valid_or_refused(doc: Any) -> None:
    try:
        vocab = Vocabulary.from_dict(doc, source="fuzz.json")
    except DatasetError as exc:
        assert "fuzz.json" in str(exc)
        return
    assert vocab.tokens[: len(SPECIALS)] == list(SPECIALS)
