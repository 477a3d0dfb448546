"""Structural comparison of XML elements, for tests of protocol code.

:func:`xml_differences` compares what a client renders with a reference
stanza (an example of a XEP, say) by names, namespaces, attributes and text,
so that prefixes, whitespace between elements and the order of data form
fields do not matter.
"""

from __future__ import annotations

from libervia.backend.tools import wokkel_compat  # noqa: F401  (before wokkel)

from twisted.words.xish import domish
from wokkel import data_form

NS_X_DATA = data_form.NS_X_DATA


def element_text(element: domish.Element) -> str:
    """Return the element's own text, stripped; whitespace between children is ignored."""
    return "".join(child for child in element.children if isinstance(child, str)).strip()


def xml_differences(
    expected: domish.Element,
    actual: domish.Element,
    path: str = "",
    expected_uri: str | None = None,
    actual_uri: str | None = None,
) -> list[str]:
    """List how ``actual`` differs from ``expected``: names, namespaces, attributes, text.

    An element without a namespace inherits its parent's, as in serialised
    XML. Data forms are compared by type, FORM_TYPE and field values, so
    field order does not matter.
    """
    expected_uri = expected.uri if expected.uri is not None else expected_uri
    actual_uri = actual.uri if actual.uri is not None else actual_uri
    element_path = f"{path}/{expected.name}"
    if (expected_uri, expected.name) != (actual_uri, actual.name):
        return [
            f"{element_path}: expected {{{expected_uri}}}{expected.name}, "
            f"got {{{actual_uri}}}{actual.name}"
        ]

    if (expected_uri, expected.name) == (NS_X_DATA, "x"):
        expected_form = data_form.Form.fromElement(expected)
        actual_form = data_form.Form.fromElement(actual)
        expected_summary = (
            expected_form.formType, expected_form.formNamespace, expected_form.getValues()
        )
        actual_summary = (actual_form.formType, actual_form.formNamespace, actual_form.getValues())
        if expected_summary != actual_summary:
            return [f"{element_path}: expected form {expected_summary}, got {actual_summary}"]
        return []

    differences = []
    if expected.attributes != actual.attributes:
        differences.append(
            f"{element_path}: expected attributes {expected.attributes}, got {actual.attributes}"
        )
    expected_text = element_text(expected)
    actual_text = element_text(actual)
    if expected_text != actual_text:
        differences.append(f"{element_path}: expected text {expected_text!r}, got {actual_text!r}")
    expected_children = list(expected.elements())
    actual_children = list(actual.elements())
    if len(expected_children) != len(actual_children):
        differences.append(
            f"{element_path}: expected children {[c.name for c in expected_children]}, "
            f"got {[c.name for c in actual_children]}"
        )
        return differences
    for expected_child, actual_child in zip(expected_children, actual_children):
        differences += xml_differences(
            expected_child, actual_child, element_path, expected_uri, actual_uri
        )
    return differences
