"""The commands in the benchmark documents parse: every art-ssni command of benchmarks/*.md
(PAPER.md's 49, among them the heterogeneous-noise rows) and every benchmark script command
of benchmarks/README.md."""

import re
import shlex
from pathlib import Path

from art_ssni.cli import build_parser
from art_ssni.presets import get_preset, list_presets

from tiny import PAPER, ROOT, load_benchmark


def paper_commands() -> list[list[str]]:
    """Every art-ssni command in PAPER.md's bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", PAPER.read_text(), flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            words = shlex.split(command)
            if words and words[0] == "art-ssni":
                commands.append(words[1:])
    return commands


def test_every_paper_command_parses():
    commands = paper_commands()
    assert len(commands) == 49  # 2 stats, 36 table rows, 3 sampler rows, 8 DAC/MANI-Pure rows
    parser = build_parser()
    evaluate, samplers = 0, []
    for words in commands:
        args = parser.parse_args(words)
        if args.command == "evaluate":
            evaluate += 1
            assert args.runs == 3 and args.preset in list_presets()
            if args.preset == "cifar10-sampler":
                samplers.append(args.sampler)
    assert evaluate == 47
    assert samplers == list(get_preset("cifar10-sampler").samplers)


def test_paper_commands_for_the_heterogeneous_methods_parse():
    import re
    import shlex

    from art_ssni.cli import build_parser

    text = PAPER.read_text()
    section = text.split("#### Heterogeneous-noise methods")[1].split("## The settings")[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = block.replace("\\\n", " ").strip().splitlines()
    assert len(commands) == 8
    parser = build_parser()
    seen = set()
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "art-ssni"
        args = parser.parse_args(words[1:])
        seen.add((args.preset, args.method, tuple(args.noises)))
    assert {(p, m) for p, m, _ in seen} == {
        (p, m) for p in ("cifar10-linf", "imagenet-linf") for m in ("dac", "mani-pure")
    }


def test_benchmark_readme_commands_parse() -> None:
    text = (ROOT / "benchmarks" / "README.md").read_text()
    commands = re.findall(
        r"^(?:OMP_NUM_THREADS=\d+ )?\S*python (benchmarks/\S+\.py)(.*)$", text, flags=re.M
    )
    scripts = {script for script, _ in commands}
    assert {"benchmarks/bench_gpu.py", "benchmarks/bench_core.py"} <= scripts
    assert {"benchmarks/train_cifar10.py", "benchmarks/sweep_cifar10.py"} <= scripts
    for script, rest in commands:
        args = shlex.split(rest.split("#")[0])
        module = load_benchmark(Path(script).stem)
        if hasattr(module, "parse_args"):
            module.parse_args(args)


def test_benchmark_documents_art_ssni_commands_parse():
    import shlex

    from art_ssni.cli import build_parser

    commands = []
    for doc in sorted((ROOT / "benchmarks").glob("*.md")):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and (words[0] == "time" or re.fullmatch(r"[A-Z_]+=\S*", words[0])):
                    words = words[1:]
                if words and words[0].endswith("art-ssni"):
                    commands.append(words[1:])
    assert any("cifar10-embedded" in words for words in commands)
    for words in commands:
        build_parser().parse_args(words)
