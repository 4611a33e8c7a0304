"""Issue 9, items 12-14: RobustBench's benchmark runs; ART and torchattacks conventions."""

import subprocess
import sys

import torch

import integrations  # noqa: F401  (installs the autoattack module robustbench imports)
from integrations.autoattack_compat import AutoAttack

from tiny import TinyClassifier


def test_plain_import_robustbench_works_after_importing_integrations():
    code = "import integrations, robustbench, autoattack; print(autoattack.AutoAttack.__module__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "integrations.autoattack_compat"


def test_robustbench_benchmark_runs_standard_autoattack(monkeypatch, tmp_path):
    import robustbench.eval as rb_eval

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 8, 8, generator=g)
    model = TinyClassifier().eval()
    y = model(x).argmax(1)  # every clean example is classified correctly
    monkeypatch.setattr(rb_eval, "load_clean_dataset", lambda *args: (x, y))
    log = tmp_path / "aa.log"
    clean, robust = rb_eval.benchmark(
        model, n_examples=6, dataset="cifar10", threat_model="Linf", eps=0.5, log_path=str(log),
        batch_size=6, device=torch.device("cpu"),
    )  # fmt: skip
    assert clean == 1.0
    assert robust == 0.0  # a linear model at eps 0.5 on [0, 1] images is broken everywhere
    assert log.is_file()


def test_upstream_constructor_and_return_value():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 8, 8, generator=g)
    model = TinyClassifier().eval()
    y = model(x).argmax(1)
    adversary = AutoAttack(
        model, norm="Linf", eps=0.5, version="custom", attacks_to_run=["apgd-ce"], device="cpu"
    )
    adversary.apgd.n_restarts = 1
    x_adv = adversary.run_standard_evaluation(x, y, bs=4)
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape
    assert float((x_adv - x).abs().max()) <= 0.5 + 1e-6
    assert bool((model(x_adv).argmax(1) != y).all())
