"""The store's single-statement leg marks speak the legs' vocabulary (the store sits below it, so it spells it)."""

from __future__ import annotations

import pytest

from gateway.legs.states import DispatchState
from gateway.store import leg_writer

pytestmark = pytest.mark.fast


def test_the_writer_spells_the_dispatch_states_as_the_machine_does() -> None:
    assert leg_writer.PENDING == DispatchState.PENDING
    assert leg_writer.SENT == DispatchState.SENT
