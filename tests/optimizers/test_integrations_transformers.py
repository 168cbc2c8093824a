"""SharpnessAwareTrainer: 3 Trainer steps equal 3 steps of the plain closure loop."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments  # noqa: E402

import optimizers as O  # noqa: E402
from optimizers.integrations.transformers import SharpnessAwareTrainer  # noqa: E402

LR = 0.05
SEQ = 8


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        vocab_size=50,
        n_positions=16,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 50, (n, SEQ), generator=g)
        # position 0 is never a target: marking it makes the Trainer's token count (which
        # may or may not know that causal LM losses shift) agree with the model's mean loss
        self.labels = self.ids.clone()
        self.labels[:, 0] = -100

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def make(name: str, model: torch.nn.Module) -> O.SharpnessAwareOptimizer:
    hp = {"sam": {"rho": 0.05}, "gam": {}, "fad": {}, "agnostic_sam": {}, "momentum_sam": {}}[name]
    kw = {"rho": 0.5} if name == "momentum_sam" else {}
    return O.build_optimizer(name, model.parameters(), model=model, lr=LR, **{**hp, **kw})


def plain_loop(name: str, data: TokenData, batch: int, steps: int = 3, hook=None, amp=None):
    model = tiny_gpt2()
    model.train()
    opt = make(name, model)
    if hook is not None:
        opt.base_optimizer.register_step_pre_hook(hook)
    for s in range(steps):
        ids = data.ids[s * batch : (s + 1) * batch]
        labels = data.labels[s * batch : (s + 1) * batch]

        def closure(part=None, ids=ids, labels=labels):
            opt.zero_grad()
            x, y = (ids, labels) if part is None else (ids[part], labels[part])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
                loss = model(input_ids=x, labels=y).loss
            loss.backward()
            return loss

        opt.step(closure)
    return model


def hf_trainer(tmp_path, name: str | None, data: TokenData, batch: int, **args):
    model = tiny_gpt2()
    targs = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=3,
        per_device_train_batch_size=batch,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        logging_steps=1,
        disable_tqdm=True,
    )
    targs.update(args)
    kw = {}
    if name is not None:
        kw["optimizers"] = (make(name, model), None)
    trainer_args = TrainingArguments(**targs)
    return model, trainer_args, kw


def run(tmp_path, name, data, batch, **args):
    model, targs, kw = hf_trainer(tmp_path, name, data, batch, **args)
    trainer = SharpnessAwareTrainer(model=model, args=targs, train_dataset=data, **kw)
    trainer.train()
    return model, trainer


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["sam", "gam", "agnostic_sam", "momentum_sam"])
def test_trainer_equals_closure_loop(tmp_path, name):
    data = TokenData(12)
    model, trainer = run(tmp_path, name, data, batch=4)
    ref = plain_loop(name, data, batch=4)
    assert trainer.state.global_step == 3
    assert max_diff(model, ref) < 1e-6
    assert max_diff(model, tiny_gpt2()) > 1e-4  # it did train


def test_gradient_accumulation_equals_big_batch(tmp_path):
    # 2 micro-batches of 2 per step: every pass is the gradient of the batch of 4
    data = TokenData(12)
    model, _ = run(tmp_path, "gam", data, batch=2, gradient_accumulation_steps=2)
    ref = plain_loop("gam", data, batch=4)
    assert max_diff(model, ref) < 1e-6


def test_build_by_name_and_clip_direction(tmp_path):
    data = TokenData(12)
    model, targs, _ = hf_trainer(tmp_path, None, data, 4, max_grad_norm=0.05)
    trainer = SharpnessAwareTrainer(
        model=model, args=targs, train_dataset=data, sam_optimizer="sam", sam_kwargs={"rho": 0.05}
    )
    trainer.train()
    norms = []

    def clip(base, args, kwargs):
        params = [p for g in base.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.nn.utils.clip_grad_norm_(params, 0.05).item())

    ref = plain_loop("sam", data, batch=4, hook=clip)
    assert max_diff(model, ref) < 1e-6
    logged = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert logged == pytest.approx(norms, rel=1e-5)
    assert min(norms) > 0.05  # the clipping was active


def test_bf16_autocast(tmp_path):
    data = TokenData(12)
    model, _ = run(tmp_path, "sam", data, batch=4, bf16=True)
    ref = plain_loop("sam", data, batch=4, amp=torch.bfloat16)
    assert max_diff(model, ref) < 1e-5


def test_fp16_refused(tmp_path):
    model, targs, kw = hf_trainer(tmp_path, "sam", TokenData(4), 4)
    targs.fp16 = True  # TrainingArguments itself may refuse fp16 on CPU
    with pytest.raises(ValueError, match="fp16=True is not supported"):
        SharpnessAwareTrainer(model=model, args=targs, train_dataset=TokenData(4), **kw)


def test_plain_optimizer_refused(tmp_path):
    model, targs, _ = hf_trainer(tmp_path, None, TokenData(4), 4)
    sgd = torch.optim.SGD(model.parameters(), lr=LR)
    with pytest.raises(ValueError, match="not sharpness-aware"):
        SharpnessAwareTrainer(model=model, args=targs, optimizers=(sgd, None))


class FullTokenData(TokenData):
    """Every position a target: the Trainer must count the causal shift to get the mean."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.labels = self.ids.clone()


@pytest.mark.parametrize("accumulate", [1, 2])
def test_causal_shift_counted_for_lm_head_models(tmp_path, accumulate):
    data = FullTokenData(12)
    model, _ = run(
        tmp_path, "sam", data, batch=4 // accumulate, gradient_accumulation_steps=accumulate
    )
    assert model.loss_type == "ForCausalLM"
    ref = plain_loop("sam", data, batch=4)
    assert max_diff(model, ref) < 1e-6
