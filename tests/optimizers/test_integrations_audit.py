"""Audit of the integrations: the optimizers inside the Trainer, Lightning and own loops."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_integrations_transformers import (
    LR,
    TokenData,
    max_diff,
    tiny_gpt2,
)
from transformers import TrainingArguments, get_linear_schedule_with_warmup

import optimizers as O
from optimizers.integrations.transformers import SharpnessAwareTrainer


def targs(tmp_path, **kw) -> TrainingArguments:
    args = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        logging_steps=1,
        disable_tqdm=True,
    )
    args.update(kw)
    return TrainingArguments(**args)


def plain_steps(ref, opt, data, steps, *, sched=None):
    """The plain loop a Trainer run is compared with: batches of 4 in order, one step each.

    The closure takes Agnostic-SAM's ``part`` (ignored by the other optimizers).
    """
    for s in range(steps):
        ids, labels = data.ids[4 * s : 4 * s + 4], data.labels[4 * s : 4 * s + 4]

        def closure(part=None, ids=ids, labels=labels):
            opt.zero_grad()
            x, y = (ids, labels) if part is None else (ids[part], labels[part])
            loss = ref(input_ids=x, labels=y).loss
            loss.backward()
            return loss

        opt.step(closure)
        if sched is not None:
            sched.step()


@pytest.mark.parametrize("key", ["lr", "weight_decay", "model"])
def test_sam_kwargs_the_trainer_sets_are_refused_at_construction(tmp_path, key):
    # weight_decay was silently overridden by the groups' args.weight_decay; lr and model
    # gave a TypeError from inside create_optimizer at train()
    with pytest.raises(ValueError, match=f"Invalid sam_kwargs: '{key}' is set by the Trainer"):
        SharpnessAwareTrainer(
            model=tiny_gpt2(),
            args=targs(tmp_path),
            train_dataset=TokenData(4),
            sam_optimizer="sam",
            sam_kwargs={key: 0.5},
        )


@pytest.mark.parametrize("name", ["sgd", "bogus"])
def test_sam_optimizer_name_checked_at_construction(tmp_path, name):
    with pytest.raises(ValueError, match="Invalid sam_optimizer"):
        SharpnessAwareTrainer(
            model=tiny_gpt2(), args=targs(tmp_path), train_dataset=TokenData(4), sam_optimizer=name
        )


def test_sam_kwargs_without_sam_optimizer_refused(tmp_path):
    model = tiny_gpt2()
    opt = O.SAM(model.parameters(), torch.optim.SGD, lr=LR)
    with pytest.raises(ValueError, match="sam_kwargs without sam_optimizer"):
        SharpnessAwareTrainer(
            model=model,
            args=targs(tmp_path),
            train_dataset=TokenData(4),
            optimizers=(opt, None),
            sam_kwargs={"rho": 0.1},
        )


def test_gsam_rho_follows_the_trainers_warmup(tmp_path):
    data = TokenData(20)

    def gsam(model):
        return O.GSAM(
            model.parameters(), torch.optim.SGD, rho_max=0.2, rho_min=0.0, lr=LR, momentum=0.9
        )

    model = tiny_gpt2()
    args = targs(tmp_path, lr_scheduler_type="linear", warmup_steps=2, max_steps=5)
    SharpnessAwareTrainer(
        model=model, args=args, train_dataset=data, optimizers=(gsam(model), None)
    ).train()
    ref = tiny_gpt2()
    opt = gsam(ref)
    sched = get_linear_schedule_with_warmup(opt, 2, 5)
    plain_steps(ref, opt, data, 5, sched=sched)
    assert max_diff(model, ref) < 1e-6


@pytest.mark.parametrize("name", ["sam", "momentum_sam"])
def test_trainer_resume_equals_uninterrupted(tmp_path, name):
    data = TokenData(16)
    kw = {"momentum": 0.9, **({"rho": 0.5} if name == "momentum_sam" else {})}

    def trainer(out, **extra):
        model = tiny_gpt2()
        args = targs(
            out, save_strategy="steps", save_steps=2, lr_scheduler_type="linear", warmup_steps=1
        )
        return model, SharpnessAwareTrainer(
            model=model, args=args, train_dataset=data, sam_optimizer=name, sam_kwargs=kw
        )

    full, tr = trainer(tmp_path / "a")
    tr.train()
    resumed, tr = trainer(tmp_path / "b")
    tr.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert max_diff(full, resumed) == 0.0
    saved = torch.load(tmp_path / "a" / "checkpoint-2" / "optimizer.pt", weights_only=True)
    assert all("momentum_buffer" in v for v in saved["state"].values())


@pytest.mark.parametrize("micro", [2, 1])
def test_agnostic_sam_splits_the_accumulated_batch(tmp_path, micro):
    # The parts are those of the whole accumulated batch (as every other pass is its
    # gradient): per-micro-batch splits differed from the big batch, and micro-batches of
    # one sample were refused ("Invalid batch size: 1").
    data = TokenData(12)

    def agnostic(model):
        return O.AgnosticSAM(model.parameters(), torch.optim.SGD, lr=LR, model=model)

    model = tiny_gpt2()
    args = targs(
        tmp_path,
        max_steps=3,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=4 // micro,
    )
    SharpnessAwareTrainer(
        model=model, args=args, train_dataset=data, optimizers=(agnostic(model), None)
    ).train()
    ref = tiny_gpt2()
    opt = agnostic(ref)
    plain_steps(ref, opt, data, 3)
    assert max_diff(model, ref) < 1e-6


def test_trainer_gives_asam_the_names_of_the_model(tmp_path):
    # ASAM built without model= (a warning: names unknown, the "dim" rule) is given the
    # model by the Trainer; its T must then follow the names (LayerNorm scales are
    # "weight"s), as for ASAM(..., model=model). The names stayed unknown.
    data = TokenData(12)
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match="have no name"):
        opt = O.ASAM(model.parameters(), torch.optim.SGD, lr=LR, rho=2.0)
    SharpnessAwareTrainer(
        model=model, args=targs(tmp_path, max_steps=3), train_dataset=data, optimizers=(opt, None)
    ).train()
    ref = tiny_gpt2()
    ro = O.ASAM(ref.parameters(), torch.optim.SGD, lr=LR, rho=2.0, model=ref)
    plain_steps(ref, ro, data, 3)
    assert max_diff(model, ref) < 1e-6


def test_lightning_callback_gives_asam_the_names_of_the_module():
    pytest.importorskip("lightning.pytorch")
    import test_integrations_lightning as tl

    module = tl.Module("asam")  # configure_optimizers: no model=, the callback sets it
    tl.fit(module)  # (ASAM warns at construction that it knows no names yet)
    # the BatchNorm scale is a "weight": T = |θ| + eta, as with ASAM(..., model=model)
    assert tl.max_diff(module.net, tl.plain_loop("asam")) < 1e-6


@pytest.mark.parametrize("swap", ["swapped", "model_twice"])
def test_batch_closure_refuses_a_model_for_the_optimizer(swap):
    # swapped: a TypeError deep in the batch adapter; the model twice: ran, silently
    from optimizers.integrations import batch_closure

    net = torch.nn.Linear(4, 3)
    opt = O.SAM(net.parameters(), torch.optim.SGD, lr=0.1, model=net)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    args = (net, opt) if swap == "swapped" else (net, net)
    with pytest.raises(ValueError, match=r"Invalid (optimizer|model)"):
        batch_closure(*args, (x, y))


def test_a_second_trainer_on_the_same_optimizer_replaces_the_first(tmp_path):
    # The first Trainer's clipping hook stayed on the base optimizer: a second Trainer
    # with max_grad_norm=0 still clipped the direction to the first one's 1e-3.
    data = TokenData(8)
    model = tiny_gpt2()
    opt = O.SAM(model.parameters(), torch.optim.SGD, lr=LR, rho=0.05, model=model)
    first = targs(tmp_path, max_steps=1, max_grad_norm=1e-3)
    SharpnessAwareTrainer(model=model, args=first, train_dataset=data, optimizers=(opt, None))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SharpnessAwareTrainer(
        model=model, args=targs(tmp_path, max_steps=1), train_dataset=data, optimizers=(opt, None)
    )
    trainer.train()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    (norm,) = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    assert norm > 0.1
    assert step.norm().item() / LR == pytest.approx(norm, rel=1e-4)  # SGD: Δθ = −lr·d


class _Interrupted(Exception):
    pass


class _FailOnce(SharpnessAwareTrainer):
    """Raises (as a KeyboardInterrupt or an OOM would) in the forward of call ``fail_at``."""

    fail_at = 0

    def compute_loss(self, model, inputs, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.fail_at:
            raise _Interrupted
        return super().compute_loss(model, inputs, **kwargs)


@pytest.mark.parametrize(("name", "fail_at", "steps"), [("momentum_sam", 3, 2), ("sam", 2, 1)])
def test_an_interrupted_step_leaves_theta_and_no_stale_micro_batch(tmp_path, name, fail_at, steps):
    # Momentum-SAM's weights stayed at the perturbed point after an exception in the
    # Trainer's forward (seen by evaluate/save_model); any optimizer kept the
    # interrupted micro-batches and replayed them in the next step.
    data = TokenData(8)
    model = tiny_gpt2()
    opt = O.build_optimizer(name, model.parameters(), model=model, lr=LR, rho=0.5)
    args = targs(
        tmp_path, max_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    trainer = _FailOnce(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    trainer.fail_at = fail_at
    ref = tiny_gpt2()
    ro = O.build_optimizer(name, ref.parameters(), model=ref, lr=LR, rho=0.5)

    done = (fail_at - 1) // 2  # the steps completed before the failure
    with pytest.raises(_Interrupted):
        trainer.train()
    plain_steps(ref, ro, data, done)
    assert max_diff(model, ref) < 1e-6  # at θ after the steps done
    trainer.train()  # the run again, from its first batch
    plain_steps(ref, ro, data, steps)
    assert max_diff(model, ref) < 1e-6


def test_agnostic_sam_step_of_one_sample_gives_trainer_advice(tmp_path):
    # The optimizer's own message advised val_closure=, which a Trainer user cannot pass
    model = tiny_gpt2()
    opt = O.AgnosticSAM(model.parameters(), torch.optim.SGD, lr=LR, model=model)
    args = targs(tmp_path, max_steps=1, per_device_train_batch_size=1)
    trainer = SharpnessAwareTrainer(
        model=model, args=args, train_dataset=TokenData(4), optimizers=(opt, None)
    )
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        trainer.train()
    assert max_diff(model, tiny_gpt2()) == 0.0


def test_lightning_accumulation_scheduled_later_is_refused():
    # GradientAccumulationScheduler raises accumulate_grad_batches at an epoch start,
    # after the callback's check at the start of fit: the run went on silently, each
    # step's extra passes on the last micro-batch only.
    L = pytest.importorskip("lightning.pytorch")
    import test_integrations_lightning as tl

    callbacks = [
        tl.SharpnessAwareCallback(),
        L.callbacks.GradientAccumulationScheduler(scheduling={1: 2}),
    ]
    with pytest.raises(ValueError, match="Invalid accumulate_grad_batches: 2"):
        tl.fit(tl.Module("sam"), max_steps=6, callbacks=callbacks)
