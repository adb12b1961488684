"""fedft's console: library chatter is hidden unless verbose, and real problems still show."""

import logging
import warnings

import pytest

from fedft import console


@pytest.fixture
def clean_state(monkeypatch):
    for name in (console.VERBOSE_ENV, "PYTHONWARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    flwr_log = logging.getLogger("flwr")
    filters = list(flwr_log.filters)
    with warnings.catch_warnings():
        yield flwr_log
    flwr_log.filters[:] = filters


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_hides_deprecations_and_flower_notices_but_not_other_warnings(clean_state):
    console.quiet_libraries(False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
        warnings.warn("future api", FutureWarning, stacklevel=1)
        warnings.warn("real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["real problem"]
    handler = Collect()
    clean_state.addHandler(handler)
    try:
        clean_state.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated")
        clean_state.warning(
            "fraction_evaluate is set to 0.0. Federated evaluation will be skipped."
        )
        clean_state.warning("ActorPool is empty")
    finally:
        clean_state.removeHandler(handler)
    assert handler.messages == ["ActorPool is empty"]


def test_quiet_reaches_the_processes_it_starts(clean_state, monkeypatch):
    console.quiet_libraries(False)
    console.mark_simulation_workers(False)
    import os

    assert os.environ[console.VERBOSE_ENV] == "0"
    assert "ignore::DeprecationWarning" in os.environ["PYTHONWARNINGS"]
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_verbose_changes_nothing(clean_state):
    console.quiet_libraries(True)
    console.mark_simulation_workers(True)
    import os

    assert os.environ[console.VERBOSE_ENV] == "1"
    assert "PYTHONWARNINGS" not in os.environ
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
    assert len(caught) == 1


def test_a_worker_quiets_itself_only_in_a_quiet_simulation(clean_state, monkeypatch):
    flwr_log = clean_state
    level = flwr_log.level
    try:
        console.quiet_worker()  # a deployed SuperNode: no FEDFT_VERBOSE
        assert flwr_log.level == level
        monkeypatch.setenv(console.VERBOSE_ENV, "0")
        console.quiet_worker()
        assert flwr_log.level == logging.ERROR
    finally:
        flwr_log.setLevel(level)


def test_no_progress_line_when_redirected(capsys):
    status = console.Status()  # pytest's captured stderr is not a terminal
    status.show("round 1/3: 0/5 clients done")
    status.clear()
    assert capsys.readouterr().err == ""


def ignored():
    return {f[2] for f in warnings.filters if f[0] == "ignore" and f[3] is None} & {
        DeprecationWarning,
        FutureWarning,
    }


def test_a_flower_app_is_quiet_unless_its_run_config_says_verbose(clean_state, monkeypatch):
    level = clean_state.level
    monkeypatch.setattr(clean_state, "level", level)  # restored after the test
    console.quiet_worker()  # the ClientApp's import hides library warnings ...
    assert ignored() == {DeprecationWarning, FutureWarning}
    console.quiet_flower_app({"verbose": True})  # ... and `flwr run . -c verbose=true` shows them
    assert ignored() == set() and clean_state.level == level
    assert not any(isinstance(f, console._DropNotices) for f in clean_state.filters)
    console.quiet_flower_app({"scenario": "x.toml", "verbose": False}, logging.ERROR)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("old api", DeprecationWarning, stacklevel=1)
    assert caught == []
    assert clean_state.level == logging.ERROR


def test_a_flower_app_under_fedft_simulate_follows_the_command(clean_state, monkeypatch):
    level = clean_state.level
    monkeypatch.setattr(clean_state, "level", level)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")  # `fedft simulate -v` (or `fedft client -v`)
    filters = list(warnings.filters)
    console.quiet_flower_app({})
    assert warnings.filters == filters and clean_state.level == level
