import pytest

from moejax.laws import clark_fit_subset, load_dataset


@pytest.fixture(scope="module")
def curves():
    return load_dataset("clark2022")


def test_clark_data_shape(curves):
    assert len(curves) == 5799
    assert curves["hyper_id"].nunique() == 223


def test_fit_subset_adds_dense_rows_and_takes_final_step(curves):
    subset = clark_fit_subset(curves, "S-Base")
    assert set(subset["router_type"]) == {"Dense", "S-Base"}
    assert (subset["E"] == 1).sum() == 5  # five dense sizes with seed 42, k 1
    last_step = curves.groupby("hyper_id")["step"].max()
    assert (subset["step"].to_numpy() == last_step.loc[subset["hyper_id"]].to_numpy()).all()
    assert subset["hyper_id"].is_unique
    assert (subset[["N", "E", "loss"]].to_numpy() > 0).all()


def test_unknown_dataset_and_router():
    with pytest.raises(KeyError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(ValueError, match="router"):
        clark_fit_subset(load_dataset("clark2022"), "Switch")


def test_unknown_loss_column_lists_the_loss_columns(curves):
    with pytest.raises(ValueError, match="loss column 'nope' is not in the data; its loss columns: "
                       "loss_c4, .*loss_validation"):
        clark_fit_subset(curves, "S-Base", loss_column="nope")
