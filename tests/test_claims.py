"""Numbers in the text that the outputs show: every result-like number in a notebook's markdown (a decimal
point, a % sign or a unit of time) appears in one of its stored outputs, or cites the literature.

The rule is ``siamese_utils.tools.notebooks.unbacked_numbers`` (its docstring, and the README's section
"Working on the notebooks"); sentences that state a result in words are checked by ``claim`` in the
notebooks themselves."""

from pathlib import Path

import nbformat
import pytest

from siamese_utils.tools.notebooks import unbacked_numbers

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_result_like_number_is_in_an_output(path):
    found = unbacked_numbers(path)
    if found:
        pytest.fail(f"{path.name}: {len(found)} number(s) in the text that no stored output shows; print the value "
                    "in the cell that computes it (and re-execute), cite its source in the sentence, or write a "
                    "formula constant as `code` or $LaTeX$:\n" + "\n".join(f"  {n}" for n in found), pytrace=False)


# --------------------------------------------------------------------------- the rule, on small notebooks

def _notebook(*cells):
    """A notebook from ("md", text) and ("out", printed text) pairs: each "out" is a code cell's stream output."""
    nb = nbformat.v4.new_notebook()
    for kind, text in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell("print(...)")
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
            nb.cells.append(cell)
    return nb


def _numbers(*cells):
    return [n.number for n in unbacked_numbers(_notebook(*cells))]


def test_a_number_an_output_prints_passes():
    assert _numbers(("out", "loss 0.48\n"), ("md", "The loss ends at 0.48.")) == []


def test_a_number_no_output_prints_fails_with_its_sentence():
    found = unbacked_numbers(_notebook(("out", "loss 0.48\n"), ("md", "Intro.\n\nThe loss ends at 0.52. Fine.")))
    assert [(n.number, n.sentence, n.cell_index) for n in found] == [("0.52", "The loss ends at 0.52.", 1)]
    assert str(found[0]) == "(cell 2) 0.52: The loss ends at 0.52."


def test_any_output_of_the_notebook_backs_it_in_any_form():
    nb = _notebook(("md", "It took 25.2 ms; R@1 is 39.0."), ("out", "x"))
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "39.0"}, execution_count=1),
                           nbformat.v4.new_output("display_data", data={"text/html": "<td>25.2</td>",
                                                                          "text/plain": "<table>"})]
    assert unbacked_numbers(nb) == []


def test_what_counts_as_result_like():
    text = ("600 images of 64 px, 5 captions, in 2021, version 3.11.2, a 95 % interval, 90% CI; "
            "then 0.5, 12 %, 25 ms, 3 s, 2 min, 1 h, 4 seconds and 2 minutes.")
    assert _numbers(("md", text)) == ["0.5", "12 %", "25 ms", "3 s", "2 min", "1 h", "4 seconds", "2 minutes"]


def test_thousands_separators_and_signs_are_ignored():
    assert _numbers(("out", "1024 rows\n"), ("md", "1,024.0 rows.")) == []
    assert _numbers(("out", "1,024.5\n"), ("md", "1024.5 rows.")) == []
    assert _numbers(("out", "delta -0.023\n"), ("md", "It moves by −0.023.")) == []


def test_a_percentage_matches_the_same_value_or_its_fraction():
    assert _numbers(("out", "R@1 97.0\n"), ("md", "R@1 is 97 %.")) == []
    assert _numbers(("out", "share 0.438\n"), ("md", "43.8% of captions.")) == []
    assert _numbers(("out", "R@1 97.4\n"), ("md", "R@1 is 97 %.")) == ["97 %"]  # rounding is not quoting


def test_a_time_needs_its_value_printed():
    assert _numbers(("out", "6.7 ms per query\n"), ("md", "A query takes 6.7 ms.")) == []
    assert _numbers(("out", "6.7 ms per query\n"), ("md", "A query takes 7 ms.")) == ["7 ms"]


def test_a_version_in_an_output_is_not_a_number():
    assert _numbers(("out", "siamese_utils 0.1.0\n"), ("md", "A gap of 0.1.")) == ["0.1"]


@pytest.mark.parametrize("sentence", [
    "Radford et al. report 76.2 % zero-shot accuracy.",
    "LiT (Zhai et al., 2022) reaches 85.2 %.",
    "CLIP (2021) reaches 88.0 %.",
    "The published figure is 58.5.",
    "As reported by the authors, 58.5.",
    "arXiv:2103.00020 gives 76.2 %.",
    "The [leaderboard](https://paperswithcode.com/sota) shows 95.3.",
    "| ALBEF (Li et al., 2021) | 95.9 | 85.6 |",
])
def test_a_sentence_that_cites_its_source_passes(sentence):
    assert _numbers(("md", f"Our model gets nothing printed.\n{sentence}\n\nOurs: 12.5.")) == ["12.5"]


def test_the_citation_belongs_to_the_sentence_not_the_paragraph():
    assert _numbers(("md", "CLIP (Radford et al., 2021) is large. It took 2.5 h here.")) == ["2.5 h"]


def test_the_references_section_is_literature():
    refs = "## References\n\n- VSE++ reaches 52.9 R@1 on COCO 1K.\n\n### Notes\n\nAlso 0.5."
    assert _numbers(("md", refs), ("md", "More 0.5 from the literature.")) == []
    assert _numbers(("md", refs), ("md", "## Appendix\n\nOurs: 0.5.")) == ["0.5"]


def test_code_formulas_and_links_are_skipped():
    text = ("The bound is `1 - margin` = $1 - 0.3$ with `margin=0.3`, and $$e^{0.1/0.07}$$.\n\n"
            "```\nloss 0.48\n```\n"
            "See [chapter 04](04_evaluation.ipynb) and <!-- 0.9 -->.")
    assert _numbers(("md", text)) == []


def test_table_rows_and_list_items_are_sentences_of_their_own():
    found = unbacked_numbers(_notebook(("md", "| model | R@1 |\n|---|---|\n| ours | 39.5 |\n\n- fast: 3 ms\n- ok")))
    assert [(n.number, n.sentence) for n in found] == [("39.5", "| ours | 39.5 |"), ("3 ms", "- fast: 3 ms")]
