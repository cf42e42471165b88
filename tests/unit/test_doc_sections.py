"""worker.doc_sections: a generated section replaces only what stands between its markers."""

from __future__ import annotations

import pytest

from worker.doc_sections import write_section


def test_a_section_is_replaced_and_the_prose_around_it_kept(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("intro\n<!-- BEGIN a -->\nold\n<!-- END a -->\nprose\n<!-- BEGIN b -->\nkeep\n<!-- END b -->\n")
    write_section(doc, "a", "new\nlines")
    assert doc.read_text() == ("intro\n<!-- BEGIN a -->\nnew\nlines\n<!-- END a -->\nprose\n"
                               "<!-- BEGIN b -->\nkeep\n<!-- END b -->\n")


def test_a_missing_section_is_an_error_or_appended(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("intro\n")
    with pytest.raises(ValueError, match="has no <!-- BEGIN a --> … <!-- END a --> section"):
        write_section(doc, "a", "x")
    assert doc.read_text() == "intro\n"
    write_section(doc, "a", "x", create=True)
    assert doc.read_text() == "intro\n\n<!-- BEGIN a -->\nx\n<!-- END a -->\n"
    missing = tmp_path / "new.md"
    write_section(missing, "b", "y", create=True)
    assert missing.read_text() == "\n\n<!-- BEGIN b -->\ny\n<!-- END b -->\n"
