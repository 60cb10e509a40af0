"""Request bodies of the research API, with the field limits of DESIGN.md. Anything outside
them is a 422 naming the field path, never a 500 further down (a NUL byte or a lone surrogate
would otherwise reach the database driver)."""

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl, field_validator

from .callbacks import refuse_host

_METADATA_MAX_CHARS = 10_000
CALLBACK_URL_MAX_CHARS = 2048  # the jobs.callback_url column


def check_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


Text = Annotated[str, AfterValidator(check_text)]


class ProductItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_name: Annotated[Text, Field(min_length=1, max_length=500)]
    category: Annotated[Text, Field(min_length=1, max_length=100)]
    price_exact: Annotated[float, Field(gt=0, lt=1e9, allow_inf_nan=False)]
    currency: Literal["KRW", "USD", "JPY", "EUR"] = "KRW"
    seller_or_store: Annotated[Text, Field(max_length=200)] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("product_name", "category")
    @classmethod
    def reject_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("metadata")
    @classmethod
    def check_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
            encoded.encode("utf-8")
        except UnicodeEncodeError as exc:
            # PostgreSQL's json type refuses a lone surrogate escape; so does a sane client.
            raise ValueError("must be valid Unicode (no lone surrogates)") from exc
        except (ValueError, TypeError, RecursionError) as exc:
            raise ValueError(f"must be a JSON object: {exc}") from exc
        if len(encoded) > _METADATA_MAX_CHARS:
            raise ValueError(f"must be at most {_METADATA_MAX_CHARS} characters as JSON")
        if "\x00" in encoded:
            raise ValueError("must not contain NUL characters")
        return value


class ResearchRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    items: Annotated[list[ProductItem], Field(min_length=1, max_length=10)]
    priority: Annotated[int, Field(ge=1, le=10)] = 5
    callback_url: HttpUrl | None = None

    @field_validator("callback_url")
    @classmethod
    def check_callback(cls, value: HttpUrl | None) -> HttpUrl | None:
        if value is None:
            return None
        if value.scheme not in ("http", "https"):
            raise ValueError("must be an http(s) URL")
        # Checked as stored: percent-encoding and punycode can triple a URL's length.
        if len(str(value)) > CALLBACK_URL_MAX_CHARS:
            raise ValueError(f"must be at most {CALLBACK_URL_MAX_CHARS} characters once "
                             f"normalised (percent-encoded, punycode), got {len(str(value))}")
        reason = refuse_host(value.host or "")
        if reason:
            raise ValueError(f"must not point at a link-local or metadata address: {reason}")
        return value
