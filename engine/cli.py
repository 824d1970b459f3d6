"""`python -m engine ...`: compose, render, prompts, doctor, dataset, train, train-dpo, finetune, audio."""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import re
import signal
import sys
import tempfile
import threading
from pathlib import Path

import torch
from tqdm import tqdm

from engine import __version__, api, placement
from engine.audio.musicgen import AudioSettings
from engine.data import build as data
from engine.data.build import read_split
from engine.devices import inventory
from engine.errors import CadenzaError, SettingsError
from engine.render.pipeline import FORMATS, RenderOptions
from engine.requests import AudioRequest, ComposeRequest
from engine.symbolic.config import NotaGenConfig
from engine.symbolic.controls import Controls
from engine.symbolic.grow import deepen
from engine.symbolic.prompts import check_field
from engine.symbolic.reference import ReferenceBackend
from engine.symbolic.generate import PatchEvent
from engine.symbolic.sampling import SamplingSettings
from engine.symbolic import dpo, passage
from engine.symbolic.checkpoint import save_model
from engine.symbolic.dpo import DpoConfig
from engine.symbolic.train import TrainConfig, new_model, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Cadenza: compose sheet music with NotaGen-style models.")
    sub = p.add_subparsers(dest="command", required=True)

    _add_compose(sub)

    r = sub.add_parser("render", help="turn an ABC or MusicXML file into MusicXML, MIDI, WAV, SVG, PDF, PNG and a ZIP")
    r.add_argument("file", help="FILE.abc, FILE.musicxml, FILE.xml, FILE.mxl or FILE.mid")
    r.add_argument("-o", "--out", default="outputs", help="folder for the files (default ./outputs)")
    r.add_argument("--transpose", default=None, metavar="KEY",
                   help="move the score to this key first (D, Bb, F#m ...; the score's mode is kept)")
    _format_args(r)

    pr = sub.add_parser("prompts", help="list the period / composer / instrumentation combinations a model knows")
    _model_args(pr)
    pr.add_argument("--json", action="store_true", help="print JSON instead of a list")

    d = sub.add_parser("doctor", help="report Python, torch, GPUs, the model files found and where a model would be placed")
    d.add_argument("--model", default=None, help="the model to plan for (default: the bundled model)")
    _placement_args(d)
    d.add_argument("--batch", type=int, default=1, help="pieces generated together, for the KV-cache estimate")

    _add_training(sub)

    a = sub.add_parser("audio", help="text (and a melody) to audio with MusicGen (weights: Hugging Face cache or a folder)")
    a.add_argument("prompt", help="what the music is like, e.g. 'warm string quartet, slow'")
    a.add_argument("--melody", default=None, help="an audio file to follow (WAV, FLAC, OGG, MP3); needs a melody model")
    _audio_options(a)
    pf = sub.add_parser("perform", help="a score (ABC or MusicXML) played by a MusicGen melody model in a style")
    pf.add_argument("score", help="the score: .abc, .musicxml, .xml, .mxl or .mid")
    pf.add_argument("style", help="how it is played, e.g. 'string quartet, warm hall'")
    _audio_options(pf, default_model="facebook/musicgen-melody", default_duration=30.0)
    return p


def _add_compose(sub) -> None:
    c = sub.add_parser("compose", help="write a piece for a period, composer and instrumentation")
    c.add_argument("--period", required=True, help="e.g. Baroque")
    c.add_argument("--composer", required=True, help="e.g. 'Bach, Johann Sebastian'")
    c.add_argument("--instrumentation", required=True, help="e.g. Keyboard")
    _model_args(c)
    c.add_argument("--seed", type=int, default=None, help="repeat a piece with the same seed (default: random, printed)")
    d, r = SamplingSettings, ComposeRequest  # the defaults live in the request's fields
    c.add_argument("--top-k", type=int, default=d.top_k, help=f"keep the k most likely characters (default {d.top_k}; 0 = off)")
    c.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus mass kept after top-k (default {d.top_p})")
    c.add_argument("--temperature", type=float, default=d.temperature,
                   help=f"applied after top-k and top-p (default {d.temperature}; 0 = greedy)")
    c.add_argument("--max-patches", type=int, default=r.max_patches,
                   help=f"stop after this many patches of 16 characters (default {r.max_patches})")
    c.add_argument("--max-seconds", type=float, default=r.max_seconds,
                   help=f"stop after this many seconds (default {r.max_seconds:g})")
    c.add_argument("--variations", type=int, default=r.variations,
                   help="pieces written together in one batch (seeds seed, seed+1, ...)")
    c.add_argument("--bar-retries", type=int, default=r.bar_retries,
                   help=f"times a bar whose voices disagree in length is written again (default {r.bar_retries}; "
                        "0 = NotaGen's sampling)")
    c.add_argument("--header-retries", type=int, default=r.header_retries,
                   help=f"times a header with an unusual number of voices for the prompt is written again "
                        f"(default {r.header_retries})")
    c.add_argument("--critic", choices=["on", "off"], default="on" if r.critic else "off",
                   help="the musical critic writes again bars of several voices that fit no chord or move in "
                        "parallel fifths or octaves, where the prompt's real music does not (default on)")
    c.add_argument("--search", type=int, default=r.search,
                   help=f"candidates written at once for each bar the rules check, the best kept; each is a row "
                        f"of the batch; searching by voice, the voices above the lowest write half as many "
                        f"(default {r.search}; 1 = one at a time, then retries)")
    c.add_argument("--search-by", choices=["line", "voice"], default=r.search_by,
                   help="what a candidate of the search is: a whole bar of every voice (line), or one voice's "
                        f"bar, each voice chosen in turn over those above it (voice) (default {r.search_by})")
    c.add_argument("--bars", type=int, default=None, help="the piece's length in bars (default: the model decides)")
    c.add_argument("--key", default=None, help="an ABC key: D, Bb, F#m, Dmin, 'Eb dorian' (default: the model's)")
    c.add_argument("--meter", default=None, help="3/4, 6/8, C, C| ... (default: the model's)")
    c.add_argument("--tempo", type=int, default=None, help="quarter notes per minute (default: the model's)")
    c.add_argument("--from-score", default=None, metavar="FILE",
                   help="continue this score (.abc, .musicxml, .xml, .mxl, .mid) instead of starting a new piece")
    c.add_argument("--rewrite-from", type=int, default=None, metavar="N",
                   help="(with --from-score) keep the bars before bar N and write the rest again; bars are "
                        "numbered as printed (a pickup is bar 0)")
    c.add_argument("--rewrite", default=None, metavar="N-M",
                   help="(with --from-score) write bars N to M again and keep every other bar as it is: "
                        "--candidates of them written at once, the one the kept bars follow best kept")
    c.add_argument("--candidates", type=int, default=None,
                   help="(with --rewrite) candidates of the passage written at once, each a row of the batch "
                        f"(default {passage.CANDIDATES})")
    c.add_argument("--harmonise", default=None, metavar="FILE",
                   help="harmonise this melody (one voice: .abc, .musicxml, .xml, .mxl, .mid) in the style given: "
                        "its bars are the first voice, the model writes the others")
    c.add_argument("--voice", type=int, default=None,
                   help="(with --harmonise) the voice of a score of several to harmonise: 1, 2, ... in the order "
                        "of its parts")
    c.add_argument("--decode", choices=api.DECODE_MODES, default="auto",
                   help="character steps compiled with torch.compile (seconds to compile once) or eager "
                        "(default auto: compiled on CUDA, eager on the CPU)")
    c.add_argument("--mode", choices=["fast", "reference"], default="fast", help=argparse.SUPPRESS)
    c.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="write on Ray Serve replicas: a local Ray (--ray) or a cluster's (--ray ADDRESS), using the "
                        "model's application when one runs there (see the README)")
    c.add_argument("-o", "--out", default="outputs", help="folder for the files (default ./outputs)")
    c.add_argument("--quiet", action="store_true", help="do not stream the ABC to the terminal")
    _placement_args(c)
    _format_args(c)


def _add_training(sub) -> None:
    """dataset, train, finetune."""
    d = sub.add_parser("dataset", help="build training data in NotaGen's format")
    d.add_argument("action", choices=["build", "folder"], help="build: music21's corpus; folder: your own scores")
    d.add_argument("folder", nargs="?", help="(folder) a folder of .musicxml/.mxl/.xml/.abc files")
    d.add_argument("--out", default="data/corpus", help="where the dataset goes (default data/corpus)")
    d.add_argument("--workers", type=int, default=2, help="parallel conversions (default 2)")
    d.add_argument("--transpose", default="-2,2", help="semitone shifts added to the training split (default -2,2; '' for none)")
    d.add_argument("--cap-scale", type=float, default=1.0, help="(build) scale the per-folder caps of assets/corpus_labels.json")
    d.add_argument("--period", help="(folder) label for every piece, e.g. Romantic")
    d.add_argument("--composer", help="(folder) label for every piece, e.g. 'Hensel, Fanny'")
    d.add_argument("--instrumentation", help="(folder) label for every piece (default: decided from the parts)")

    t = sub.add_parser("train", help="train a model from scratch or from a checkpoint (ours or NotaGen's)")
    t.add_argument("--data", required=True, help="a dataset folder (train.jsonl.gz, val.jsonl.gz)")
    t.add_argument("--out", required=True, help="model folder to write (and resume from)")
    t.add_argument("--init", default=None, help="start from this model (Cadenza folder or NotaGen .pth)")
    t.add_argument("--hidden", type=int, default=256, help="(from scratch) hidden size, a multiple of 64")
    t.add_argument("--patch-layers", type=int, default=None,
                   help="patch-level decoder layers (from scratch, default 6; with --init, grow the model to this depth: "
                        "its blocks are spread out and the new ones start as the identity)")
    t.add_argument("--char-layers", type=int, default=None,
                   help="character-level decoder layers (from scratch, default 2; with --init, grow as --patch-layers)")
    t.add_argument("--patch-length", type=int, default=512, help="(from scratch) context in patches")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=8, help="pieces per step")
    t.add_argument("--patch-sampling", type=int, default=TrainConfig.patch_sampling,
                   help="patches per step the character decoder learns from (NotaGen's patch sampling)")
    t.add_argument("--max-minutes", type=float, default=None,
                   help="stop with a checkpoint after this many minutes (resume later with the same command)")
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    t.add_argument("--balance", type=float, default=0.0,
                   help="0: draw pieces as the data has them; 1: every label equally often (between: in part)")
    t.add_argument("--fresh", action="store_true", help="ignore a checkpoint already in --out")
    t.add_argument("--only-data-prompts", action="store_true",
                   help="(with --init) the prompt table lists the dataset's labels only, not the --init model's too "
                        "(for a dataset whose labels replace the model's)")
    t.add_argument("--device", default="auto")
    t.add_argument("--name", default=None, help="the model's name in manifests")

    o = sub.add_parser("train-dpo", help="preference tuning: the model writes pieces, the musical check ranks them, "
                                         "DPO learns from the best against the worst (NotaGen's CLaMP-DPO)")
    o.add_argument("--out", required=True, help="run folder (resumed when it holds a run); the tuned model goes to OUT/model")
    o.add_argument("--init", default=None, help="model to start from (default: the bundled model)")
    o.add_argument("--data", default="assets/data/corpus", help="dataset whose held-out split measures bits per character")
    o.add_argument("--prompts", default=None,
                   help="prompt keys separated by ';' (period_composer_instrumentation; default: every prompt of the model)")
    for flag, name in (("--rounds", "rounds"), ("--pieces", "pieces"), ("--steps", "steps"), ("--batch", "batch_pairs"),
                       ("--max-patches", "max_patches"), ("--seed", "seed")):
        o.add_argument(flag, type=int, default=getattr(DpoConfig, name), help=f"(default {getattr(DpoConfig, name)})")
    for flag, name in (("--keep", "keep"), ("--beta", "beta"), ("--penalty", "penalty"), ("--lr", "lr"), ("--ptx", "ptx")):
        o.add_argument(flag, type=float, default=getattr(DpoConfig, name), help=f"(default {getattr(DpoConfig, name)})")
    o.add_argument("--max-minutes", type=float, default=None,
                   help="stop with a checkpoint after this many minutes (resume later with the same command)")
    o.add_argument("--device", default="auto")

    f = sub.add_parser("finetune", help="teach a model a new composer from your folder of scores")
    f.add_argument("folder", help="a folder of .musicxml/.mxl/.xml/.abc files")
    f.add_argument("--period", required=True)
    f.add_argument("--composer", required=True, help="NotaGen's form: 'Last, First'")
    f.add_argument("--instrumentation", default=None, help="default: decided from the parts")
    f.add_argument("--model", default=None, help="model to start from (default: the bundled model)")
    f.add_argument("--out", required=True, help="the new model folder")
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--device", default="auto")


def _audio_options(a, default_model: str = "facebook/musicgen-small", default_duration: float = 10.0) -> None:
    a.add_argument("--model", default=default_model, help=f"hub id or local folder (default {default_model})")
    a.add_argument("--duration", type=float, default=default_duration,
                   help=f"seconds, up to 300; past 30 s the piece is made in overlapping windows (default {default_duration:g})")
    d = AudioSettings  # the defaults live in the settings' fields
    a.add_argument("--seed", type=int, default=d.seed, help="repeat a clip with the same seed (default: random, printed)")
    a.add_argument("--variations", type=int, default=d.variations, help="pieces made together as one batch (1-8)")
    a.add_argument("--guidance", type=float, default=d.guidance_scale,
                   help=f"classifier-free guidance scale (default {d.guidance_scale:g})")
    a.add_argument("--top-k", type=int, default=d.top_k)
    a.add_argument("--top-p", type=float, default=d.top_p, help="0 = off (default)")
    a.add_argument("--temperature", type=float, default=d.temperature)
    a.add_argument("--device", default="auto")
    a.add_argument("-o", "--out", required=True, help="the WAV file to write (variations get -2, -3, ...)")


def _format_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--formats", default="all",
                   help="comma-separated: abc,musicxml,midi,wav,svg,pdf,png,zip (default all)")
    p.add_argument("--soundfont", default=None, help="a .sf2 SoundFont for the WAV (default: $CADENZA_SOUNDFONT or TimGM6mb)")


def _formats(args) -> tuple[str, ...]:
    if args.formats == "all":
        return FORMATS
    wanted = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    return tuple(dict.fromkeys(("abc",) + wanted))  # the ABC is always kept


def _print_render(result) -> None:
    for fmt, st in result.status.items():
        if st.ok:
            print(f"  {fmt:8s} {', '.join(str(result.out_dir / f) for f in st.files)}", file=sys.stderr)
        else:
            print(f"  {fmt:8s} FAILED: {st.error}", file=sys.stderr)
    for w in result.warnings:
        print(f"  note: {w}", file=sys.stderr)


def _placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", default=os.environ.get("CADENZA_DEVICES"),
                   help="GPUs to place the model on, e.g. 0,1,2 (default: all visible; CUDA_VISIBLE_DEVICES applies)")
    p.add_argument("--placement", default=os.environ.get("CADENZA_PLACEMENT", "auto"),
                   choices=("auto", "single", "split", "replicate"),
                   help="auto (default): a copy per GPU when it fits, else split across GPUs, the CPU last")
    p.add_argument("--max-memory", default=os.environ.get("CADENZA_MAX_MEMORY"),
                   help="budget per device, e.g. 0=20GiB,1=20GiB (default: what each GPU has free)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="NotaGen .pth checkpoint or Cadenza model folder (default: the bundled model)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"compose": cmd_compose, "render": cmd_render, "prompts": cmd_prompts,
                "doctor": cmd_doctor, "dataset": cmd_dataset, "train": cmd_train,
                "finetune": cmd_finetune, "train-dpo": cmd_train_dpo, "audio": cmd_audio,
                "perform": cmd_audio}[args.command](args)
    except CadenzaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def cmd_compose(args) -> int:
    request = ComposeRequest(args.period, args.composer, args.instrumentation,
                             SamplingSettings(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature),
                             seed=args.seed, variations=args.variations, max_patches=args.max_patches,
                             max_seconds=args.max_seconds, bar_retries=args.bar_retries,
                             header_retries=args.header_retries, critic=args.critic == "on", search=args.search,
                             search_by=args.search_by,
                             controls=Controls(args.bars, args.key, args.meter, args.tempo))
    for flag, value in (("--rewrite-from", args.rewrite_from), ("--rewrite", args.rewrite)):
        if value is not None and not args.from_score:
            raise SettingsError(f"{flag} needs the score to rewrite: --from-score FILE")
    if args.rewrite is not None and args.rewrite_from is not None:
        raise SettingsError("--rewrite N-M and --rewrite-from N both say where to rewrite: give one")
    if args.candidates is not None and args.rewrite is None:
        raise SettingsError("--candidates is for a passage: give the bars with --rewrite N-M")
    if args.voice is not None and not args.harmonise:
        raise SettingsError("--voice names the voice to harmonise: give the score with --harmonise FILE")
    if args.harmonise and args.from_score:
        raise SettingsError("--harmonise FILE and --from-score FILE: harmonise a melody or continue a score, not both")
    if args.harmonise:
        request = api.harmonise_request(request, api.read_score(args.harmonise), args.voice)
    elif args.rewrite is not None:
        first, last = bar_range(args.rewrite)
        request = api.passage_request(request, api.read_score(args.from_score), first, last,
                                      args.candidates or passage.CANDIDATES)
    elif args.from_score:
        prefix = api.continuation_prefix(api.read_score(args.from_score), rewrite_from=args.rewrite_from)
        request = request.update(prefix=prefix)
    request = request.seeded()
    print(f"loading model ... (seed {request.seed})", file=sys.stderr)
    slot = _model_slot(args, request)
    lm, scheduler = slot.checkout()
    if slot.plan():
        print(f"placement: {slot.plan()}", file=sys.stderr)
    for w in lm.warnings:
        print(f"warning: {w}", file=sys.stderr)
    cancel = threading.Event()

    def stop(*_):  # first Ctrl+C: finish the current patch and keep the piece; second: quit
        print("\nstopping after this patch (Ctrl+C again to quit) ...", file=sys.stderr)
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, stop)
    bar = tqdm(total=args.max_patches, unit="patch", file=sys.stderr, dynamic_ncols=True, leave=False)
    stream_text = not args.quiet and request.variations == 1

    def on_event(ev) -> None:
        if ev.index == 0:
            bar.n = ev.patches
            bar.set_postfix(bars=ev.bars, chars=ev.chars)
            if stream_text:
                bar.clear()
                # The terminal cannot take text back: mark the spot, the file holds the rewrite.
                sys.stdout.write(f" % ({ev.retract} characters taken back)\n" if ev.retract else "")
                sys.stdout.write(ev.text)
                sys.stdout.flush()
                bar.refresh()

    results = []
    try:  # the service's way: the variations are rows of the copy's batching scheduler (or a replica's)
        for ev in slot.compose_stream(lm, request, cancel, scheduler, owner="cli"):  # bounded by the request
            if isinstance(ev, api.Composition):
                results.append(ev)
            elif isinstance(ev, PatchEvent):
                on_event(ev)
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
        slot.checkin(lm)
        slot.close()
        if getattr(slot, "cluster", None) is not None:  # a Ray started here stops; a cluster stays up
            slot.cluster.close()
    results.sort(key=lambda c: c.piece.index)
    if stream_text:
        print()
    formats = _formats(args)
    options = api.RenderOptions(soundfont=args.soundfont)
    for r in results:
        p = r.piece
        rendered = api.export(lm, r, Path(args.out), formats, options)
        print(f"{r.stem()}: {p.bars} bars, {r.abc.alignment}, {p.patches} patches in {p.elapsed:.1f}s, "
              f"{'complete' if p.complete else 'cut short: ' + p.stop_reason}", file=sys.stderr)
        for line in api.analysis_lines(rendered.manifest.get("analysis", {})):
            print(f"  check: {line}", file=sys.stderr)
        for w in r.warnings:
            print(f"  note: {w}", file=sys.stderr)
        _print_render(rendered)
    return 0


def _model_slot(args, request: ComposeRequest):
    """The model as the studio's service holds it (engine.service.models): loaded here with a
    batching scheduler sized for this request's rows, or (--ray) served by a cluster's replicas;
    --mode reference: NotaGen's own algorithm, one row at a time, no scheduler."""
    from engine.service.models import ModelSlot
    from engine.service.remote import RayCluster, RemoteSlot

    options = api.PlacementOptions(args.devices, args.placement, args.max_memory, request.variations)
    rows = request.variations * request.search  # a search's candidates are rows too
    batching = (rows, 120.0, args.decode, api.Sharing())  # a lone request: its rows are free at once
    placed = args.devices or args.max_memory or args.placement != "auto"
    # one request: a replicate plan's first copy writes it; unplaced, the slot's own api.load(device)
    load = (lambda spec, device: api.load_placed(spec, options)[0]) if placed else None
    if args.ray:
        if args.mode == "reference":
            raise SettingsError("--mode reference runs in this process: leave out --ray")
        cluster = RayCluster(args.ray, 1, "auto", 1.0)
        cluster.connect()  # on this thread: a local Ray dies with the thread that started it
        slot = RemoteSlot(args.model, args.device, cluster, options, batching)
    elif args.mode == "reference":
        slot = ModelSlot(args.model, args.device, load)
        slot.backend = ReferenceBackend
    else:
        slot = ModelSlot(args.model, args.device, load, batching)
    return slot.start()


def bar_range(text: str) -> tuple[int, int]:
    """'5-8' -> (5, 8); '5' -> (5, 5): bars as printed."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*(?:[-\u2013]\s*(\d{1,6}))?\s*", text or "")
    if m is None:
        raise SettingsError(f"--rewrite takes the first and last bar to write again, as N-M (5-8) or N (one bar); "
                            f"got {text!r}")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def cmd_render(args) -> int:
    options = api.RenderOptions(soundfont=args.soundfont)
    if args.transpose:
        moved, note = api.transpose(api.read_score(args.file), args.transpose, options)
        print(f"{args.file}: {note}", file=sys.stderr)
        stem = f"{Path(args.file).stem}-in-{args.transpose.replace(' ', '')}"
        result = api.render(moved, Path(args.out), _formats(args), stem, options=options)
    else:
        result = api.render_file(args.file, Path(args.out), _formats(args), options=options)
    print(f"{args.file}:", file=sys.stderr)
    _print_render(result)
    return 0 if not result.failed else 1


def cmd_prompts(args) -> int:
    lm = api.load(args.model, device="cpu")
    table = lm.prompts
    if table is None:
        print(f"{lm.name} has no prompt table: it accepts any period / composer / instrumentation", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps([p.__dict__ for p in table.prompts], indent=1))
        return 0
    for period in table.periods():
        print(period)
        for composer in table.composers(period):
            print(f"  {composer}: {', '.join(table.instrumentations(period, composer))}")
    print(f"{len(table)} combinations", file=sys.stderr)
    return 0


def cmd_dataset(args) -> int:
    transpose = tuple(int(x) for x in args.transpose.split(",") if x.strip())
    if args.action == "build":
        sources, skipped = data.corpus_sources(cap_scale=args.cap_scale)
    else:
        if not args.folder or not args.period or not args.composer:
            print("error: dataset folder needs FOLDER, --period and --composer", file=sys.stderr)
            return 2
        labels = [check_field(n, v) for n, v in (("period", args.period), ("composer", args.composer))]
        inst = check_field("instrumentation", args.instrumentation) if args.instrumentation else None
        sources, skipped = data.folder_sources(args.folder, labels[0], labels[1], inst), []
    bar = tqdm(total=len(sources), unit="piece", file=sys.stderr, desc="converting")
    report = data.build(sources, args.out, args.workers, transpose, skipped=skipped,
                        progress=lambda i, n: (setattr(bar, "total", n), bar.update(1)))
    bar.close()
    data.print_report(report)
    print(f"wrote {args.out}/train.jsonl.gz, val.jsonl.gz and report.json", file=sys.stderr)
    return 0


def _train_loop(model, train_pieces, val_pieces, out, cfg, base_prompts, resume, name, base_voices=None) -> dict:
    bar = tqdm(total=cfg.steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def on_step(r):
        bar.n = r["step"]
        post = {"loss": f"{r['loss']:.3f}", "patch/s": f"{r['patches_per_s']:.0f}"}
        if "val_bpc" in r:
            post["val_bpc"] = f"{r['val_bpc']:.3f}"
        bar.set_postfix(post)
        bar.refresh()

    try:
        return train(model, train_pieces, val_pieces, out, cfg, base_prompts, resume, name, on_step, base_voices)
    finally:
        bar.close()


def cmd_train(args) -> int:
    device = api.pick_device(args.device)
    base, base_voices = None, None
    if args.init:
        lm = api.load(args.init, device=device, dtype=torch.float32)
        model = lm.model
        if not args.only_data_prompts:
            base, base_voices = lm.prompts, lm.voices
        if args.patch_layers or args.char_layers:
            model = deepen(model, args.patch_layers or model.config.patch_num_layers,
                           args.char_layers or model.config.char_num_layers)
    else:
        cfg = NotaGenConfig(patch_length=args.patch_length, patch_num_layers=args.patch_layers or 6,
                            char_num_layers=args.char_layers or 2, hidden_size=args.hidden)
        model = new_model(cfg).to(device)
    train_pieces, val_pieces = read_split(args.data, "train"), read_split(args.data, "val")
    cfg = TrainConfig(steps=args.steps, batch_pieces=args.batch, lr=args.lr, eval_every=args.eval_every,
                      warmup=args.warmup, balance=args.balance, patch_sampling=args.patch_sampling,
                      max_minutes=args.max_minutes)
    history = _train_loop(model, train_pieces, val_pieces, args.out, cfg, base, not args.fresh,
                          args.name or Path(args.out).name, base_voices)
    last = history["val_bpc"][-1]["bpc"] if history["val_bpc"] else float("nan")
    done = history["steps"][-1]["step"] if history["steps"] else 0
    print(f"wrote {args.out}: {done} of {cfg.steps} steps, validation {last:.3f} bits per character", file=sys.stderr)
    return 0


def cmd_train_dpo(args) -> int:
    cfg = DpoConfig(rounds=args.rounds, pieces=args.pieces, keep=args.keep, steps=args.steps, batch_pairs=args.batch,
                    beta=args.beta, penalty=args.penalty, lr=args.lr, ptx=args.ptx, max_patches=args.max_patches,
                    seed=args.seed,
                    prompts=args.prompts.split(";") if args.prompts else None, max_minutes=args.max_minutes)
    lm = api.load(args.init, device=api.pick_device(args.device), dtype=torch.float32)
    source = lm.source / "config.json" if lm.source.is_dir() else None
    own = json.loads(source.read_text()) if source and source.is_file() else {}
    # what generation holds each prompt to (voices, bar rules), kept from the starting model
    extras = {k: v for k, v in own.items() if k not in lm.model.config.to_dict() and k != "architecture"}

    def save(model, folder, dtype=None):
        save_model(model, folder, prompts=lm.prompts, dtype=dtype,
                   extra_config={**extras, "name": extras.get("name", lm.name), "dpo_rounds": cfg.rounds})

    val = read_split(args.data, "val")
    real = read_split(args.data, "train") if cfg.ptx else None
    report = dpo.tune(lm, val, args.out, cfg, save, on_event=lambda line: print(line, file=sys.stderr), train_pieces=real)
    if report["stopped"]:
        print(f"stopped after {args.max_minutes} minutes: run the same command to go on", file=sys.stderr)
        return 0
    save(lm.model, Path(args.out) / "model", dtype=torch.bfloat16)  # the shipped form: bf16 weights
    print(f"wrote {args.out}/model; per round: {args.out}/{dpo.REPORT_FILE}", file=sys.stderr)
    return 0


def cmd_finetune(args) -> int:
    period, composer = check_field("period", args.period), check_field("composer", args.composer)
    inst = check_field("instrumentation", args.instrumentation) if args.instrumentation else None
    lm = api.load(args.model, device=args.device, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        report = data.build(data.folder_sources(args.folder, period, composer, inst), tmp, workers=2)
        data.print_report(report, file=sys.stderr)
        pieces = data.read_split(tmp, "train") + data.read_split(tmp, "val")
    if not pieces:
        print("error: none of the scores in the folder could be converted (see the report above)", file=sys.stderr)
        return 2
    labels = sorted({"_".join(p["labels"]) for p in pieces})
    cfg = TrainConfig(steps=args.steps, batch_pieces=min(8, len(pieces)), lr=1e-4, warmup=min(50, args.steps // 5),
                      eval_every=max(1, args.steps), always_prompts=labels)
    _train_loop(lm.model, pieces, [], args.out, cfg, lm.prompts, False, Path(args.out).name, lm.voices)
    print(f"wrote {args.out}; its prompt table now has {', '.join(labels)}", file=sys.stderr)
    return 0


def _cached_models() -> list[str]:
    """NotaGen / MusicGen repos already in the standard Hugging Face cache (no network)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir().repos
    except (CacheNotFound, OSError):
        return []
    return sorted(f"{r.repo_id} ({r.size_on_disk / 2**30:.1f} GiB)" for r in repos
                  if any(k in r.repo_id.lower() for k in ("notagen", "musicgen")))


def _print_placement(args, bundled) -> None:
    """The plan for the model on this machine's (or the named, budgeted) devices."""
    path = args.model or bundled
    if path is None:
        return
    try:
        plan = placement.plan_for(path, placement.PlacementOptions(args.devices, args.placement, args.max_memory,
                                                                   args.batch))
    except CadenzaError as e:
        print(f"placement of {Path(path).name}: cannot be planned: {e}")
        return
    print(f"placement of {Path(path).name} (batch {args.batch}):")
    print("  " + plan.describe().replace("\n", "\n  "))


def cmd_doctor(args) -> int:
    print(f"Cadenza engine {__version__}")
    print(f"Python {platform.python_version()} on {platform.platform()}")
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})")
    found = inventory()
    for d in found:
        print(f"  {d.line()}")
    if len(found) == 1:
        print("  no CUDA GPU: models run on the CPU (fp32)")
    mps = getattr(torch.backends, "mps", None)
    print(f"  Apple MPS: {'available' if mps is not None and mps.is_available() else 'not available'}")
    bundled = api.bundled_model()
    print(f"bundled model: {bundled if bundled else 'none yet (assets/models is empty): pass --model'}")
    print(f"models in the Hugging Face cache: {', '.join(_cached_models()) or 'none'}")
    _print_placement(args, bundled)
    print("packages:")
    parts = {
        "verovio": "sheet music (SVG pages)", "cairosvg": "PDF and PNG from the SVG pages",
        "pypdf": "joining PDF pages", "tinysoundfont": "MIDI -> WAV synthesis", "pretty_midi": "ships the default SoundFont",
        "mido": "MIDI lengths", "defusedxml": "safe reading of uploaded MusicXML", "lxml": "MusicXML schema checks",
        "transformers": "reference mode and MusicGen", "accelerate": "multi-GPU placement",
        "safetensors": "Cadenza model folders", "huggingface_hub": "downloading NotaGen / MusicGen weights",
        "abctoolkit": "bar durations (voice restoration, alignment check)", "music21": "scores from music21's corpus",
    }
    for name, why in parts.items():
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            version = "MISSING (run ./run.sh to install)"
        print(f"  {name:16s} {version:12s} {why}")

    sf = RenderOptions().soundfont_path()
    print(f"SoundFont: {sf} ({'found' if sf.is_file() else 'MISSING'}; set CADENZA_SOUNDFONT or --soundfont for another)")
    return 0


def cmd_audio(args) -> int:
    """`audio` and `perform`: MusicGen with a progress bar; WAV, picture and manifest beside -o."""
    out = Path(args.out)
    if out.suffix.lower() != ".wav":
        raise CadenzaError(f"--out must name a .wav file, got {out}")
    settings = AudioSettings(duration=args.duration, guidance_scale=args.guidance, top_k=args.top_k, top_p=args.top_p,
                             temperature=args.temperature, seed=args.seed, variations=args.variations)
    if args.command == "perform":
        request = AudioRequest(args.style, settings, score=api.read_score(args.score))
    else:
        request = AudioRequest(args.prompt, settings, melody=args.melody)
    request = request.seeded()
    print(f"loading {args.model} ...", file=sys.stderr)
    am = api.load_audio_model(args.model, device=args.device)
    bar = tqdm(unit="step", file=sys.stderr, dynamic_ncols=True, leave=False)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        made = api.make_audio(am, request, out.parent, out.stem, on_progress=progress)
    finally:
        bar.close()
    r = made.result
    for wav in made.wavs:
        print(f"{wav}: {r.audio_seconds:.1f} s at {r.sampling_rate} Hz", file=sys.stderr)
    print(f"{r.loudness_lufs[0]:.1f} LUFS, seed {r.settings.seed}, {r.windows} window(s), {r.seconds:.1f} s to compute "
          f"(real-time factor {r.seconds / max(r.audio_seconds, 1e-9):.2f}); manifest {made.manifest}", file=sys.stderr)
    return 0
