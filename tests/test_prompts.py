import pytest

from engine.errors import PromptError
from engine.symbolic.config import PRESETS
from engine.symbolic.prompts import Prompt, PromptTable, known_prompt


@pytest.fixture(scope="module")
def x_table():
    return PromptTable.notagen_x()


def test_notagen_x_table(x_table):
    assert len(x_table) == 112
    assert x_table.periods() == ["Baroque", "Classical", "Romantic"]
    assert x_table.instrumentations("Baroque", "Bach, Johann Sebastian") == [
        "Chamber", "Choral", "Keyboard", "Orchestral", "Vocal-Orchestral"]
    assert "Chopin, Frederic" in x_table.composers("Romantic")
    assert "Chopin, Frederic" not in x_table.composers("Baroque")


def test_known_prompt_takes_the_tables_spelling(x_table):
    prompt, warnings = known_prompt(Prompt(" baroque", "bach, johann sebastian", "KEYBOARD"), x_table)
    assert prompt == Prompt("Baroque", "Bach, Johann Sebastian", "Keyboard") and warnings == []
    assert prompt.lines() == ["%Baroque\n", "%Bach, Johann Sebastian\n", "%Keyboard\n"]


def test_unknown_combination_lists_the_nearest(x_table):
    with pytest.raises(PromptError) as e:
        known_prompt(Prompt("Baroque", "Bach, Johann Sebastian", "Art Song"), x_table)
    msg = str(e.value)
    assert "does not know Baroque / Bach, Johann Sebastian / Art Song" in msg
    assert "Baroque / Bach, Johann Sebastian / " in msg.split("Nearest valid combinations:")[1]
    with pytest.raises(PromptError, match="Chopin, Frederic"):
        known_prompt(Prompt("Romantic", "Chopin, Frederik", "Keybord"), x_table)


@pytest.mark.parametrize("field,value,match", [
    ("composer", "Dvo\u0159\u00e1k, Anton\u00edn", "7-bit ASCII"),
    ("period", "", "empty"),
    ("instrumentation", "Key_board", "without '_'"),
    ("composer", "Bach\nX:1", "one line"),
    ("period", "x" * 500, "at most"),
])
def test_bad_prompt_text_is_refused_when_the_prompt_is_made(field, value, match):
    fields = {"period": "Baroque", "composer": "Bach, Johann Sebastian", "instrumentation": "Keyboard", field: value}
    with pytest.raises(PromptError, match=match):
        Prompt(fields["period"], fields["composer"], fields["instrumentation"])


def test_model_without_table_accepts_any_prompt_with_a_warning():
    prompt, warnings = known_prompt(Prompt("Folk", "Traditional, Irish", "Melody"), None)
    assert prompt.composer == "Traditional, Irish" and "not checked" in warnings[0]


def test_table_chosen_for_a_checkpoint(tmp_path):
    table, warnings = PromptTable.for_checkpoint(tmp_path / "x.pth", PRESETS["notagen-x"])
    assert len(table) == 112 and "NotaGen-X" in warnings[0]
    table, warnings = PromptTable.for_checkpoint(tmp_path / "s.pth", PRESETS["notagen-small"])
    assert table is None and "any prompt" in warnings[0]


def test_prompts_txt_format(tmp_path):
    with pytest.raises(PromptError, match="line 2"):
        PromptTable.parse("Baroque_Bach, Johann Sebastian_Keyboard\nnot a prompt line\n")
    t = PromptTable.parse("# comment\n\nBaroque_Bach, Johann Sebastian_Keyboard\n")
    t.save(tmp_path / "p.txt")
    assert PromptTable.load(tmp_path / "p.txt").prompts == t.prompts
