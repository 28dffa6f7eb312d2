"""The Hugging Face Trainer callback: B_simple in the Trainer's logs, with gradient accumulation (offline)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")  # an optional extra: pip install "gns_utils[hf]"

from gns_utils.huggingface import NoiseScaleCallback  # noqa: E402


def _trainer(tmp_path, accumulation):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)  # built from a config: nothing downloaded
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (48, 12), generator=gen)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                                          gradient_accumulation_steps=accumulation, logging_steps=1, report_to=[],
                                          use_cpu=True, save_strategy="no", learning_rate=1e-3, max_grad_norm=1.0,
                                          disable_tqdm=True)
    return transformers.Trainer(model=model, args=args, train_dataset=data)


def test_b_simple_reaches_the_trainers_logs_with_accumulation(tmp_path):
    trainer = _trainer(tmp_path, accumulation=2)
    callback = NoiseScaleCallback(units="tokens").attach(trainer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "gns/trace_sigma" in entry]
    assert len(logged) == 4 and callback.ema.count == 4
    assert all(entry["gns/trace_sigma"] > 0 for entry in logged)
    assert callback.monitor.n_steps == 4 and callback.monitor.n_too_few == 0


def test_without_accumulation_the_callback_says_what_to_do(tmp_path):
    trainer = _trainer(tmp_path, accumulation=1)
    NoiseScaleCallback().attach(trainer)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        trainer.train()


def _resumable(tmp_path, max_steps):
    trainer = _trainer(tmp_path, accumulation=2)
    trainer.args.max_steps, trainer.args.save_strategy, trainer.args.save_steps = max_steps, "steps", 3
    return trainer


def test_a_resumed_run_restores_the_noise_scale_state_and_goes_on_from_it(tmp_path):
    full = _resumable(tmp_path / "full", 6)
    uninterrupted = NoiseScaleCallback(units="tokens").attach(full)
    full.train()

    first = _resumable(tmp_path / "resumed", 3)  # stops at step 3, saving checkpoint-3
    before = NoiseScaleCallback(units="tokens").attach(first)
    first.train()
    saved = before.state_dict()

    second = _resumable(tmp_path / "resumed", 6)
    resumed = NoiseScaleCallback(units="tokens").attach(second)
    restored = []
    load = resumed.load_state_dict
    resumed.load_state_dict = lambda state: (load(state), restored.append(resumed.state_dict()))
    second.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert restored == [saved]  # every number of the averages and counters, as saved at step 3
    assert resumed.ema.count == uninterrupted.ema.count == 6 and resumed.monitor.n_steps == 6
    # the Trainer's resumed trajectory is not bit for bit the uninterrupted one's (its losses differ in the
    # last digits), so B_simple is compared within a few per cent
    assert resumed.ema.b_simple == pytest.approx(uninterrupted.ema.b_simple, rel=0.05)


def test_tokens_count_the_labels_that_carry_loss(tmp_path, monkeypatch):
    from gns_utils.noise import GradientNoiseMonitor

    trainer = _trainer(tmp_path, accumulation=2)
    for row in trainer.train_dataset:  # the last 3 positions of every sequence are padding the loss ignores
        row["labels"] = row["labels"].clone()
        row["labels"][-3:] = -100
    callback = NoiseScaleCallback(units="tokens").attach(trainer)
    seen, record = [], GradientNoiseMonitor.after_micro_batch
    monkeypatch.setattr(GradientNoiseMonitor, "after_micro_batch",
                        lambda self, units=None, **k: (seen.append(units), record(self, units, **k))[1])
    trainer.train()
    # 4 sequences per micro-batch, each predicting positions 1..8 (12 tokens, the first is predicted by
    # nothing, the last 3 carry no label): 4 x 8 tokens
    assert seen and all(units == 4 * 8 for units in seen)
    assert callback.monitor.n_steps == 4


def test_loss_tokens_without_labels_counts_the_attention_mask():
    from gns_utils.huggingface import loss_tokens

    ids, mask = torch.zeros(2, 5, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert loss_tokens(torch.nn.Linear(1, 1), ids, mask) == 8
    assert loss_tokens(torch.nn.Linear(1, 1), ids) == 10
    assert loss_tokens(torch.nn.Linear(1, 1), ids, labels=torch.tensor([[1, -100, 2]])) == 2
