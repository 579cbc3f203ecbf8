"""What the server accepts: each request body checked into a query, or :class:`Rejected` with one message.

A rejection is an answer, not an exception: requests are batched, and an exception in a LitServe worker
fails every request of its batch, so a bad request is carried through the batch and answered alone.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any, NamedTuple, TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import FormData, UploadFile

MAX_K = 1000


class Rejected(NamedTuple):
    """A request answered with an HTTP error ``status`` and one ``message``."""

    status: int
    message: str

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.message}, status_code=self.status)


class Query(BaseModel):
    """Fields every query has. Strict: ``"k": "5"`` or ``"exclude_seen": 1`` are wrong types, not guesses."""

    model_config = ConfigDict(extra="forbid", strict=True)
    k: int = Field(10, ge=1, le=MAX_K, description="how many items (and users) to answer with")


class RecommendQuery(Query):
    user: str = Field(min_length=1, description="the user's raw id in the dataset")
    exclude_seen: bool = Field(True, description="leave out the items the user interacted with in any split")


class SimilarQuery(Query):
    item: str = Field(min_length=1, description="a catalogue item's raw id, or an added item's id")


class NewItemQuery(Query):
    text: str | None = Field(None, description="the new item's text")
    id: str | None = Field(None, min_length=1, max_length=256, description="its id (made up when added without)")
    add: bool = Field(False, description="add it to the live catalogue, so that later queries can return it")
    image: bytes | None = Field(None, exclude=True, description="the encoded image (checked separately)")


Q = TypeVar("Q", bound=Query)


def describe(error: ValidationError) -> str:
    """Pydantic's errors as one line: ``k: Input should be a valid integer; user: Field required``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())


def parse(model: type[Q], body: Any) -> Q | Rejected:
    """``body`` (a decoded JSON value) as a ``model``, or why not."""
    if not isinstance(body, dict):
        example = ", ".join(f'"{name}": …' for name, f in model.model_fields.items() if f.is_required())
        return Rejected(400, f"the body must be a JSON object, e.g. {{{example}}}")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        return Rejected(422, describe(error))


def _base64_image(value: Any) -> bytes | Rejected:
    if not isinstance(value, str):
        return Rejected(422, "image: expected the encoded image file as a base64 string")
    if value.startswith("data:") and "," in value:  # a data URL: data:image/png;base64,....
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return Rejected(422, "image: not valid base64")


def _form_fields(form: FormData) -> tuple[dict[str, Any], bytes | None] | Rejected:
    """A multipart form as the fields of a JSON body (``add`` and ``k`` from text) and the image's bytes."""
    fields: dict[str, Any] = {}
    image = None
    for name in dict.fromkeys(form.keys()):
        values = form.getlist(name)
        if len(values) > 1:
            return Rejected(422, f"{name}: given {len(values)} times; give it once")
        value = values[0]
        if name == "image":
            image = value.file.read() if isinstance(value, UploadFile) else _base64_image(value)
            if isinstance(image, Rejected):
                return image
            continue
        if isinstance(value, UploadFile):
            return Rejected(422, f"{name}: expected a form field, not a file")
        if name == "add":
            flag = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(value.lower())
            if flag is None:
                return Rejected(422, f"add: expected true or false, got {value!r}")
            value = flag
        elif name == "k":
            try:
                value = int(value)
            except ValueError:
                return Rejected(422, f"k: expected an integer, got {value!r}")
        fields[name] = value
    return fields, image


def parse_new_item(body: Any) -> NewItemQuery | Rejected:
    """A new item from a JSON body (``image`` base64) or a multipart form (``image`` a file): its fields
    checked, its image still encoded (see :func:`mmrec_lightning.serve.new_items.read_image`)."""
    if isinstance(body, FormData):
        parsed = _form_fields(body)
        if isinstance(parsed, Rejected):
            return parsed
        fields, image = parsed
    elif isinstance(body, dict):
        fields = dict(body)
        image = fields.pop("image", None)
        if image is not None:
            image = _base64_image(image)
            if isinstance(image, Rejected):
                return image
    else:
        return parse(NewItemQuery, body)
    query = parse(NewItemQuery, fields)
    if isinstance(query, Rejected):
        return query
    if image is not None and not image:
        return Rejected(422, "image: the file is empty")
    if image is None and not query.text:
        return Rejected(422, "give the new item's image, its text, or both")
    if query.add and query.id is None:
        query.id = f"new-{uuid.uuid4().hex[:12]}"
    query.image = image
    return query
