"""Every roster entry states its intended use (seed 8.3: "explicit statement of failure modes and
intended use"), and the roster refuses an empty one."""

from __future__ import annotations

import pytest

from awb_dagster.registry.model import Registry
from awb_dagster.registry.roster import RegistryError, load_roster


@pytest.mark.parametrize("entry", Registry.load().entries, ids=lambda e: e.instrument.key)
def test_every_entry_states_its_intended_use(entry) -> None:
    intended = entry.instrument.intended_use
    assert intended and len(intended) > 20, f"{entry.instrument.id}: add intended_use to roster.toml"
    if entry.instrument.section.startswith("7"):  # probes: axes, never authority (seed 7)
        assert "never" in intended


def test_an_empty_intended_use_is_refused(tmp_path) -> None:
    roster = tmp_path / "roster.toml"
    roster.write_text('[[instrument]]\nid = "a/b"\nkey = "b"\nfamily = "clip"\nrole = "r"\nsection = "3.1"\n'
                      'source = "hf"\nintended_use = " "\n')  # fmt: skip
    with pytest.raises(RegistryError, match="instrument 'a/b', field 'intended_use': must be a non-empty string"):
        load_roster(roster)
