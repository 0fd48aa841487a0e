import pytest

from agents.personas import UnknownPersona, get_persona, load_catalog


def test_shipped_catalog_has_both_experts_on_their_ports():
    catalog = load_catalog()
    assert catalog["ai_expert"].port == 5000 and catalog["law_expert"].port == 5001
    for persona in catalog.values():
        assert persona.description and persona.system_prompt and persona.skills


def test_unknown_persona_lists_the_known_ones():
    with pytest.raises(UnknownPersona, match="ai_expert, law_expert"):
        get_persona("chef")


def test_a_user_catalog_adds_an_expert_without_code(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("chef:\n  name: Chef\n  description: Cooks.\n  port: 5003\n  system_prompt: You cook.\n")
    assert get_persona("chef", path).port == 5003


def test_a_malformed_entry_names_itself(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("chef:\n  name: Chef\n")
    with pytest.raises(ValueError, match="chef"):
        load_catalog(path)
