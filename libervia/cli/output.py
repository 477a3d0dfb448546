"""Output of ``li``: JSON documents, or readable text styled by rich on a terminal.

rich is imported only when stdout is a terminal, which keeps piped commands
fast and their output free of escape codes.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from xml.dom import minidom
from xml.parsers.expat import ExpatError

OUTPUT_DEFAULT = "default"
OUTPUT_JSON = "json"
OUTPUT_MODES = (OUTPUT_DEFAULT, OUTPUT_JSON)


def pretty_xml(text: str) -> str:
    """Indent an XML string for reading; return it unchanged when it is not XML."""
    try:
        document = minidom.parseString(text)
    except (ExpatError, ValueError):
        return text
    _strip_blank_text(document.documentElement)
    lines = document.documentElement.toprettyxml(indent="  ").splitlines()
    return "\n".join(line for line in lines if line.strip())


def _strip_blank_text(node: minidom.Node) -> None:
    """Remove whitespace-only text nodes, which toprettyxml would indent again."""
    for child in list(node.childNodes):
        if child.nodeType == child.TEXT_NODE and not child.data.strip():
            node.removeChild(child)
        elif child.nodeType == child.ELEMENT_NODE:
            _strip_blank_text(child)


def format_date(value: Any) -> str:
    """Format a timestamp (seconds) or an ISO 8601 string as local date and time."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        moment = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    else:
        try:
            moment = datetime.datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
        if moment.tzinfo is None:
            return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


class Output:
    """Writer of one command's output in the mode chosen with ``-O``."""

    def __init__(self, mode: str = OUTPUT_DEFAULT, stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.styled = mode == OUTPUT_DEFAULT and bool(isatty and isatty())
        self._console: Any = None

    @property
    def is_json(self) -> bool:
        """Whether the command must print one JSON document."""
        return self.mode == OUTPUT_JSON

    @property
    def console(self) -> Any:
        """rich Console writing to the stream (styled output only)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)
        return self._console

    def json(self, document: Any) -> None:
        """Print ``document`` as indented JSON."""
        json.dump(document, self.stream, indent=2, ensure_ascii=False, default=str)
        self.stream.write("\n")

    def line(self, text: str = "", style: str | None = None) -> None:
        """Print one line; ``style`` is a rich style, ignored in plain text."""
        if self.styled:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))
        else:
            self.stream.write(text + "\n")

    def xml(self, text: str) -> None:
        """Print an XML string, indented (and highlighted on a terminal)."""
        pretty = pretty_xml(text)
        if self.styled:
            from rich.syntax import Syntax

            self.console.print(Syntax(pretty, "xml", background_color="default"))
        else:
            self.stream.write(pretty + "\n")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Print rows under column headers, aligned."""
        cells = [["" if value is None else str(value) for value in row] for row in rows]
        if self.styled:
            from rich import box
            from rich.table import Table
            from rich.text import Text

            table = Table(*columns, box=box.SIMPLE_HEAD)
            for row in cells:
                table.add_row(*(Text(value) for value in row))
            self.console.print(table)
            return

        widths = [len(column) for column in columns]
        for row in cells:
            for index, value in enumerate(row):
                widths[index] = max(widths[index], len(value))
        for row in [list(columns), *cells]:
            padded = [value.ljust(width) for value, width in zip(row, widths)]
            self.stream.write("  ".join(padded).rstrip() + "\n")

    def fields(self, pairs: Sequence[tuple[str, Any]]) -> None:
        """Print ``name: value`` lines with aligned values."""
        width = max((len(name) for name, _ in pairs), default=0)
        for name, value in pairs:
            label = f"{name}:".ljust(width + 1)
            if self.styled:
                from rich.text import Text

                text = Text(label, style="bold")
                text.append(f" {value}")
                self.console.print(text)
            else:
                self.stream.write(f"{label} {value}\n")
