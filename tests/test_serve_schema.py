"""The HTTP API against its own OpenAPI schema: Schemathesis, all checks, every operation.

The schema is read from the app (``/openapi.json``) and every operation in it is fuzzed in
process (ASGI), so endpoints added to ``serve`` later are covered with no change here. Each
check must pass: no server error, only documented statuses, content types and headers, bodies
matching their schema (errors included), schema-valid requests accepted and invalid ones
refused. The app is built twice, with and without a denoiser (their schemas differ).

Uploads (``format: binary``) are drawn as real small pictures: the schema cannot say "a file
Pillow decodes", and a schema-valid request must be answered 200. Broken files are the
business of test_serve_api.py and test_reliability_inputs.py.

``make test`` runs a fixed, derandomized set of cases (the same every run, no example
database). ``CAPTIONER_SCHEMA_EXAMPLES=N`` draws N random cases per operation instead (seed
``CAPTIONER_SCHEMA_SEED``, else a random one); with ``-s`` the test prints the seed and how many
cases each operation got.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from doctype_tiny import biased_classifier  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402
from schemathesis.specs.openapi.formats import unregister_string_format  # noqa: E402
from serve_support import build_tiny_captioner, png_bytes, write_search_catalogue  # noqa: E402

from captioner.caption.captioner import Captioner  # noqa: E402
from captioner.serve import create_app  # noqa: E402

LONG_EXAMPLES = int(os.environ.get("CAPTIONER_SCHEMA_EXAMPLES", "0"))
EXAMPLES = LONG_EXAMPLES or 20  # per operation and app, besides Schemathesis's coverage cases
SEED = int(os.environ.get("CAPTIONER_SCHEMA_SEED", random.randrange(2**32)))  # long runs only
CASES: Counter[str] = Counter()

#: Pictures as an upload part: formats the server decodes, small sizes (the model sees 224 px).
PICTURES = st.builds(
    png_bytes,
    size=st.tuples(st.integers(2, 80), st.integers(2, 80)),
    seed=st.integers(0, 2**16),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]),
)

# schemathesis 4's from_fixture names its sub-tests by renaming `request.node._nodeid`, which
# pytest 9.2 no longer has; an alias that ignores the renaming keeps it working.
if not hasattr(pytest.Function, "_nodeid"):
    pytest.Function._nodeid = property(  # type: ignore[attr-defined]
        lambda self: self.nodeid, lambda self, value: None
    )


def median(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.MedianFilter(3))


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def pictures_as_uploads() -> Iterator[None]:
    schemathesis.openapi.format("binary", PICTURES)
    yield
    unregister_string_format("binary")


def json_like(value: Any) -> Any:
    """``value`` with each file (schemathesis's ``Binary``, a ``str`` subclass) as a plain str."""
    if isinstance(value, list):
        return [json_like(item) for item in value]
    if isinstance(value, dict):
        return {key: json_like(item) for key, item in value.items()}
    return str(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def files_validated_as_sent() -> Iterator[None]:
    """Work around a false positive of schemathesis 4.32's negative_data_rejection.

    Before it reports invalid data as accepted, it validates the form as sent (an empty list
    sends nothing; of a repeated field the server reads one value); its validator raises on file
    values, so a multipart body with a file always counted as invalid, and e.g. `denoise: []`
    (nothing sent, so the default) was reported. The long run found it; files as strings fix it.
    """
    original = openapi_checks._form_body_is_valid_as_sent

    def as_sent(response: Any, case: Any, media_type: str) -> bool:
        sent = SimpleNamespace(body=json_like(case.body), operation=case.operation)
        return original(response, sent, media_type)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(openapi_checks, "_form_body_is_valid_as_sent", as_sent)
        yield


@pytest.fixture(scope="module", params=["no-denoiser", "denoiser+classifier+catalogue"])
def api_schema(
    request: pytest.FixtureRequest,
    captioner: Captioner,
    pictures_as_uploads: None,
    files_validated_as_sent: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[schemathesis.BaseSchema]:
    if request.param == "no-denoiser":
        app = create_app(captioner)
    else:  # a classifier that calls every upload Text: answers without a caption are checked too
        folder = tmp_path_factory.mktemp("classifier")
        classifier = biased_classifier(folder, captioner.backbone, favour="Text", margin=1.0)
        catalogue = write_search_catalogue(tmp_path_factory.mktemp("catalogue"), classifier.classes)
        app = create_app(captioner, median, classifier=classifier, catalogue=catalogue)
    config = schemathesis.Config.from_dict(
        {
            **({"seed": SEED} if LONG_EXAMPLES else {}),
            "generation": {
                "max-examples": EXAMPLES,
                "deterministic": not LONG_EXAMPLES,
                "database": "none",
            },
            "checks": {
                "enabled": True,
                # Invalid data must be refused; 413 (too many images, too large) refuses it too.
                "negative_data_rejection": {
                    "expected-statuses": ["400", "404", "405", "413", "415", "422"]
                },
            },
        }
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    app.state.worker.stop()
    seed = f" (seed {SEED})" if LONG_EXAMPLES else ""
    print(f"\n{request.param}{seed}: {sum(CASES.values())} cases, {dict(CASES)}")
    CASES.clear()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_keeps_to_the_schema(case: schemathesis.Case) -> None:
    CASES[case.operation.label] += 1
    case.call_and_validate()


def test_the_schema_states_the_limits_and_the_error_model(captioner: Captioner) -> None:
    """What the fuzzer relies on, spelled out: required upload, its bounds, the error body."""
    plain = create_app(captioner, max_images=3, max_upload_bytes=5000).openapi()
    with_denoiser = create_app(captioner, median).openapi()
    assert "HTTPValidationError" not in json.dumps(plain)
    for operations in plain["paths"].values():
        for operation in operations.values():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    body = answer["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorResponse"}, status
    caption = plain["paths"]["/v1/caption"]["post"]
    assert {"400", "413", "415", "422", "503"} <= set(caption["responses"])
    form = plain["components"]["schemas"]["Body_caption_v1_caption_post"]
    assert form["required"] == ["image"]
    image = form["properties"]["image"]
    assert (image["minItems"], image["maxItems"]) == (1, 3)
    assert "from 1 to 5,000 bytes" in image["description"]
    assert form["properties"]["denoise"]["enum"] == [False]
    form = with_denoiser["components"]["schemas"]["Body_caption_v1_caption_post"]
    assert "enum" not in form["properties"]["denoise"]
