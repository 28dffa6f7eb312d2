"""The paper's networks, with their sizes as parameters.

Every model is built by :func:`build_model` from a name and plain keyword
arguments, so a run's ``config.json`` fully describes its network.

* ``paper_cnn``  MNIST/SVHN CNN of the paper: conv 5×5 (32) + max-pool, conv 5×5 (64)
  + max-pool, fully connected 1024, dropout 0.4, linear classifier.
* ``mlp``        a small multilayer perceptron for quick image runs.
* ``resnet32``   the CIFAR-10 ResNet-32 (He et al. 2016, 3 stages × 5 basic blocks).
* ``lstm_lm``    one-layer LSTM language model (the paper: 2048 units, embedding 512).
* ``autoencoder`` / ``vae``  InfoGAN-style convolutional encoder/decoder, or an MLP
  encoder/decoder (``arch="mlp"``) for CPU-sized runs.
* ``actor_critic``  the A2C policy and value networks: tanh MLPs for classic-control
  observations, or the Nature-DQN convolutional trunk for stacked Atari frames.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PaperCNN(nn.Module):
    """The paper's MNIST/SVHN classifier (Table 1): two conv+pool blocks, FC, dropout.

    Args:
        in_channels: image channels (1 for MNIST, 3 for SVHN).
        n_classes: number of classes.
        image_size: height = width of the input images.
        channels: filters of the two 5×5 convolutions (paper: 32, 64).
        hidden: width of the fully connected layer (paper: 1024).
        dropout: dropout rate before the classifier (paper: 0.4).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        image_size: int = 28,
        channels: tuple[int, int] = (32, 64),
        hidden: int = 1024,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """Flatten, then ``len(hidden)`` ReLU layers and a linear output layer.

    Args:
        in_features: flattened input size (e.g. 784 for 28×28 images).
        n_classes: output size.
        hidden: widths of the hidden layers.
    """

    def __init__(self, in_features: int = 784, n_classes: int = 10, hidden: tuple[int, ...] = (256,)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet of depth 6n+2 (n=5 gives the paper's ResNet-32).

    Args:
        depth: 6n + 2 (20, 32, 44, 56 ...).
        n_classes: number of classes.
        width: channels of the first stage (16 in He et al.).
        in_channels: image channels.
    """

    def __init__(self, depth: int = 32, n_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2 (20, 32, 44, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(_BasicBlock(c_in, c_out, 2 if (stage > 0 and i == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class LSTMLanguageModel(nn.Module):
    """One-layer LSTM language model (paper: 2048 units, embedding 512, BPE 40k).

    Args:
        vocab_size: tokenizer vocabulary size.
        embed_dim: embedding width.
        hidden: LSTM units.
        n_layers: LSTM layers (paper: 1).
    """

    def __init__(self, vocab_size: int, embed_dim: int = 512, hidden: int = 2048, n_layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=n_layers, batch_first=True)
        self.proj = nn.Linear(hidden, embed_dim) if hidden != embed_dim else nn.Identity()
        self.out = nn.Linear(embed_dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of shape [batch, seq, vocab] for next-token prediction."""
        h, _ = self.lstm(self.embed(tokens))
        return self.out(self.proj(h))


def _conv_encoder(in_channels: int, image_size: int, width: int, hidden: int, out: int) -> nn.Module:
    side = image_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.1),
        nn.Flatten(), nn.Linear(2 * width * side * side, hidden), nn.LeakyReLU(0.1),
        nn.Linear(hidden, out),
    )


def _conv_decoder(in_channels: int, image_size: int, width: int, hidden: int, latent: int) -> nn.Module:
    side = image_size // 4
    return nn.Sequential(
        nn.Linear(latent, hidden), nn.ReLU(),
        nn.Linear(hidden, 2 * width * side * side), nn.ReLU(),
        nn.Unflatten(1, (2 * width, side, side)),
        nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, in_channels, 4, 2, 1),
    )


def _mlp(sizes: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


#: Encoder/decoder families of :class:`Autoencoder`.
AUTOENCODER_ARCHS = ("conv", "mlp")


class Autoencoder(nn.Module):
    """Autoencoder or VAE with an InfoGAN-style conv encoder/decoder, or an MLP.

    The decoder outputs logits of pixel intensities in [0, 1].

    Args:
        in_channels: image channels.
        image_size: height = width (divisible by 4 for ``arch="conv"``).
        latent: latent dimension.
        arch: ``"conv"`` (InfoGAN-style: 4×4 stride-2 convs, FC ``hidden``) or ``"mlp"``.
        width: channels of the first conv layer (conv) or hidden width (mlp).
        hidden: width of the fully connected layer.
        variational: a VAE (encoder outputs mean and log-variance) when True.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        latent: int = 16,
        arch: str = "conv",
        width: int = 64,
        hidden: int = 1024,
        variational: bool = False,
    ) -> None:
        super().__init__()
        self.variational = variational
        self.latent = latent
        self.shape = (in_channels, image_size, image_size)
        enc_out = 2 * latent if variational else latent
        if arch == "conv":
            self.encoder = _conv_encoder(in_channels, image_size, width, hidden, enc_out)
            self.decoder = _conv_decoder(in_channels, image_size, width, hidden, latent)
        elif arch == "mlp":
            d = in_channels * image_size * image_size
            self.encoder = nn.Sequential(nn.Flatten(), _mlp([d, width, hidden, enc_out]))
            self.decoder = nn.Sequential(_mlp([latent, hidden, width, d]), nn.Unflatten(1, self.shape))
        else:
            raise ValueError(f"arch must be 'conv' or 'mlp', got {arch!r}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return (reconstruction logits, mu, logvar); mu and logvar are None for a plain AE."""
        h = self.encoder(x)
        if not self.variational:
            return self.decoder(h), None, None
        mu, logvar = h.chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


#: Networks of :class:`ActorCritic`.
ACTOR_CRITIC_ARCHS = ("mlp", "cnn")


class ActorCritic(nn.Module):
    """A2C's policy and value networks: ``model(obs)`` → (action logits [n, A], state values [n]).

    ``arch="mlp"``: separate tanh MLPs (``hidden`` units per layer) for the policy and the value
    (every trainable layer an ``nn.Linear``, so per-frame gradient norms come from the update's
    one backward); ``arch="cnn"``: the Nature-DQN trunk (conv 8×8/4 (32), 4×4/2 (64), 3×3/1 (64),
    fully connected 512) shared by both heads, on stacked 84×84 frames scaled from uint8.
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, arch: str = "mlp",
                 hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.arch, self.obs_shape = arch, tuple(int(d) for d in obs_shape)
        if arch == "mlp":
            sizes = [int(torch.tensor(self.obs_shape).prod()), *hidden]

            def tower(out: int) -> nn.Sequential:
                layers: list[nn.Module] = []
                for a, b in zip(sizes, sizes[1:]):
                    layers += [nn.Linear(a, b), nn.Tanh()]
                return nn.Sequential(*layers, nn.Linear(sizes[-1], out))

            self.policy, self.value = tower(n_actions), tower(1)
        elif arch == "cnn":
            channels, height, width = self.obs_shape
            self.trunk = nn.Sequential(
                nn.Conv2d(channels, 32, 8, stride=4), nn.ReLU(), nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(), nn.Flatten())
            with torch.no_grad():
                features = self.trunk(torch.zeros(1, channels, height, width)).shape[1]
            self.trunk.append(nn.Linear(features, 512))
            self.trunk.append(nn.ReLU())
            self.policy, self.value = nn.Linear(512, n_actions), nn.Linear(512, 1)
        else:
            raise ValueError(f"arch must be 'mlp' or 'cnn', got {arch!r}")

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations with any leading dimensions ([n] or [n, k] frames) → logits [..., A], values [...]."""
        lead = obs.shape[: obs.dim() - len(self.obs_shape)]
        if self.arch == "cnn":
            features = self.trunk(obs.reshape(-1, *self.obs_shape).float() / 255.0)
            return self.policy(features).reshape(*lead, -1), self.value(features).reshape(lead)
        x = obs.float().reshape(*lead, -1)  # an MLP keeps [n, k, features]: per-example norms per segment
        return self.policy(x), self.value(x).squeeze(-1)


class LinearRegression(nn.Linear):
    """``ŷ = wᵀx`` without a bias, started at ``w = 0``: the model of the noisy linear regression
    calibration task (quadratic loss, so ``H``, ``G`` and ``Σ`` are known in closed form)."""

    def __init__(self, in_features: int) -> None:
        super().__init__(in_features, 1, bias=False)
        nn.init.zeros_(self.weight)


MODELS = {
    "paper_cnn": PaperCNN,
    "mlp": MLP,
    "resnet32": ResNetCifar,
    "lstm_lm": LSTMLanguageModel,
    "autoencoder": Autoencoder,
    "vae": lambda **kw: Autoencoder(variational=True, **kw),
    "linear": LinearRegression,
    "actor_critic": ActorCritic,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registry name with plain keyword arguments.

    Raises:
        ValueError: unknown name or arguments the model does not take.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return MODELS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for model {name!r}: {err}") from err


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["PaperCNN", "MLP", "LinearRegression", "ResNetCifar", "LSTMLanguageModel", "Autoencoder", "AUTOENCODER_ARCHS", "ACTOR_CRITIC_ARCHS", "ActorCritic", "build_model", "count_parameters", "MODELS"]
