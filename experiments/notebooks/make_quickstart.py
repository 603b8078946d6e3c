"""Writes ``quickstart.ipynb`` (kept as code so the notebook's source is reviewable; run after editing)."""

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

#: Where pip installs the package from when the notebook's kernel lacks it (Colab, a fresh machine). The README's
#: "Open in Colab" link points to the same repository; a fork changes both (see docs in the README).
SOURCE = "git+https://github.com/seqcsist-jax/seqcsist-jax"

CELLS = [
    new_markdown_cell(
        "# seqcsist-jax quickstart\n\n"
        "Sequential closely-spaced infrared small-target unmixing: recover every target's sub-pixel position and "
        "brightness from 20 frames of 11×11 pixels. This notebook builds the `seqcsist/mini` dataset, trains "
        "DeRefNet briefly on the CPU, evaluates it with the paper's CSO-mAP protocol, and then decodes the same "
        "frames with the continuous trajectory fit.\n\n"
        "The first cell installs the package when the kernel does not have it (Colab, a fresh machine) from "
        "`SOURCE`: this repository on GitHub. For a fork or a branch set `SOURCE` to "
        "`git+https://github.com/<owner>/seqcsist-jax@<branch>`, for a local clone to `file:///path/to/clone`. "
        "In a checkout with `pip install -e .` nothing is installed."
    ),
    new_code_cell(
        f"SOURCE = {SOURCE!r}  # pip source of the package when it is missing\n"
        "import importlib.util, subprocess, sys\n"
        "if importlib.util.find_spec('seqcsist_jax') is None:\n"
        "    # No [tf] extra: tfds.data_source reads the data without TensorFlow (Colab ships its own TF anyway).\n"
        "    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', f'seqcsist-jax @ {SOURCE}'], check=True)\n"
        "    importlib.invalidate_caches()\n"
        "# Progress: one tqdm widget per loop where ipywidgets exists (Colab has it). Without it tqdm.auto warns\n"
        "# (also when TFDS merely imports it) and would print every refresh as a new output: bars are then off and\n"
        "# the runs print only their periodic lines.\n"
        "PROGRESS = importlib.util.find_spec('ipywidgets') is not None\n"
        "if not PROGRESS:\n"
        "    import warnings\n"
        "    warnings.filterwarnings('ignore', message='IProgress not found')"
    ),
    new_code_cell(
        "import os, pathlib, json\n"
        "import numpy as np\n"
        "import jax\n"
        "import seqcsist_jax  # registers the `seqcsist` TFDS builder\n"
        "from experiments import configs\n"
        "from seqcsist_jax.train import train_and_evaluate\n\n"
        "# SEQCSIST_NOTEBOOK_SMOKE=1 (set by the test suite) swaps in tiny in-memory data and a few steps.\n"
        "SMOKE = os.environ.get('SEQCSIST_NOTEBOOK_SMOKE') == '1'\n"
        "WORKDIR = pathlib.Path(os.environ.get('SEQCSIST_NOTEBOOK_WORKDIR', 'workdirs/notebook'))\n"
        "DATA_DIR = os.environ.get('SEQCSIST_NOTEBOOK_DATA_DIR')  # None: the usual ~/tensorflow_datasets\n"
        "print(jax.devices())"
    ),
    new_markdown_cell(
        "## The data\n`tfds.data_source` reads the prepared dataset without TensorFlow; the simulator builds it "
        "on first use (seconds for `mini`). Each example is one 20-frame trajectory."
    ),
    new_code_cell(
        "import tensorflow_datasets as tfds\n"
        "import matplotlib.pyplot as plt\n"
        "if not PROGRESS:\n"
        "    tfds.disable_progress_bar()  # see the first cell\n"
        "if SMOKE:\n"
        "    from seqcsist_jax.data.simulate import simulate_seqcsist\n"
        "    example = {k: v[0] for k, v in simulate_seqcsist(1, seed=0).items()}\n"
        "else:\n"
        "    builder = tfds.builder('seqcsist/mini', data_dir=DATA_DIR)\n"
        "    builder.download_and_prepare()\n"
        "    source = tfds.data_source('seqcsist/mini', split='train', data_dir=DATA_DIR)\n"
        "    print(len(source), 'training trajectories')\n"
        "    example = source[0]\n"
        "fig, axes = plt.subplots(1, 5, figsize=(12, 2.6))\n"
        "for ax, t in zip(axes, range(0, 20, 4)):\n"
        "    ax.imshow(example['frames'][t], cmap='gray')\n"
        "    tg = example['targets'][t]; tg = tg[tg[:, 2] > 0]\n"
        "    ax.scatter(tg[:, 1], tg[:, 0], marker='+', c='lime')\n"
        "    ax.set_title(f'frame {t}'); ax.axis('off')\n"
        "plt.show()"
    ),
    new_markdown_cell(
        "## Train\n`derefnet:quick` is the paper's architecture with fewer stages, trained for two epochs of "
        "`seqcsist/mini` (5–12 minutes on 2 CPU cores, depending on the machine's load). The call resumes "
        "automatically if the workdir already holds a run."
    ),
    new_code_cell(
        "config = configs.get_config('derefnet:smoke' if SMOKE else 'derefnet:quick')\n"
        "config.progress_bar = PROGRESS  # one bar (see the first cell)\n"
        "if DATA_DIR:\n"
        "    config.dataset.data_dir = DATA_DIR\n"
        "result = train_and_evaluate(config, WORKDIR)\n"
        "print('best validation CSO-mAP', round(100 * result['best']['mAP'], 2))\n"
        "print('test CSO-mAP', round(100 * result['test']['mAP'], 2))"
    ),
    new_markdown_cell("## Look at the results\nFigures written by the evaluation under `WORKDIR/eval/test/`."),
    new_code_cell(
        "from IPython.display import Image, display\n"
        "for name in ('samples.png', 'pr_curves.png', 'loss_curves.png'):\n"
        "    display(Image(filename=str(WORKDIR / 'eval' / 'test' / name)))"
    ),
    new_markdown_cell(
        "## Beyond the grid: continuous decoding\nThe paper protocol snaps detections to the 1/3-px grid. "
        "`seqcsist_jax.decode` fits the imaging model to the frames instead; `trajectory` fits each target's "
        "path over all 20 frames. Two warnings are expected on this data: `SaturationWarning` counts frames with "
        "255-clipped pixels (fitted as censored), and `CountCapWarning` counts frames that chose 4 targets, "
        "SeqCSIST's maximum and the decoder's default `max_targets`."
    ),
    new_code_cell(
        "from seqcsist_jax import metrics\n"
        "from seqcsist_jax.decode import decode\n"
        "from seqcsist_jax.data.splits import load_arrays\n"
        "test = load_arrays(config.dataset, config.dataset.test_split)\n"
        "n = 2 if SMOKE else 20\n"
        "frames, targets = test['frames'][:n], test['targets'][:n]\n"
        "T = frames.shape[1]\n"
        "dets = decode(frames, method='trajectory')\n"
        "scored = range(2, T - 2)\n"
        "result = metrics.cso_map([dets[i][t] for i in range(n) for t in scored],\n"
        "                         [targets[i, t] for i in range(n) for t in scored])\n"
        "print(f\"trajectory decoding on {n} test trajectories: CSO-mAP {100 * result['mAP']:.2f}\")"
    ),
]


def main() -> None:
    nb = new_notebook(cells=CELLS)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = pathlib.Path(__file__).with_name("quickstart.ipynb")
    nbformat.write(nb, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
