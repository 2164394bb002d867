"""Vocabulary: deterministic build, encode/decode, fingerprint, JSON persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.data.vocabulary import END_ID, PAD_ID, START_ID, UNK, UNK_ID, Vocabulary
from captioner.errors import DatasetError

CAPTIONS = ["a dog runs", "a cat runs", "a dog sleeps", "the bird"]


def test_specials_and_ranking() -> None:
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.tokens[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    # a:3, dog:2, runs:2, then count 1 alphabetically
    assert vocab.tokens[4:] == ["a", "dog", "runs", "bird", "cat", "sleeps", "the"]


def test_build_is_deterministic_whatever_the_order() -> None:
    first = Vocabulary.build(CAPTIONS)
    again = Vocabulary.build(list(reversed(CAPTIONS)))
    assert first == again
    assert first.fingerprint() == again.fingerprint()


def test_max_size_counts_specials_and_min_count() -> None:
    vocab = Vocabulary.build(CAPTIONS, max_size=6)
    assert len(vocab) == 6
    assert vocab.tokens[4:] == ["a", "dog"]
    assert Vocabulary.build(CAPTIONS, min_count=2).tokens[4:] == ["a", "dog", "runs"]


def test_building_from_train_only_is_the_callers_choice() -> None:
    train, test = ["a dog"], ["a zebra"]
    vocab = Vocabulary.build(train)
    assert vocab.token_to_id("zebra") == UNK_ID
    assert vocab.encode(test[0]) == [START_ID, vocab.token_to_id("a"), UNK_ID, END_ID]


def test_encode_decode_round_trip() -> None:
    vocab = Vocabulary.build(CAPTIONS)
    ids = vocab.encode("A dog, runs!")
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert vocab.decode(ids + [PAD_ID, PAD_ID]) == ["a", "dog", "runs"]
    assert vocab.decode([START_ID, vocab.token_to_id("cat"), END_ID, vocab.token_to_id("a")]) == [
        "cat"
    ]


def test_unknown_word_is_unk() -> None:
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.decode(vocab.encode("a zebra runs")) == ["a", UNK, "runs"]
    with pytest.raises(IndexError):
        vocab.id_to_token(len(vocab))


def test_encode_truncates_but_keeps_end() -> None:
    vocab = Vocabulary.build(CAPTIONS)
    ids = vocab.encode("a dog runs a cat", max_length=4)
    assert len(ids) == 4 and ids[-1] == END_ID
    assert vocab.decode(ids) == ["a", "dog"]
    assert vocab.encode("a dog", max_length=10) == vocab.encode("a dog")


def test_vietnamese_survives_save_and_load(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["Một người đàn ông đang đi xe đạp."])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert "người" in path.read_text(encoding="utf-8")  # stored readable, not \\u escapes
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.fingerprint() == vocab.fingerprint()
    assert loaded.decode(loaded.encode("một người đi xe đạp")) == [
        "một",
        "người",
        "đi",
        "xe",
        "đạp",
    ]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert not list(tmp_path.glob("*.tmp"))


def test_fingerprint_differs_between_vocabularies() -> None:
    assert Vocabulary.build(["a b"]).fingerprint() != Vocabulary.build(["a c"]).fingerprint()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"tokens": ["<pad>", ', "invalid JSON at line 1"),
        (b"\xff\xfe\x00", "not valid UTF-8"),
        (b'["<pad>"]', "not a vocabulary"),
        (b'{"tokens": ["<start>", "<pad>", "<end>", "<unk>"]}', "special tokens"),
        (b'{"tokens": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}', "unique"),
        (b'{"tokens": ["<pad>", "<start>", "<end>", "<unk>", 5]}', "strings"),
    ],
)
def test_bad_files_raise_dataset_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")


def test_saved_json_shape(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    Vocabulary.build(["x"]).save(path)
    assert json.loads(path.read_text(encoding="utf-8"))["tokens"][-1] == "x"
