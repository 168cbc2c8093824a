"""The batch adapter: every batch form, the loss of the data, fixed order, parameter selection."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.batches import BatchAdapter, shifts_labels
from landscape.directions import custom_directions, random_directions
from landscape.hessian import HessianOperator
from landscape.metrics import compute_metrics
from landscape.objective import Objective
from landscape.params import select_parameters
from landscape.surface import compute_surface

VOCAB, T = 7, 5


class TokenModel(nn.Module):
    """A tiny language model that computes its own loss, as Hugging Face models do."""

    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, VOCAB)
        self.shift = shift

    def forward(self, input_ids, labels=None, attention_mask=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        loss = None
        if labels is not None:
            if self.shift:
                logits_, labels_ = logits[:, :-1], labels[:, 1:]
            else:
                logits_, labels_ = logits, labels
            loss = F.cross_entropy(logits_.reshape(-1, VOCAB), labels_.reshape(-1))
        return {"loss": loss, "logits": logits}


def _tokens(n=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, T), generator=g)
    labels = ids.clone()
    labels[0, 2:] = -100  # padding of very different lengths
    labels[3, 1:] = -100
    labels[5, 4:] = -100
    return ids, labels


def _dict_batches(ids, labels, sizes):
    out, i = [], 0
    for s in sizes:
        out.append({"input_ids": ids[i : i + s], "labels": labels[i : i + s]})
        i += s
    return out


@pytest.mark.parametrize("shift", [False, True])
def test_model_loss_is_the_token_mean_over_uneven_batches(shift):
    torch.manual_seed(0)
    model = TokenModel(shift=shift)
    ids, labels = _tokens()
    with torch.no_grad():
        whole = float(model(ids, labels)["loss"])  # one batch: the token mean itself
    batches = _dict_batches(ids, labels, [4, 1, 3, 1])
    counts = (labels[:, 1:] if shift else labels).ne(-100).sum()
    # the causal shift is read from the class name, as for Hugging Face models
    model.__class__ = type("TinyForCausalLM" if shift else "TinyModel", (TokenModel,), {})
    obj = Objective(model, batches)
    assert obj.n_items == int(counts)
    assert obj.n_samples == 9
    assert obj.evaluate()["loss"] == pytest.approx(whole, rel=1e-6)
    # the gradient is the token mean's gradient too
    ref = torch.autograd.grad(model(ids, labels)["loss"], list(model.parameters()))
    got = obj.gradient()
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_batch_means_weighted_by_samples_would_differ():
    """The reason for the rule: the mean of batch means is not the token mean."""
    torch.manual_seed(0)
    model = TokenModel()
    ids, labels = _tokens()
    batches = _dict_batches(ids, labels, [4, 1, 3, 1])
    with torch.no_grad():
        whole = float(model(ids, labels)["loss"])
        naive = sum(float(model(**b)["loss"]) * len(b["input_ids"]) for b in batches) / 9
    assert abs(naive - whole) > 1e-3
    assert Objective(model, batches).evaluate()["loss"] == pytest.approx(whole, rel=1e-6)


def test_loss_fn_on_dict_batches_takes_the_labels_out():
    torch.manual_seed(0)
    model = TokenModel()
    ids, labels = _tokens()
    batches = _dict_batches(ids, labels, [5, 4])

    def token_ce(logits, labels):
        return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))

    # a loss of our own: the labels are not passed to the model; count_items counts tokens
    obj = Objective(model, batches, token_ce, count_items=lambda b: b["labels"].ne(-100).sum())
    with torch.no_grad():
        whole = float(model(ids, labels)["loss"])
    assert obj.evaluate()["loss"] == pytest.approx(whole, rel=1e-6)


def test_compute_loss_with_item_counts():
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    x = torch.randn(10, 3)
    w = torch.rand(10) + 0.5  # per-sample weights: a weighted mean

    def compute_loss(model, batch):
        xb, wb = batch
        per = model(xb).squeeze(-1).square() * wb
        return per.sum() / wb.sum(), wb.sum()  # a mean over "items" of total weight wb.sum()

    # counts must be integers: scale the weights so that they are
    w = torch.round(w * 4) / 4 * 4
    data = [(x[:3], w[:3]), (x[3:], w[3:])]
    obj = Objective(net, data, compute_loss=compute_loss)
    with torch.no_grad():
        ref = float((net(x).squeeze(-1).square() * w).sum() / w.sum())
    assert obj.evaluate()["loss"] == pytest.approx(ref, rel=1e-6)
    # a bare loss: batches weigh by their samples
    obj2 = Objective(net, data, compute_loss=lambda m, b: m(b[0]).square().mean())
    with torch.no_grad():
        assert obj2.evaluate()["loss"] == pytest.approx(float(net(x).square().mean()), rel=1e-6)
    assert "acc" not in obj2.evaluate()


def test_tuple_and_scalar_model_outputs():
    class TupleLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, labels):
            logits = self.lin(x)
            return F.cross_entropy(logits, labels), logits

    torch.manual_seed(0)
    m = TupleLoss()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    data = [{"x_in": x[:5], "labels": y[:5]}, {"x_in": x[5:], "labels": y[5:]}]
    with pytest.raises(ValueError, match="takes no x_in"):
        Objective(m, data)
    data = [{"x": x[:5], "labels": y[:5]}, {"x": x[5:], "labels": y[5:]}]
    res = Objective(m, data).evaluate()
    with torch.no_grad():
        assert res["loss"] == pytest.approx(float(m(x, y)[0]), rel=1e-6)


def test_tuple_outputs_give_their_first_tensor_as_logits():
    """``(logits, aux)`` outputs on pairs (auxiliary heads, features): the loss, accuracy,
    curvature and surfaces read the logits, as for a model returning them alone."""

    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            logits = self.lin(x)
            return logits, logits.square().sum()  # an auxiliary scalar after the logits

    torch.manual_seed(0)
    m = WithAux().double()
    x, y = torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 4, (12,))
    names = ["loss", "accuracy", "lambda_max", "grad_norm"]
    got = compute_metrics(m, (x, y), names, progress=False)
    want = compute_metrics(m.lin, (x, y), names, progress=False)
    for name in names:
        assert got[name].value == pytest.approx(want[name].value, rel=1e-10)
    for ev in ("loop", "vmap"):
        s = compute_surface(m, (x, y), x="-1:1:3", evaluation=ev, seed=1, progress=False)
        s_ref = compute_surface(m.lin, (x, y), x="-1:1:3", evaluation=ev, seed=1, progress=False)
        torch.testing.assert_close(
            torch.as_tensor(s.values["train_loss"]), torch.as_tensor(s_ref.values["train_loss"])
        )
    logits = torch.randn(12, 4, dtype=torch.float64)  # a leading scalar (a loss) is skipped
    got = BatchAdapter().loss_of((torch.tensor(0.5), logits), BatchAdapter().parts((x, y)))
    assert float(got) == pytest.approx(float(F.cross_entropy(logits, y)))


def test_metadata_the_model_does_not_take_is_left_out():
    """Ids and raw text left in a batch (not tensors) are left out of ``model(**batch)``, as
    the Hugging Face Trainer leaves out unused columns; tensors it does not take are refused."""
    ids, labels = _tokens()
    clean = _dict_batches(ids, labels, (4, 5))
    noisy = [{**b, "text": ["..."] * len(b["input_ids"]), "idx": list(range(5))} for b in clean]
    model = TokenModel()
    got = compute_metrics(model, noisy, ["loss", "grad_norm"], progress=False)
    want = compute_metrics(model, clean, ["loss", "grad_norm"], progress=False)
    for name in ("loss", "grad_norm"):
        assert got[name].value == pytest.approx(want[name].value, rel=1e-12)
    for ev in ("loop", "vmap"):
        s = compute_surface(model, noisy, x="-1:1:3", evaluation=ev, progress=False)
        s_ref = compute_surface(model, clean, x="-1:1:3", evaluation=ev, progress=False)
        assert s.values["train_loss"].tolist() == pytest.approx(s_ref.values["train_loss"].tolist())
    with pytest.raises(ValueError, match="takes no pixel_mask"):
        Objective(model, [{**clean[0], "pixel_mask": torch.ones(4)}])
    # A data set's "label" column reaches a forward that takes "labels" (as HF collators do).
    for key in ("label", "label_ids"):
        renamed = [{"input_ids": b["input_ids"], key: b["labels"]} for b in clean]
        got = compute_metrics(model, renamed, ["loss", "grad_norm"], progress=False)
        for name in ("loss", "grad_norm"):
            assert got[name].value == pytest.approx(want[name].value, rel=1e-12)


def test_a_forward_with_kwargs_gets_labels_and_no_metadata():
    """Hugging Face forwards take ``**kwargs`` (transformers 5): ``label`` still reaches
    ``labels``, metadata is still left out, and a random split (grad_cosine) carries it."""

    class KwargsModel(TokenModel):
        def forward(self, input_ids, labels=None, **kwargs):
            assert all(isinstance(v, torch.Tensor) for v in kwargs.values()), kwargs
            return super().forward(input_ids, labels=labels)

    ids, labels = _tokens()
    clean = _dict_batches(ids, labels, (4, 5))
    torch.manual_seed(0)
    model = KwargsModel()
    noisy = [
        {"input_ids": b["input_ids"], "label": b["labels"], "text": ["..."] * len(b["labels"])}
        for b in clean
    ]
    names = ["loss", "grad_norm", "grad_cosine"]
    got = compute_metrics(model, noisy, names, progress=False)
    want = compute_metrics(model, clean, names, progress=False)
    for name in names:
        assert got[name].value == pytest.approx(want[name].value, rel=1e-10)


def test_a_used_up_iterator_is_named():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    gen = ((x[i : i + 5], y[i : i + 5]) for i in (0, 5))
    model = nn.Linear(3, 2)
    compute_metrics(model, gen, ["loss"], progress=False)
    with pytest.raises(ValueError, match="iterator or generator is read once"):
        compute_metrics(model, gen, ["loss"], progress=False)


def test_model_without_loss_is_one_clear_error():
    model = TokenModel()
    ids, _ = _tokens()
    with pytest.raises(ValueError, match="returned no loss"):
        Objective(model, [{"input_ids": ids}]).evaluate()
    with pytest.raises(ValueError, match="compute_loss replaces"):
        BatchAdapter(F.cross_entropy, compute_loss=lambda m, b: 0)
    with pytest.raises(ValueError, match="Invalid batch"):
        Objective(nn.Linear(2, 2), [torch.randn(3, 2)])


def test_all_ignored_batches_carry_no_weight():
    torch.manual_seed(0)
    model = TokenModel()
    ids, labels = _tokens()
    dead = labels.clone()
    dead[:2] = -100
    obj = Objective(model, _dict_batches(ids, dead, [2, 7]))
    assert len(list(obj.batches())) == 1
    assert math.isfinite(obj.evaluate()["loss"])
    with pytest.raises(ValueError, match="no counted item"):
        Objective(model, [{"input_ids": ids, "labels": torch.full_like(labels, -100)}])


def test_shuffled_loader_is_read_in_dataset_order_and_results_repeat():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)
    obj = Objective(net, loader)
    seen = torch.cat([b.inputs for b in obj.batches()])
    torch.testing.assert_close(seen, x)
    values = [
        compute_metrics(net, loader, ["grad_cosine"], progress=False)["grad_cosine"].value
        for _ in range(3)
    ]
    assert values[0] == values[1] == values[2]


@pytest.mark.parametrize("method", ["forward", "auto"])
def test_product_methods_never_crash_where_exact_works(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(20, 4), torch.randn(20, 2)
    exact = HessianOperator(net, data=(x, y), loss_fn=F.mse_loss, batch_size=7)
    other = HessianOperator(net, data=(x, y), loss_fn=F.mse_loss, batch_size=7, method=method)
    v = torch.randn(exact.dim)
    with (
        pytest.warns(UserWarning, match="forward-over-reverse")
        if method == "forward"
        else (_nothing())
    ):
        got = other.matvec(v)
    torch.testing.assert_close(got, exact.matvec(v), rtol=1e-5, atol=1e-6)
    assert other.method == "exact"


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Attention(nn.Module):
    """One self-attention layer on ``scaled_dot_product_attention`` (fused kernels on CPU)."""

    def __init__(self, d=4, classes=3):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, classes)

    def forward(self, x):
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(h.squeeze(1).mean(dim=1))


@pytest.mark.parametrize("method", ["exact", "forward"])
def test_attention_hessian_equals_dense_float64(method):
    torch.manual_seed(0)
    net = Attention().double()
    x, y = torch.randn(6, 5, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    op = HessianOperator(net, data=(x, y), batch_size=4, method=method)
    dense = op.to_dense()

    from torch.func import functional_call

    names = [n for n, _ in net.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    shapes = [p.shape for p in net.parameters()]

    def loss(theta):
        parts = dict(zip(names, _unflatten(theta, shapes), strict=True))
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.MATH]):
            return F.cross_entropy(functional_call(net, parts, (x,)), y)

    ref = torch.autograd.functional.hessian(loss, flat)
    torch.testing.assert_close(dense, ref, rtol=1e-8, atol=1e-10)
    # and the metrics that use second derivatives
    res = compute_metrics(net, (x, y), ["lambda_max", "trace"], progress=False, num_products=8)
    assert res["lambda_max"].value == pytest.approx(float(torch.linalg.eigvalsh(ref)[-1]), 1e-4)


def _unflatten(theta, shapes):
    out, i = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(theta[i : i + n].view(s))
        i += n
    return out


def _frozen_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    net[0].requires_grad_(False)  # a frozen "backbone"
    return net


def test_parameter_selection_is_shared():
    net = _frozen_net()
    assert [n for n, _ in select_parameters(net)] == ["2.weight", "2.bias"]
    assert [n for n, _ in select_parameters(net, "*.bias")] == ["2.bias"]
    assert [n for n, _ in select_parameters(net, "2")] == ["2.weight", "2.bias"]
    assert [n for n, _ in select_parameters(net, "0.weight", require_grad=False)] == ["0.weight"]
    with pytest.raises(ValueError, match="does not require grad"):
        select_parameters(net, "0.weight")
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(net, "nope")
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    assert HessianOperator(net, data=(x, y)).dim == 6 * 3 + 3
    assert HessianOperator(net, data=(x, y), params="*.bias").dim == 3
    res = compute_metrics(net, (x, y), ["grad_norm"], params="2.bias", progress=False)
    g = Objective(net, (x, y)).gradient()[1]
    assert res["grad_norm"].value == pytest.approx(float(g.norm()), rel=1e-6)


def test_surfaces_leave_frozen_weights_alone():
    net = _frozen_net()
    d = random_directions(net, ndim=2, ignore=None)
    assert float(d.x[0].abs().sum()) == 0 and float(d.y[1].abs().sum()) == 0
    assert float(d.x[2].abs().sum()) > 0
    # same draws as before for the trainable part, whatever the selection
    full = random_directions(net, ndim=1, ignore=None, params="0,2")
    assert float(full.x[0].abs().sum()) > 0
    # Hessian eigenvectors (aligned with the trainable parameters) as directions
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    op = HessianOperator(net, data=(x, y))
    v = op.to_list(torch.randn(op.dim))
    cd = custom_directions(net, v)
    assert len(cd.x) == 4 and float(cd.x[0].abs().sum()) == 0
    s = compute_surface(net, (x, y), x="-1:1:3", directions=v, progress=False)
    assert s.values["train_loss"].shape == (3,)


def test_shifts_labels_by_class_name():
    assert not shifts_labels(TokenModel())
    causal = type("GPT2LMHeadModel", (TokenModel,), {})()
    assert shifts_labels(causal)


def test_surface_vmap_reads_dict_batches_like_the_loop():
    torch.manual_seed(0)
    model = TokenModel()
    ids, labels = _tokens()
    batches = _dict_batches(ids, labels, [5, 4])
    kw = {"x": "-1:1:3", "y": "-1:1:2", "progress": False}
    loop = compute_surface(model, batches, **kw)
    vm = compute_surface(model, batches, evaluation="vmap", **kw)
    torch.testing.assert_close(
        torch.as_tensor(vm.values["train_loss"]), torch.as_tensor(loop.values["train_loss"])
    )
    # an Objective in place of the model: the same numbers
    obj = Objective(model, batches)
    again = compute_surface(obj, None, **kw)
    torch.testing.assert_close(
        torch.as_tensor(again.values["train_loss"]), torch.as_tensor(loop.values["train_loss"])
    )


def test_tied_weights_are_found_under_either_name():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    m = Tied()
    assert [n for n, _ in select_parameters(m, "*head*")] == ["emb.weight"]
    assert [n for n, _ in select_parameters(m, "head.weight")] == ["emb.weight"]


def test_data_passed_as_the_parameter_selection_is_named():
    model = nn.Linear(3, 2)
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    for data in ((x, y), [(x, y)], DataLoader(TensorDataset(x, y), batch_size=3)):
        with pytest.raises(ValueError, match=r"looks like data.*HessianOperator\(model, data="):
            HessianOperator(model, data)
    assert HessianOperator(model, [model.weight], data=(x, y)).dim == 6
