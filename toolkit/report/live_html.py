"""The live page of a run (run/web.py serves it): one self-contained HTML file whose script
draws what the server sends over server-sent events. Nothing of the run is in the page
itself, so it is rendered once, before the run starts."""

import jinja2


def render_live_html(title: str) -> str:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("perfkit.report", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)
    return env.get_template("live.html.j2").render(title=title)
