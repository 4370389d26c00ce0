"""Names that moved between modules still import from where they used to be (users' scripts keep working)."""

import pytest


def test_moved_names_import_from_their_old_modules():
    from glue_eval.report import BUDGETS, write_glue_report  # moved to glue_md / scoreboard
    from glue_eval.training import LOSS_WEIGHTINGS, OFFLINE_ENCODER, TASKS, TrainConfig, TrainingError, UnknownTaskError
    from glue_eval.train_config import TrainConfig as Moved

    assert TrainConfig is Moved and callable(write_glue_report) and BUDGETS and LOSS_WEIGHTINGS
    assert OFFLINE_ENCODER and "sst2" in TASKS and issubclass(UnknownTaskError, Exception) and issubclass(TrainingError, ValueError)


def test_lazy_packages_name_their_api_and_refuse_unknown_names():
    import dimee
    import glue_eval

    assert dimee.sweep.__name__ == "sweep" and dimee.calibrate.__name__ == "calibrate_run"
    assert set(glue_eval.__all__) <= set(dir(glue_eval))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dimee.nope  # noqa: B018
