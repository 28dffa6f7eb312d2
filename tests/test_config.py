"""Configs: presets validate, bad parameters fail fast with the message a user needs."""

import pytest

from gns_utils.experiments.config import ConfigError, make_experiment
from gns_utils.experiments.profiles import PRESETS, experiment_configs, presets


@pytest.mark.parametrize("domain", sorted(PRESETS))
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_every_preset_validates(domain, profile):
    configs = experiment_configs(domain, profile)
    assert configs and all(c.profile == profile for c in configs)
    assert len({c.task for c in configs}) == len(configs)


def test_override_replaces_and_none_keeps():
    (cfg,) = experiment_configs("image", "smoke", batch_sizes=[8, 16, 32, 64], seed=3, goals=None)
    assert cfg.batch_sizes == (8, 16, 32, 64) and cfg.seed == 3
    assert cfg.goals == tuple(presets("image", "smoke")[0]["goals"])


def test_dict_override_merges_key_by_key():
    (cfg,) = experiment_configs("language", "smoke", data_kwargs={"seq_len": 12, "tokenizer": None})
    assert cfg.data_kwargs["seq_len"] == 12
    assert cfg.data_kwargs["tokenizer"] == presets("language", "smoke")[0]["data_kwargs"]["tokenizer"]


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 8}, "unknown parameter 'batch_size'"),
    ({"seed": "1"}, "seed: expected int"),
    ({"batch_sizes": [8, 12, 16]}, "powers of two"),
    ({"batch_sizes": [8, 16]}, "at least 3"),
    ({"optimizer": "lamb"}, "optimizer must be one of"),
    ({"goals": [0.1, 0.2]}, "goals must decrease"),
    ({"device": "gpu"}, "device must be"),
    ({"budget_examples": 4}, "smaller than the largest batch size"),
    ({"lr_star": -1.0}, "lr_star must be > 0"),
    ({"model": "vgg"}, "model must be one of"),
    ({"noise_method": "hessian"}, "noise_method must be one of"),
    ({"model_kwargs": {"depth": 3}}, r"model_kwargs \['depth'\] are not parameters of model 'mlp'"),
])
def test_bad_parameters_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_experiment(presets("image", "smoke")[0], overrides)


def test_autoencoder_arch_is_checked_before_training():
    with pytest.raises(ConfigError, match="arch must be 'conv' or 'mlp'"):
        experiment_configs("autoencoder", "smoke", model_kwargs={"arch": "cnn"})
    (cfg, _) = experiment_configs("autoencoder", "smoke", model_kwargs={"arch": "conv", "latent": 8})
    assert cfg.model_kwargs["arch"] == "conv" and cfg.model_kwargs["width"] == 32  # other keys kept


def test_unknown_task_is_named():
    with pytest.raises(ConfigError, match="unknown tasks"):
        experiment_configs("image", "cpu", tasks=["cifar100"])


def test_run_id_ignores_device_but_not_lr():
    (cfg,) = experiment_configs("image", "smoke")
    a, b = cfg.run(8, 0.1), cfg.run(8, 0.1, device="cpu")
    assert a.run_id == b.run_id
    assert a.run_id != cfg.run(8, 0.2).run_id
    assert cfg.run(8, 0.1).b_noise_examples == 0


def test_configs_are_frozen():
    (cfg,) = experiment_configs("image", "smoke")
    with pytest.raises(Exception):
        cfg.seed = 1
    with pytest.raises(TypeError):
        cfg.model_kwargs["hidden"] = [1]


def test_another_main_seed_moves_the_repeat_seeds_with_it():
    (sgd,) = experiment_configs("image", "cpu", tasks=["fashion_mnist_mlp_sgd"], seed=1000)
    assert (sgd.seed, sgd.seeds) == (1000, (1001, 1002))
    assert experiment_configs("image", "cpu", tasks=["fashion_mnist_mlp_sgd"])[0].seeds == (1, 2)
    assert experiment_configs("image", "cpu", tasks=["fashion_mnist_mlp_sgd"], seed=5, seeds=[9])[0].seeds == (9,)
    assert experiment_configs("image", "cpu", tasks=["fashion_mnist_mlp_adam_beta2_099"], seed=1000)[0].seeds == ()
