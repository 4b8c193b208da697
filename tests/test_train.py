"""The training loop on real (bundled) digits: it learns, distils, checkpoints and resumes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnncompress.data import load_dataset
from cnncompress.models import build_model
from cnncompress.train import TrainConfig, distillation_loss, evaluate, fit
from cnncompress.utils import NO_WEIGHT_DECAY

QUICK = dict(epochs=4, batch_size=64, lr=0.05, augment=False, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def trained(digits):
    train, test = digits
    torch.manual_seed(0)
    model = build_model("digits_cnn", width=8)
    before = evaluate(model, test).top1
    record = fit(model, train, TrainConfig(**QUICK), val=test, progress=False)
    return model, record, before


def test_training_learns_digits(trained, digits):
    model, record, before = trained
    after = evaluate(model, digits[1])
    assert before < 30.0  # an untrained net guesses
    assert after.top1 > 90.0
    assert record.history[-1]["train_loss"] < record.history[0]["train_loss"]
    assert len(record.history) == QUICK["epochs"] and "val_top1" in record.history[-1]


def test_evaluate_reports_consistent_figures(trained, digits):
    model, _, _ = trained
    result = evaluate(model, digits[1], batch_size=17)
    confusion = torch.tensor(result.confusion)
    assert result.n == len(digits[1]) == int(confusion.sum())
    assert result.top1 == pytest.approx(100.0 * confusion.diag().sum().item() / result.n)
    assert result.top5 >= result.top1
    assert confusion.sum(1).tolist() == torch.bincount(digits[1].labels, minlength=10).tolist()


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(8, 10)
    assert distillation_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits, torch.randn(8, 10), 4.0).item() > 0


def test_student_learns_from_the_teacher_alone(trained, digits):
    """With kd_alpha=1 the labels carry no weight: all the student knows comes from the teacher."""
    teacher, _, _ = trained
    torch.manual_seed(0)
    student = build_model("digits_cnn", width=6)
    fit(student, digits[0], TrainConfig(**{**QUICK, "epochs": 8, "kd_alpha": 1.0}), teacher=teacher, progress=False)
    assert evaluate(student, digits[1]).top1 > 80.0


def test_channels_last_trains_the_same_model_and_hands_back_the_ordinary_layout(trained, digits):
    """NHWC is a speed setting only: same steps, same weights up to float rounding, contiguous afterwards."""
    teacher, _, _ = trained
    config = TrainConfig(**{**QUICK, "epochs": 1, "max_batches_per_epoch": 5})
    students = []
    for layout in (False, True):
        torch.manual_seed(0)
        student = build_model("digits_cnn", width=6)
        fit(student, digits[0], TrainConfig(**{**vars(config), "channels_last": layout}), teacher=teacher,
            progress=False)
        students.append(student)
    for module in (*students, teacher):
        assert all(p.is_contiguous() for p in module.parameters())
    for a, b in zip(students[0].parameters(), students[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, digits):
    train = digits[0]
    config = TrainConfig(**{**QUICK, "epochs": 3})
    ckpt = tmp_path / "run.pt"
    steps_per_epoch = train.num_batches(config.batch_size, drop_last=True)
    calls = {"n": 0}

    def crash_in_second_epoch(_model):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(build_model("digits_cnn", width=4), train, config, checkpoint=ckpt,
            after_step=[crash_in_second_epoch], progress=False)
    record = fit(build_model("digits_cnn", width=4), train, config, checkpoint=ckpt, resume=True, progress=False)
    assert record.resumed_from_epoch == 1
    assert [h["epoch"] for h in record.history] == [1, 2, 3]


def test_resume_refuses_a_different_config(tmp_path, digits):
    ckpt = tmp_path / "run.pt"
    model = build_model("digits_cnn", width=4)
    fit(model, digits[0], TrainConfig(**{**QUICK, "epochs": 1}), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different training config"):
        fit(model, digits[0], TrainConfig(**{**QUICK, "epochs": 1, "lr": 0.2}), checkpoint=ckpt, resume=True,
            progress=False)


def test_hooks_run_every_step(digits):
    model = build_model("digits_cnn", width=4)
    seen = []
    penalty = lambda m: 1e-4 * m.bn1.weight.abs().sum()  # noqa: E731  (network-slimming style term)
    config = TrainConfig(**{**QUICK, "epochs": 1, "max_batches_per_epoch": 5})
    fit(model, digits[0], config, loss_terms=[penalty], after_step=[lambda m: seen.append(1)], progress=False)
    assert len(seen) == 5


@pytest.mark.parametrize("bad", [dict(epochs=-1), dict(lr=0.0), dict(lr=float("nan")), dict(optimizer="rmsprop"),
                                 dict(schedule="linear"), dict(label_smoothing=1.0), dict(batch_size=0)])
def test_invalid_configs_are_refused(bad):
    with pytest.raises(ValueError, match="invalid training config"):
        TrainConfig(**bad)


def test_divergence_is_reported(digits):
    model = build_model("digits_cnn", width=4)
    with torch.no_grad():
        model.fc.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="diverged"):
        fit(model, digits[0], TrainConfig(**{**QUICK, "epochs": 1}), progress=False)


class WithMarkedParam(nn.Module):
    """A linear layer plus two parameters that get zero gradients: one marked to skip weight decay."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.marked = nn.Parameter(torch.ones(3))
        self.plain = nn.Parameter(torch.ones(3))
        setattr(self.marked, NO_WEIGHT_DECAY, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) + 0 * (self.marked.sum() + self.plain.sum())


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_marked_parameters_skip_weight_decay(digits, optimizer):
    model = WithMarkedParam()
    config = TrainConfig(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.5, optimizer=optimizer,
                         augment=False, max_batches_per_epoch=3)
    fit(model, digits[0], config, progress=False)
    assert torch.equal(model.marked.detach(), torch.ones(3))
    assert (model.plain.detach() < 1).all()
