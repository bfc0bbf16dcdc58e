"""capture.identity: the appliance's name, made once and kept in a file."""

from __future__ import annotations

import os
import stat

import pytest

from capture.identity import IdentityError, appliance_identity, new_name


def test_made_on_first_use_and_kept(tmp_path):
    """The first call writes a new name (mode 0600, directory made); later calls read the same one."""
    path = tmp_path / "var" / "appliance"
    name = appliance_identity(str(path))
    assert path.read_text().strip() == name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert appliance_identity(str(path)) == name


def test_names_differ_on_one_host():
    """Two appliances on the same host get different names: the host name and a random suffix."""
    assert new_name() != new_name()


def test_an_operator_may_choose_the_name(tmp_path):
    """A name written into the file (letters, digits, . _ : @ -) is used as it is."""
    path = tmp_path / "appliance"
    path.write_text("floor-2.lab\n")
    assert appliance_identity(str(path)) == "floor-2.lab"


@pytest.mark.parametrize("content", ["", "two words", "x" * 65, "caf\u00e9", "a\nb"])
def test_an_unusable_name_is_one_clear_error(tmp_path, content):
    """An empty, spaced, too long or non-ASCII name is an IdentityError naming the file, not a traceback."""
    path = tmp_path / "appliance"
    path.write_text(content)
    with pytest.raises(IdentityError) as info:
        appliance_identity(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
