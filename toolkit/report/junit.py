"""JUnit XML (the Ant/Surefire format Jenkins, GitLab and GitHub test reporters read)."""

import datetime
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

from .. import rundir


def write_junit(path: Path, suite_name: str, cases: list[tuple[str, str | None, str | None]],
                errors: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
    """One <testcase> per (name, failure message or None, skipped message or None), and one
    with an <error> per (name, message) in `errors`: what could not be judged at all."""
    failures = sum(1 for _, failure, _ in cases if failure is not None)
    skipped = sum(1 for _, failure, skip in cases if failure is None and skip is not None)
    counts = {"tests": str(len(cases) + len(errors)), "failures": str(failures),
              "errors": str(len(errors)), "time": "0"}
    root = ET.Element("testsuites", attrib={"name": suite_name, **counts})
    # Ant's schema requires timestamp and hostname on every suite; Jenkins' accepts them.
    suite = ET.SubElement(root, "testsuite", attrib={
        "name": suite_name, **counts, "skipped": str(skipped),
        "timestamp": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "hostname": socket.gethostname()})
    for name, failure, skip in cases:
        case = ET.SubElement(suite, "testcase",
                             attrib={"name": name, "classname": suite_name, "time": "0"})
        if failure is not None:
            element = ET.SubElement(case, "failure", attrib={"message": failure, "type": "kpi"})
            element.text = failure
        elif skip is not None:
            ET.SubElement(case, "skipped", attrib={"message": skip})
    for name, message in errors:
        case = ET.SubElement(suite, "testcase",
                             attrib={"name": name, "classname": suite_name, "time": "0"})
        element = ET.SubElement(case, "error", attrib={"message": message, "type": "run"})
        element.text = message
    ET.indent(root)
    rundir.write_text(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
