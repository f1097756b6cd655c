"""`tinythinker`: one subcommand per DVC stage, each a thin wrapper over a plain function.

Heavy libraries (torch, transformers, datasets, openai) are imported inside the commands, so
`tinythinker --help` starts in about a second.
"""
from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="TinyThinker as a DVC pipeline: dataset -> teacher rationales -> curriculum SFT -> iterative DPO -> test.\n\n"
         "Every command reads params.yaml (validated) and writes the outputs declared in dvc.yaml; "
         "run them through `dvc repro` rather than by hand.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ROOT = typer.Option(Path("."), "--root", help="Repository root holding params.yaml, data/, models/, metrics/.")


def _version(value: bool) -> None:
    if value:
        from . import __version__
        typer.echo(f"tinythinker {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


def _ctx(root: Path):
    from .params import load
    from .paths import Paths

    paths = Paths(root)
    return load(paths.params), paths


def _run(fn, *args) -> None:
    """Expected failures end with one clear line and exit code 2, never a traceback: bad params or data
    (the message names key, file, line) and what the system refuses (permission denied, disk full), named by path."""
    from .io import DataError, Interrupted, describe_os_error
    from .params import ParamsError

    try:
        fn(*args)
    except (ParamsError, DataError) as e:
        _fail(str(e))
    except OSError as e:
        _fail(describe_os_error(e))
    except Interrupted as e:  # Ctrl-C / SIGTERM: 130 / 143, as the shell reports a process the signal ended
        _fail(str(e), e.code)


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {' '.join(message.splitlines())}", fg="red", err=True)
    sys.exit(code)


@app.command()
def download(root: Path = ROOT) -> None:
    """Fetch the dataset named by `dataset.name` (Hub or `dataset.source`; synthetic is generated) into data/raw."""
    from .data.download import download as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def prepare(root: Path = ROOT) -> None:
    """Seeded train/valid/test splits with their ids saved, into data/prepared."""
    from .data.prepare import prepare as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def corpus(root: Path = ROOT) -> None:
    """The embedded student's pretraining text and fact probe (the synthetic world's facts), into data/corpus."""
    from .data.corpus import corpus as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def prompt(root: Path = ROOT) -> None:
    """One teacher chat request per training question, plus a cost estimate in metrics/teacher_cost.json."""
    from .teacher.prompts import prompt as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def request(root: Path = ROOT,
            dry_run: bool = typer.Option(False, "--dry-run", help="Print what round 1 would send now, its worst-case "
                                         "and expected cost, what this request set has paid and the cap (teacher."
                                         "max_usd); send and write nothing.")) -> None:
    """Ask the teacher (offline or OpenAI-compatible); every response is journaled, a rerun never pays twice."""
    if dry_run:
        from .teacher.request import describe, dry_run as plan
        _run(lambda: typer.echo(describe(plan(*_ctx(root)))))
        return
    from .teacher.request import request as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def build(root: Path = ROOT) -> None:
    """Parse and filter teacher completions into the recall/analyze/summarize stage datasets (and ablations)."""
    from .teacher.build import build as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def tokenizer(root: Path = ROOT) -> None:
    """Train the embedded student's tokenizer on its corpus and the stage datasets, or save the pretrained one."""
    from .student.stages import tokenizer_stage as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def pretrain(root: Path = ROOT) -> None:
    """Pretrain the embedded student on data/corpus (span corruption / next token); a Hub student skips it."""
    from .student.stages import pretrain as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def sft(root: Path = ROOT) -> None:
    """Phase 1: curriculum SFT over recall -> analyze -> summarize; the best checkpoint by validation chain accuracy."""
    from .student.stages import sft as run
    _run(lambda: run(*_ctx(root)))


@app.command("dpo-sample")
def dpo_sample(iteration: str = typer.Argument(..., help="Iteration key of dpo.iterations, e.g. iter1."),
               root: Path = ROOT) -> None:
    """Phase 2: sample the student's own chains on the training questions and build preference pairs."""
    from .reflect.stages import dpo_sample as run
    _run(lambda: run(*_ctx(root), iteration))


@app.command("dpo-train")
def dpo_train(iteration: str = typer.Argument(..., help="Iteration key of dpo.iterations, e.g. iter1."),
              root: Path = ROOT) -> None:
    """Phase 2: DPO (+ NLL on chosen) from the iteration's starting model, which is also the reference."""
    from .reflect.stages import dpo_train as run
    _run(lambda: run(*_ctx(root), iteration))


@app.command()
def test(model: Path = typer.Option(..., help="Checkpoint directory to evaluate."),
         name: str = typer.Option("test", help="Name of the metrics/predictions files written."),
         root: Path = ROOT) -> None:
    """Run the generation chain on the test split; accuracy (and majority vote) to metrics/<name>.json."""
    from .student.stages import test as run
    _run(lambda: run(*_ctx(root), model, name))


@app.command()
def control(iteration: str = typer.Argument(..., help="Iteration key of dpo.iterations, e.g. iter1."),
            root: Path = ROOT) -> None:
    """The iteration's start trained as many steps on its SFT data alone, then tested (with dpo.control: true)."""
    from .results.control import control as run
    _run(lambda: print(_control_line(iteration, run(*_ctx(root), iteration))))


def _control_line(iteration: str, m: dict) -> str:
    if m.get("skipped"):
        return f"{iteration}: no control (dpo.control: false)"
    def pct(x):
        return "–" if x is None else f"{x:.2f}"
    return (f"{iteration}: test {pct(m['start_test_accuracy'])} -> DPO {pct(m['dpo_test_accuracy'])}, control "
            f"{pct(m['control_test_accuracy'])} ({m['control_steps']} steps); over control {pct(m.get('over_control'))}")


@app.command()
def report(root: Path = ROOT) -> None:
    """Headline metrics (metrics/summary.json), the per-model table and metrics/report.md with its pictures."""
    from .results.report import report as run
    _run(lambda: run(*_ctx(root)))


@app.command()
def publish(push: str = typer.Option(None, "--push", metavar="REPO_ID",
                                     help="Upload models/final to this Hub model repo (token from $HF_TOKEN)."),
            private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
            root: Path = ROOT) -> None:
    """models/final = the final model + a Hugging Face model card (README.md); --push uploads it as it is."""
    from .results.publish import publish as run, push as upload

    if push:
        from .paths import Paths
        _run(lambda: typer.echo(upload(Paths(root), push, private)))
    else:
        _run(lambda: run(*_ctx(root)))


@app.command()
def preset(dataset: str = typer.Argument(..., help="csqa, obqa or strategyqa."),
           student: str = typer.Argument(..., help="t5-small, t5-base, t5-large (the paper's students), "
                                         "qwen2.5-0.5b or smollm2-360m (decoder-only; the project's hyperparameters)."),
           write: bool = typer.Option(False, "--write", help="Write the preset into params.yaml."),
           root: Path = ROOT) -> None:
    """The paper's configuration for a dataset x student: prints `dvc exp run` flags, or --write params.yaml.
    Decoder-only students get the project's own hyperparameters where the paper has none (presets.CAUSAL)."""
    import json

    from .params import load
    from .presets import apply, eval_cadence, preset as overrides, resolve

    def run():
        if write:
            p = apply(root / "params.yaml", dataset, student)
            typer.echo(f"params.yaml now holds the {dataset} / {student} preset; run `dvc repro` or `dvc exp run`")
        else:
            p = resolve(load(root / "params.yaml"), dataset, student)
            flags = overrides(dataset, student)
            iters = flags.pop("dpo.iterations")
            flags |= {f"++dpo.iterations.{k}.init": v["init"] for k, v in iters.items()}
            typer.echo(" ".join(f"-S '{k}={json.dumps(v)}'" for k, v in flags.items()))
        # stderr, so `$(tinythinker preset ...)` captures the flags only
        typer.echo(f"sft.eval_every={p.sft.eval_every}: validation every {eval_cadence(p)} SFT steps; "
                   f"dpo.max_questions={json.dumps(p.dpo.max_questions)}: every training question", err=True)
    _run(run)



@app.command("forget-answers")
def forget_answers(dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be forgotten; change nothing."),
                   root: Path = ROOT) -> None:
    """Forget the teacher answers of this request set that gave no valid completion, so the next run asks anew."""
    from .teacher.forget import describe, forget_rejected
    _run(lambda: typer.echo(describe(forget_rejected(*_ctx(root), dry_run))))


seeds_app = typer.Typer(help="The run over several seeds as DVC experiments, and what they reached together.",
                        no_args_is_help=True)
app.add_typer(seeds_app, name="seeds")
SEEDS_NAME = typer.Option("seeds", "--name", help="The experiments are named <name>-<seed>.")


def _seed_list(text: str) -> list[int]:
    from .io import DataError

    try:
        return [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise DataError(f"--seeds: {text!r} is not a comma-separated list of integers (e.g. 42,43,44)") from None


@seeds_app.command("queue")
def seeds_queue(seeds: str = typer.Option(..., "--seeds", help="Comma-separated seeds, e.g. 42,43,44."),
                sets: list[str] = typer.Option([], "--set", "-S", help="A params override as `dvc exp run -S` "
                                               "takes it (repeatable); seed and dataset.seed are set per run."),
                control: bool = typer.Option(True, help="Also train each DPO iteration's control "
                                             "(dpo.control=true): phase 2 against as many more SFT steps."),
                name: str = SEEDS_NAME, root: Path = ROOT) -> None:
    """Queue the run once per seed (`dvc exp run --queue`); then `dvc queue start -j 1`, then `seeds report`."""
    from .results.seeds import queue

    def run():
        names = queue(root, _seed_list(seeds), [f"dpo.control={str(control).lower()}", *sets], name)
        typer.echo(f"queued {', '.join(names)}: `dvc queue start -j 1` runs them one at a time, "
                   f"`tinythinker seeds report --name {name}` aggregates them")
    _run(run)


@seeds_app.command("report")
def seeds_report(name: str = SEEDS_NAME, root: Path = ROOT) -> None:
    """Mean, spread and 95 % interval per model over the finished experiments, and phase 2's gain:
    metrics/seeds.md, metrics/seeds.json, metrics/seeds.png."""
    from .results.seeds import markdown, report

    _run(lambda: typer.echo(markdown(report(root, name), name)))


if __name__ == "__main__":
    app()
