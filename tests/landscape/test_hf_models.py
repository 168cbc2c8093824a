"""Hugging Face transformers as they come: tiny models from configs, HF batches, no loss_fn."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from landscape.compare import compare_models  # noqa: E402
from landscape.hessian import HessianOperator, lanczos_eigen  # noqa: E402
from landscape.metrics import compute_metrics  # noqa: E402
from landscape.objective import Objective  # noqa: E402
from landscape.surface import compute_surface  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    yield


def gpt2(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=4,
        vocab_size=10,
        n_positions=6,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).to(dtype)


def gpt2_batches(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 10, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # right padding
    mask[4, 2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": mask[i : i + 4],
            "labels": labels[i : i + 4],
        }
        for i in range(0, n, 4)
    ]


def bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=12,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


def bert_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (10, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    labels = torch.randint(0, 3, (10,), generator=g)
    return [
        {
            "input_ids": ids[i : i + 4],
            "attention_mask": mask[i : i + 4],
            "labels": labels[i : i + 4],
        }
        for i in range(0, 10, 4)
    ]


def vit(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.ViTForImageClassification(cfg)


def vit_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(9, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (9,), generator=g)
    return [{"pixel_values": x[i : i + 4], "labels": y[i : i + 4]} for i in range(0, 9, 4)]


MODELS = {"gpt2": (gpt2, gpt2_batches), "bert": (bert, bert_batches), "vit": (vit, vit_batches)}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_capability_with_hf_batches_and_no_loss_fn(name):
    make, batches_of = MODELS[name]
    model, batches = make(), batches_of()
    # the loss of the data: the mean over counted items (tokens for GPT-2), whatever batching
    with torch.no_grad():
        whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        ref = float(model(**whole).loss)
    obj = Objective(model, batches)
    assert obj.evaluate()["loss"] == pytest.approx(ref, rel=1e-5)

    surface = compute_surface(model, batches, x="-0.5:0.5:3", y="-0.5:0.5:3", progress=False)
    values = surface.values["train_loss"]
    assert values.shape == (3, 3) and all(math.isfinite(v) for v in values.ravel())
    assert values[1, 1] == pytest.approx(ref, rel=1e-5)

    res = compute_metrics(
        model,
        batches,
        ["lambda_max", "trace", "sam_sharpness", "grad_cosine"],
        num_products=6,
        progress=False,
    )
    assert res["lambda_max"].value > 0
    assert math.isfinite(res["trace"].value)
    assert res["sam_sharpness"].value > 0
    assert -1.0 <= res["grad_cosine"].value <= 1.0

    table = compare_models(
        {"a": model, "b": make(seed=1)}, batches, ["grad_norm", "loss"], progress=False
    )
    assert [r["label"] for r in table.rows] == ["a", "b"]


def test_gpt2_lambda_max_equals_dense_float64_hessian():
    """λmax against a dense float64 Hessian built independently, by central differences.

    Each column is ``(g(θ + h e_i) − g(θ − h e_i)) / 2h`` of the token-mean gradient, from
    plain autograd on the whole data at once (no Objective, no batches). (``torch.func``'s
    ``hessian`` of ``functional_call`` is not used: on this model it returns a matrix that
    is not symmetric, 0.55 apart from its transpose, and a λmax of 89.2442 where central
    differences converge to 89.238.)
    """
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    model = gpt2(dtype=torch.float64)
    batches = gpt2_batches()
    op = HessianOperator(model, data=batches)
    top = lanczos_eigen(op, k=1, tol=1e-9, max_products=60)

    whole = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    model.eval()
    params = list(model.parameters())
    theta = parameters_to_vector(params).detach().clone()

    def grad_at(t):
        vector_to_parameters(t, params)
        return parameters_to_vector(torch.autograd.grad(model(**whole).loss, params))

    h = 1e-4
    cols = []
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = h
        cols.append((grad_at(theta + e) - grad_at(theta - e)) / (2 * h))
    vector_to_parameters(theta, params)
    dense = torch.stack(cols, dim=1)
    # central differences at h = 1e-4 are good to about 1e-4 here (measured: 9.6e-4
    # asymmetry against entries up to 14, λmax 89.2362 against 89.2381)
    assert float((dense - dense.T).abs().max()) < 2e-4 * float(dense.abs().max())
    exact = float(torch.linalg.eigvalsh((dense + dense.T) / 2)[-1])
    assert top.eigenvalues[0] == pytest.approx(exact, rel=1e-4)
