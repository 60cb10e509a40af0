"""What a shared artefact may not show: secrets in URLs and command lines. run.json, reports
and baselines are meant to be shared and committed."""

import re
import urllib.parse

# Query parameters whose values are secrets (a webhook's token, a signed URL's signature).
_SECRET_PARAMS = re.compile(r"(token|key|secret|password|passwd|pwd|sig|signature|auth|"
                            r"credential|session)", re.IGNORECASE)


def redact_url(url: str | None) -> str | None:
    """`url` without its user:password and with secret-looking query values replaced, for
    every artefact (run.json, reports and baselines are meant to be shared and committed)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.urlencode(
        [(key, "***" if _SECRET_PARAMS.search(key) else value)
         for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
        safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Options whose whole value is a secret.
_SECRET_OPTIONS = ("--metrics-auth",)


def redact_argv(argv: tuple[str, ...] | list[str]) -> list[str]:
    """argv with every URL in it (an option's value, or --opt=URL) redacted, and the values
    of _SECRET_OPTIONS replaced."""
    redacted = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if (i and argv[i - 1] in _SECRET_OPTIONS) or (eq and name in _SECRET_OPTIONS):
            redacted.append(f"{name}=***" if eq else "***")
        elif eq and "://" in value:
            redacted.append(f"{name}={redact_url(value)}")
        else:
            redacted.append(str(redact_url(arg)) if "://" in arg else arg)
    return redacted
