import pytest
import torch
import torch.nn.functional as F
from _metrics_helpers import QUAD_DATA, classification_data, mlp, quad_loss, random_quadratic

from landscape.metrics import METRICS, compute_metrics


def test_loss_and_accuracy_equal_a_direct_evaluation_in_eval_mode():
    model = mlp(batchnorm=True).train()
    x, y = classification_data(n=23)
    res = compute_metrics(model, (x, y), ["loss", "accuracy"], batch_size=5, progress=False)
    assert model.training  # mode left as found
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert res["loss"].value == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-12)
    correct = int((out.argmax(1) == y).sum())
    assert res["accuracy"].value == pytest.approx(100.0 * correct / 23, rel=1e-12)
    assert 0 < correct < 23  # the check is not trivially 0 % or 100 %
    assert res["loss"].stderr is None and res["accuracy"].info["samples"] == 23


def test_loss_is_the_base_loss_of_the_other_metrics():
    model = mlp()
    x, y = classification_data(n=16)
    res = compute_metrics(model, (x, y), ["grad_norm", "loss"], progress=False)
    assert res["loss"].value == pytest.approx(res["grad_norm"].info["loss"], rel=1e-12)


def test_loss_of_a_custom_loss_and_accuracy_refused_without_labels():
    model = random_quadratic(seed=3)
    res = compute_metrics(model, QUAD_DATA, ["loss"], loss_fn=quad_loss, progress=False)
    assert res["loss"].value == pytest.approx(model.value(), rel=1e-12)
    with pytest.raises(ValueError, match=r"accuracy.*logits"):
        compute_metrics(model, QUAD_DATA, ["accuracy"], loss_fn=quad_loss, progress=False)


def test_loss_and_accuracy_come_after_the_spec_table():
    assert list(METRICS)[-2:] == ["loss", "accuracy"]
