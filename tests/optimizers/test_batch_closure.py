"""``batch_closure``: the batch adapter in a hand-written loop, equal to the closure a user
would write by hand; ``BatchPart.select`` on nested batches."""

from __future__ import annotations

import copy
from collections import OrderedDict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optimizers import SAM, AgnosticSAM, BatchPart
from optimizers.integrations import batch_closure

torch.set_num_threads(1)


def test_select_slices_every_batch_first_tensor():
    Pair = namedtuple("Pair", "x y")
    x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    batch = {
        "pair": Pair(x, y),
        "list": [x, "text", 3],
        "nested": OrderedDict(ids=y),
        "scalar": torch.tensor(2.0),
    }
    part = BatchPart(0.4, "val")
    got = part.select(batch)
    assert torch.equal(got["pair"].x, x[3:]) and torch.equal(got["pair"].y, y[3:])
    assert isinstance(got["pair"], Pair) and isinstance(got["nested"], OrderedDict)
    assert torch.equal(got["list"][0], x[3:]) and got["list"][1:] == ["text", 3]
    assert torch.equal(got["nested"]["ids"], y[3:])
    assert got["scalar"] is batch["scalar"]
    train = BatchPart(0.4, "train").select((x, y))
    assert torch.equal(train[0], x[BatchPart(0.4, "train")]) and len(train[1]) == 3


class OwnLoss(nn.Module):
    """A model computing its own loss from a dict batch, as Hugging Face models do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, features, labels=None):
        logits = self.net(features)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def _steps(make_opt, model, batches, closure_of):
    opt = make_opt(model)
    losses = []
    for batch in batches:
        losses.append(float(opt.step(closure_of(opt, model, batch))))
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["sam", "agnostic_sam"])
def test_three_steps_equal_a_hand_written_closure(name):
    torch.manual_seed(0)
    model = OwnLoss().double()
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "features": torch.randn(10, 4, generator=g, dtype=torch.float64),
            "labels": torch.randint(0, 3, (10,), generator=g),
        }
        for _ in range(3)
    ]
    cls = {"sam": SAM, "agnostic_sam": AgnosticSAM}[name]

    def make_opt(m):
        return cls(m.parameters(), torch.optim.SGD, model=m, lr=0.1, momentum=0.9)

    def by_hand(opt, m, batch):
        def closure(part=None):
            opt.zero_grad()
            x, y = batch["features"], batch["labels"]
            if part is not None:
                x, y = x[part], y[part]
            loss = F.cross_entropy(m.net(x), y)
            loss.backward()
            return loss

        return closure

    ref_losses, ref_params = _steps(make_opt, copy.deepcopy(model), batches, by_hand)
    losses, params = _steps(make_opt, copy.deepcopy(model), batches, batch_closure)
    assert losses == pytest.approx(ref_losses, rel=1e-12)
    for a, b in zip(params, ref_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert params[0].ne(model.net[0].weight).any()  # it trained


def test_pairs_loss_fn_and_compute_loss():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    opt = SAM(net.parameters(), torch.optim.SGD, model=net, lr=0.1)
    closure = batch_closure(opt, net, (x, y), loss_fn=F.mse_loss)
    with torch.no_grad():
        want = float(F.mse_loss(net(x), y))
    assert float(closure()) == pytest.approx(want)
    own = batch_closure(
        opt, net, {"a": x, "b": y}, compute_loss=lambda m, b: F.mse_loss(m(b["a"]), b["b"])
    )
    assert float(own()) == pytest.approx(want)
    assert net.weight.grad is not None


def test_a_dict_the_model_cannot_take_is_refused_before_any_pass():
    net = nn.Linear(3, 2)
    opt = SAM(net.parameters(), torch.optim.SGD, model=net, lr=0.1)
    with pytest.raises(ValueError, match="takes no"):
        batch_closure(opt, net, {"pixels": torch.randn(2, 3), "mask": torch.ones(2)})


def test_a_tiny_gpt2_trains_with_no_glue():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 16, (4, 6))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    opt = SAM(model.parameters(), torch.optim.SGD, model=model, lr=0.5)
    first = float(model(**batch).loss.detach())
    for _ in range(3):
        opt.step(batch_closure(opt, model, batch))
    assert float(model(**batch).loss.detach()) < first
