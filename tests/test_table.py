"""CLI tables: long free text is shortened, identifiers never are (they are copied into the
next command)."""

from cli import table


def test_identifiers_are_printed_whole_and_free_text_is_shortened():
    call_id = "call-" + "0123456789abcdef" * 4
    text = "x" * 100
    out = table.render([{"call_id": call_id, "tool_call_ids": ["chatcmpl-tool-" + "a" * 40],
                         "sha256": "f" * 64, "error": text}],
                       ["call_id", "tool_call_ids", "sha256", "error"], max_width=20)
    assert call_id in out and "chatcmpl-tool-" + "a" * 40 in out and "f" * 64 in out
    assert text not in out and "x" * 19 + "…" in out
