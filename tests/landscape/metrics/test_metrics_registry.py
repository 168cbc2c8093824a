import pytest
import torch
from _metrics_helpers import classification_data, mlp

from landscape.metrics import (
    METRICS,
    MetricResult,
    compute_metrics,
    metric_options,
    validate_metric_names,
)
from landscape.objective import Objective

SPEC_TABLE = [
    "lambda_max",
    "trace",
    "normalized_trace",
    "grad_norm",
    "grad_curvature",
    "sam_sharpness",
    "adaptive_sharpness",
    "first_order_flatness",
    "average_sharpness",
    "eps_sharpness",
    "grad_cosine",
]

SMALL = {
    "max_products": 10,
    "num_products": 6,
    "steps": 2,
    "num_samples": 3,
    "max_iter": 2,
}


def test_registry_holds_every_metric_of_the_spec_table_in_order():
    assert list(METRICS) == [*SPEC_TABLE, "loss", "accuracy"]  # then the base point's own


def test_unknown_names_are_rejected_listing_the_registry():
    with pytest.raises(ValueError, match=r"'sharpness'.*lambda_max.*grad_cosine"):
        validate_metric_names("lambda_max,sharpness")
    with pytest.raises(ValueError, match="none given"):
        validate_metric_names(" , ")
    assert validate_metric_names(" trace, lambda_max,trace ") == ["trace", "lambda_max"]


def test_bad_names_and_options_fail_before_any_work():
    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the model must not run")

    data = classification_data()
    with pytest.raises(ValueError, match="Invalid metric"):
        compute_metrics(Exploding(), data, ["nope"])
    with pytest.raises(ValueError, match="Invalid option 'sigma'"):
        compute_metrics(Exploding(), data, ["lambda_max"], sigma=0.1)
    with pytest.raises(ValueError, match="Invalid option 'rho' for metric 'trace'"):
        compute_metrics(Exploding(), data, ["trace"], per_metric={"trace": {"rho": 1.0}})
    with pytest.raises(ValueError, match="per_metric"):
        compute_metrics(Exploding(), data, ["trace"], per_metric={"lambda_max": {}})


def test_shared_and_per_metric_options():
    model = mlp()
    data = classification_data()
    out = compute_metrics(
        model,
        data,
        ["sam_sharpness", "adaptive_sharpness"],
        rho=0.02,
        per_metric={"adaptive_sharpness": {"rho": 0.3, "steps": 2}},
        progress=False,
    )
    assert out["sam_sharpness"].info["rho"] == 0.02 and out["sam_sharpness"].info["steps"] == 1
    assert out["adaptive_sharpness"].info["rho"] == 0.3
    assert out["adaptive_sharpness"].info["steps"] == 2
    assert metric_options("sam_sharpness") == {"rho": 0.05, "steps": 1, "step_size": None}
    # seed is tolerated when no selected metric is random (one seed for a whole comparison)
    assert compute_metrics(model, data, ["grad_norm"], seed=3)["grad_norm"].value > 0


def test_every_metric_leaves_weights_mode_grads_and_buffers_exactly_as_found():
    model = mlp(batchnorm=True)
    x, y = classification_data(n=20)
    model.train()
    model[2].eval()  # a mixed mode must come back mixed
    params = list(model.parameters())
    for i, p in enumerate(params):
        if i % 2 == 0:
            p.grad = torch.full_like(p, float(i + 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in params]
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()

    names = list(METRICS)  # the spec's table, then loss and accuracy
    out = compute_metrics(model, (x, y), names, batch_size=8, progress=False, **SMALL)

    assert list(out) == names
    for name, res in out.items():
        assert isinstance(res, MetricResult)
        assert isinstance(res.value, float), name
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p, g in zip(params, grads):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(rng, torch.get_rng_state())
    stochastic = {"trace", "normalized_trace", "average_sharpness"}
    for name in names:
        assert (out[name].stderr is not None) == (name in stochastic), name


def test_objective_accepted_and_results_serialise():
    import json

    model = mlp()
    obj = Objective(model, classification_data(), batch_size=7)
    out = compute_metrics(obj, names="grad_norm,sam_sharpness,average_sharpness", num_samples=3)
    json.dumps({k: v.to_dict() for k, v in out.items()})
    assert "±" in str(out["average_sharpness"])
    with pytest.raises(ValueError, match="Objective"):
        compute_metrics(obj, classification_data(), ["grad_norm"])
