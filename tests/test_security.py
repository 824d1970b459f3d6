"""The studio attacked as someone on the LAN would: direct HTTP calls past the queue, page-only
handlers called with hostile arguments, models named by path, login brute force, a full session,
a full disk, SIGTERM and SIGKILL mid-piece. Served on a free port of 127.0.0.1; every loop is
bounded."""
import errno
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest

from conftest import BACH, free_port, ROOT, tiny_model
from engine.symbolic.checkpoint import save_model
from engine.symbolic.prompts import PromptTable

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from engine.errors import CadenzaError  # noqa: E402
from engine.store import valid_key  # noqa: E402
from engine.settings import ServerSettings, from_args  # noqa: E402
from engine.service.policy import DiskPolicy, NotOffered, public  # noqa: E402
from webui.guard import LoginBackoff  # noqa: E402
from engine.service.studio import Studio  # noqa: E402

KEY = "z" * 20 + "-security"
PROMPT = (BACH.period, BACH.composer, BACH.instrumentation)
NO_PROMPT = (None, None, None)  # the dropdowns: a hand-made client has no choices to pick from
NAMED = ("prompts", "compose", "continue", "rewrite", "render", "transpose", "upload", "history", "piece", "audio", "perform",
         "delete", "undelete")
NOT_OFFERED = "on this server: name a model in its models folder (offered: tiny)"
SCORE = "X:1\nT:Test\nM:4/4\nL:1/8\nK:C\nCDEF GABc|c2B2 A2G2|]\n"


def tiny_folder(folder: Path, seed: int = 1) -> Path:
    return save_model(tiny_model(seed=seed), folder, prompts=PromptTable([BACH]))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from webui.app import start

    tmp = tmp_path_factory.mktemp("security")
    models = tmp / "models"
    model = tiny_folder(models / "tiny")
    config = ServerSettings(port=free_port(), outputs=str(tmp / "outputs"), model=str(model), models_dirs=(str(models),),
                          concurrency=2, max_upload_mb=1, min_free_mb=0)
    demo, studio, url = start(config, quiet=True)
    studio.model(None).get()
    yield demo, studio, url, tmp
    demo.close()


def post(url: str, path: str, body: dict, source: str | None = None, form: bool = False) -> tuple[int, str]:
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=(source, 0) if source else None)
    data = urllib.parse.urlencode(body) if form else json.dumps(body)
    kind = "application/x-www-form-urlencoded" if form else "application/json"
    conn.request("POST", path, body=data, headers={"Content-Type": kind})
    r = conn.getresponse()
    out = r.status, r.read().decode("utf-8", "replace")
    conn.close()
    return out


def fn_index(demo, name: str) -> int:
    found = [i for i, fn in demo.fns.items() if getattr(fn.fn, "__name__", "") == name]
    assert found, f"no handler {name}"
    return found[0]


# The page's handlers that read their inputs by name (a set of components): a browser sends the values
# in the handler's own order (its components' creation order); the cases below give them as named here.
FORM = ["key", "model", "period", "composer", "instrumentation", "temperature", "top_k", "top_p", "seed", "max_patches",
        "variations", "bar_retries", "critic", "bars", "music_key", "meter", "tempo"]
BY_NAME = {"run": FORM, "run_continue": FORM + ["abc", "current"], "run_rewrite": FORM + ["abc", "rewrite_bar", "rewrite_to", "current"],
           "run_audio": ["key", "a_prompt", "a_model", "a_duration", "a_guidance", "a_top_k", "a_top_p", "a_temperature",
                         "a_seed", "a_variations", "a_melody"],
           "run_perform": ["key", "abc", "style", "perform_model", "perform_seconds", "seed"]}


def in_page_order(demo, name: str, data: list) -> list:
    """`data` (in BY_NAME[name]'s order) as the page sends it for that handler."""
    if name not in BY_NAME:
        return data
    named = {getattr(demo.ui, n)._id: v for n, v in zip(BY_NAME[name], data)}
    return [named[c._id] for c in demo.fns[fn_index(demo, name)].inputs]


def join(url: str, fn: int, data: list, timeout: float = 60) -> dict:
    """Calls one handler through the queue as a hand-made client would: -> its last message, with
    the notices (gr.Warning) it sent on the way under "notices"."""
    session = uuid.uuid4().hex[:11]
    status, body = post(url, "/gradio_api/queue/join", {"data": data, "fn_index": fn, "session_hash": session,
                                                        "event_data": None, "trigger_id": None})
    assert status == 200, body
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("GET", f"/gradio_api/queue/data?session_hash={session}")
    r = conn.getresponse()
    deadline, last, notices = time.monotonic() + timeout, {}, []
    while time.monotonic() < deadline:  # bounded: the stream ends with process_completed
        line = r.fp.readline().decode()
        if not line:
            break
        if line.startswith("data:"):
            last = json.loads(line[5:])
            if last.get("msg") == "log":
                notices.append(str(last.get("log", "")))
            if last.get("msg") in ("process_completed", "unexpected_error"):
                break
    conn.close()
    return {**last, "notices": notices}


def words(msg: dict) -> str:
    """What the client is shown: the error, or the warnings the handler raised."""
    out = msg.get("output") or {}
    return json.dumps(out) + " ".join(msg.get("notices", [])) + str(msg.get("message", ""))


# --- 1. no way around the queue ---------------------------------------------------------------------
def test_direct_http_calls_are_refused_for_every_named_endpoint_and_page_handler(served):
    demo, studio, url, tmp = served
    for name in NAMED:
        status, body = post(url, f"/gradio_api/run/{name}", {"data": [KEY, SCORE]})
        assert status == 404 and "join the queue" in body, (name, status, body[:200])
    for i in demo.fns:  # the page's own handlers, by index
        status, body = post(url, "/gradio_api/run/predict", {"data": [], "fn_index": i})
        assert status == 404, (i, status, body[:200])
    c = Client(url, verbose=False, download_files=str(tmp / "dl"))
    info, _ = c.predict(KEY, SCORE, api_name="/render")  # the queue itself still serves scripts
    assert info["status"] == "done"


# --- 2. page-only handlers check what they are given -----------------------------------------------
def test_the_download_handler_reaches_the_hub_only_when_the_admin_allowed_it(served, monkeypatch):
    demo, studio, url, tmp = served
    from engine import api

    calls = []
    monkeypatch.setattr(api, "fetch_checkpoint", lambda *a, **k: calls.append(a) or Path("/x"))
    msg = join(url, fn_index(demo, "on_fetch"), ["ElectricAlexis/NotaGen", "weights.pth"])
    assert not msg.get("success") and "does not download models" in words(msg) and "--allow-downloads" in words(msg)
    assert calls == []
    studio.policy.allow_downloads = ("someone/else",)
    try:
        msg = join(url, fn_index(demo, "on_fetch"), ["ElectricAlexis/NotaGen", "weights.pth"])
        assert "downloads only from someone/else" in words(msg) and calls == []
    finally:
        studio.policy.allow_downloads = ()


@pytest.mark.parametrize("handler,data,expected", [
    ("on_use_model", ["/etc/passwd"], NOT_OFFERED),
    ("on_use_model", ["../../../../etc"], NOT_OFFERED),
    ("tick", [False, "/root", {}], NOT_OFFERED),
    ("run", [KEY + "\n", "", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "", ""], "no session"),
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 10**6, 0, True, "", "", "", ""], "greater than maximum value 8"),  # Gradio's slider
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "", ""], "period is empty"),
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, 10**30, 16, 1, 0, True, "", "", "", ""], "seed must be a whole number from 0 to"),
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "../../etc/passwd", "", ""], "key must be"),
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "1/0", ""], "metre must be"),
    ("run", [KEY, "/etc/shadow", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "", ""], NOT_OFFERED),
    ("on_render", ["bad key", SCORE, {}], "no session"),
    ("on_delete", [KEY, ["../../other-session"]], "is not in the list of choices"),  # only this session's pieces
    ("run_audio", [KEY, "piano", "/etc", 5, 3.0, 250, 0.0, 1.0, 1, 1, None], NOT_OFFERED),
    ("run_audio", [KEY, "piano", "", 5, 3.0, 250, 0.0, 1.0, 10**30, 1, None], "seed must be a whole number from 0 to"),
    ("run_perform", [KEY, SCORE, "strings", "/etc", 5, 1], NOT_OFFERED),
    ("run_continue", [KEY, "/etc", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "", "", SCORE, {}], NOT_OFFERED),
    ("run_rewrite", [KEY, "/etc", *NO_PROMPT, 1.2, 9, 0.9, 1, 16, 1, 0, True, "", "", "", "", SCORE, 2, None, {}], NOT_OFFERED),
    ("on_transpose", [KEY, SCORE, "H#", {}, ""], "key must be"),
    ("on_surprise", ["/etc/hosts", *NO_PROMPT], NOT_OFFERED),
    ("on_rename", [KEY, "../../other-session", "mine now"], "no piece"),
    ("on_rename", [KEY, "nope", "a\ntitle"], "a title is 1 to 120 characters"),
    ("run", [KEY, "", *NO_PROMPT, 1.2, 9, 0.9, -5, 16, 1, 0, True, "", "", "", ""], "seed must be a whole number from 0 to"),
    ("on_upload", [KEY, {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}], None),  # Gradio: not uploaded
])
def test_page_handlers_called_through_the_queue_refuse_hostile_arguments(served, handler, data, expected):
    demo, studio, url, tmp = served
    before = sorted(p.name for p in Path(studio.store.root).rglob("*"))
    msg = join(url, fn_index(demo, handler), in_page_order(demo, handler, data))
    if expected is None:  # refused before the handler runs, without a word (show_error is off)
        assert msg.get("success") is False and "passwd" not in words(msg)
    else:
        assert expected in words(msg), words(msg)[:400]
    assert sorted(p.name for p in Path(studio.store.root).rglob("*")) == before  # nothing was written
    assert msg.get("msg") == "process_completed"  # the server answered; it stays up


def test_the_history_handler_ignores_rows_that_are_not_there(served):
    demo, studio, url, tmp = served
    msg = join(url, fn_index(demo, "on_history"), [KEY, ["../../etc"]])  # no event data at all
    assert msg.get("msg") == "process_completed"


# --- 3. models named by clients ---------------------------------------------------------------------
def test_models_outside_the_models_folders_are_refused_with_one_message(tmp_path):
    models = tmp_path / "models"
    tiny_folder(models / "mine")
    elsewhere = tiny_folder(tmp_path / "elsewhere")  # a real model, but outside the folder
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(models / "mine"), models_dirs=(str(models),)))
    messages = []
    for spec in (str(elsewhere), str(tmp_path / "no-such.pth"), "/etc/passwd", "../elsewhere", str(models / ".." / "elsewhere")):
        with pytest.raises(NotOffered) as e:
            studio.model(spec)
        messages.append(str(e.value).replace(repr(spec), "SPEC"))
    assert len(set(messages)) == 1 and "offered: mine" in messages[0], messages
    assert studio.model("mine").get().name  # by name inside the models folder
    assert studio.model(str(models / "mine")).get().name  # or by its full path there


def test_failed_loads_hold_no_slot_and_slots_are_let_go_least_recently_used(tmp_path):
    from engine.service.models import MAX_MODELS

    models = tmp_path / "models"
    for i in range(4):  # broken: config.json but no weights
        (models / f"broken{i}").mkdir(parents=True)
        (models / f"broken{i}" / "config.json").write_text("{}")
    for i in range(MAX_MODELS + 1):
        tiny_folder(models / f"good{i}", seed=i)
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(models / "good0"), models_dirs=(str(models),)))
    for i in range(4):
        slot = studio.model(f"broken{i}")
        with pytest.raises(CadenzaError, match="could not be loaded"):
            slot.get()
    assert studio.model("good1").get()  # four failures later, a good model still loads
    assert studio.model("good2").get()
    studio.model(None).get()  # the server's own model is used again: good1 is now the oldest
    assert studio.model("good3").get()
    held = [Path(k).name for k, v in studio.models.items() if not v.failed]
    assert len(held) == MAX_MODELS and "good1" not in held and "good0" in held, held


def test_every_spelling_of_a_model_is_one_slot_and_busy_models_are_not_let_go(tmp_path):
    from engine.service.models import MAX_MODELS

    models = tmp_path / "models"
    for i in range(MAX_MODELS):
        tiny_folder(models / f"m{i}", seed=i)
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), model=str(models / "m0"), models_dirs=(str(models),)))
    studio.model(None).get()
    spellings = ["m1", "m1/", "./m1", "m1/../m1", str(models / "m1"), str(models / "m0" / ".." / "m1")]
    slots = {id(studio.model(s)) for s in spellings}
    assert len(slots) == 1 and len(studio.models) == 2
    busy = [studio.model(name).checkout()[0] for name in ("m1", "m2")]  # both run a request (copy, scheduler)
    extra = tiny_folder(models / "m3", seed=3)
    with pytest.raises(CadenzaError, match="all are loading or in use"):
        studio.model(str(extra))  # m0 is the server's own, m1 and m2 are busy: none is let go
    assert {Path(k).name for k in studio.models} == {"m0", "m1", "m2"}
    studio.model("m2").checkin(busy[1])
    assert studio.model("m3").get() and "m2" not in {Path(k).name for k in studio.models}


def test_musicgen_hub_ids_load_from_the_cache_only_unless_downloads_are_allowed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), models_dirs=(str(tmp_path / "models"),)))
    with pytest.raises(NotOffered, match="no model 'facebook/musicgen-large' on this server"):
        studio.policy.musicgen("facebook/musicgen-large")
    assert studio.policy.musicgen("facebook/musicgen-small") == ("facebook/musicgen-small", False)  # the admin's, cache only
    studio.policy.allow_downloads = ("*",)
    assert studio.policy.musicgen("facebook/musicgen-large") == ("facebook/musicgen-large", True)
    with pytest.raises(NotOffered):
        studio.policy.musicgen("/etc")


def test_allow_downloads_flag_and_models_dirs_from_the_command_line(monkeypatch):
    monkeypatch.delenv("CADENZA_ALLOW_DOWNLOADS", raising=False)
    assert from_args([]).allow_downloads == ()
    assert from_args(["--allow-downloads"]).allow_downloads == ("*",)
    assert from_args(["--allow-downloads", "a/b,c/d"]).allow_downloads == ("a/b", "c/d")
    cfg = from_args(["--models-dir", "/m1", "--models-dir", "/m2", "--session-quota-mb", "10", "--min-free-mb", "0"])
    assert cfg.models_dirs == ("/m1", "/m2") and cfg.session_quota_mb == 10 and cfg.min_free_mb == 0
    assert [str(p) for p in cfg.model_roots()[:2]] == ["/m1", "/m2"]


# --- 4. login brute force ---------------------------------------------------------------------------
def test_wrong_logins_are_slowed_per_address_without_slowing_others(tmp_path):
    from webui.app import start

    config = ServerSettings(port=free_port(), outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path / "m")),
                          auth=("composer", "right-password"), min_free_mb=0)
    demo, studio, url = start(config, quiet=True)
    try:
        wrong = {"username": "composer", "password": "guess"}
        codes = [post(url, "/login", wrong, form=True)[0] for _ in range(6)]
        assert codes == [400] * 5 + [429]  # five free tries, then a wait (1 s, then 2 s, 4 s ...)
        status, body = post(url, "/login", {"username": "composer", "password": "right-password"}, form=True)
        assert status == 429 and "try again in" in body  # even the right password waits: no guessing meanwhile
        other = post(url, "/login", {"username": "composer", "password": "right-password"}, form=True, source="127.0.0.2")
        assert other[0] == 200, other  # another address is not slowed
        time.sleep(1.2)  # the wait after 5 failures is 1 s
        assert post(url, "/login", {"username": "composer", "password": "right-password"}, form=True)[0] == 200
    finally:
        demo.close()


def test_forwarded_headers_and_parallel_bursts_do_not_get_past_the_login_limit(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from webui.app import start

    config = ServerSettings(port=free_port(), outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path / "m")),
                          auth=("composer", "right-password"), min_free_mb=0)
    demo, studio, url = start(config, quiet=True)
    wrong = {"username": "composer", "password": "guess"}
    try:
        u = urllib.parse.urlparse(url)

        def forged(i: int) -> int:  # a new X-Forwarded-For each time, from this machine
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=("127.0.0.3", 0))
            conn.request("POST", "/login", body=urllib.parse.urlencode(wrong),
                         headers={"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-For": f"10.0.{i}.{i}"})
            status = conn.getresponse().status
            conn.close()
            return status

        assert [forged(i) for i in range(7)] == [400] * 5 + [429] * 2
        with ThreadPoolExecutor(16) as pool:  # a burst from one address: five tries at most get through
            codes = list(pool.map(lambda _: post(url, "/login", wrong, source="127.0.0.4", form=True)[0], range(32)))
        assert codes.count(400) <= 5 and codes.count(429) >= 27, codes
    finally:
        demo.close()


def test_the_back_off_doubles_and_is_capped():
    b = LoginBackoff(app=None, free_tries=5, cap_s=60)
    waits = []
    for _ in range(14):
        b.failed("10.0.0.9")
        waits.append(round(b.wait_for("10.0.0.9")))
    assert waits[:4] == [0, 0, 0, 0] and waits[4:8] == [1, 2, 4, 8] and waits[-1] == 60
    b.succeeded("10.0.0.9")
    assert b.wait_for("10.0.0.9") == 0


# --- 5. disk ----------------------------------------------------------------------------------------
def test_a_full_session_is_told_how_to_make_room_and_loses_nothing(served):
    demo, studio, url, tmp = served
    key = "q" * 20 + "-quota"
    c = Client(url, verbose=False, download_files=str(tmp / "dl-quota"))
    saved = studio.disk
    try:
        studio.disk = DiskPolicy(session_bytes=2**40, session_pieces=2, min_free_bytes=0)
        first, _ = c.predict(key, SCORE, api_name="/render")
        c.predict(key, SCORE, api_name="/render")
        with pytest.raises(Exception, match="limit is 2 pieces.*delete pieces you no longer need in History"):
            c.predict(key, SCORE, api_name="/render")
        assert len(c.predict(key, api_name="/history")["pieces"]) == 2  # nothing lost
        gone = c.predict(key, first["pieces"][0]["id"], api_name="/delete")
        assert gone["deleted"] == 1 and gone["freed_bytes"] > 0
        assert c.predict(key, api_name="/undelete")["restored"] == 1  # the last Delete undone
        assert len(c.predict(key, api_name="/history")["pieces"]) == 2
        c.predict(key, first["pieces"][0]["id"], api_name="/delete")
        assert c.predict(key, SCORE, api_name="/render")[0]["status"] == "done"  # room again
        with pytest.raises(Exception, match="bringing back 1 deleted piece.*past its limit of 2 pieces"):
            c.predict(key, api_name="/undelete")  # the room it freed is taken
        studio.disk = DiskPolicy(session_bytes=2**40, session_pieces=10**6, min_free_bytes=2**62)
        with pytest.raises(Exception, match="disk is nearly full"):
            c.predict(key, SCORE, api_name="/render")
    finally:
        studio.disk = saved


def test_a_start_up_sweep_removes_folders_that_never_got_a_record(tmp_path):
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), min_free_mb=0))
    kept = studio.render(KEY, SCORE)
    orphan = kept.folder.parent / "20260101-000000-half-made"
    orphan.mkdir()
    (orphan / "score.abc").write_text(SCORE)
    (kept.folder / ".record.json.tmp123").write_text("{")
    Studio(ServerSettings(outputs=str(tmp_path / "out"), min_free_mb=0))  # a restart
    assert not orphan.exists() and not (kept.folder / ".record.json.tmp123").exists()
    assert (kept.folder / "record.json").is_file()


def test_gradio_cache_is_cleaned_on_a_schedule(tmp_path):
    from webui.app import build_app

    demo = build_app(ServerSettings(outputs=str(tmp_path / "out"), model=str(tiny_folder(tmp_path / "m")), cache_hours=2))
    assert demo.delete_cache == (3600, 7200)


def test_the_servers_outputs_are_capped_and_idle_sessions_oldest_pieces_go_first(tmp_path):
    """Keys are free to make up, so bytes are capped for the whole server: over the cap, pieces of
    idle sessions go (least recently opened first), never a busy or recently active session's;
    when only active sessions hold the space, new work is refused (issue 31, part 4)."""
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), min_free_mb=0, formats=("abc", "musicxml")))
    idle = [studio.render("i" * 20 + "-idle", SCORE, f"old {n}") for n in range(3)]
    for n, o in enumerate(idle):  # written days ago, the second opened more recently than the others
        then = time.time() - 3 * 86400 + (3600 * 10 if n == 1 else n)
        os.utime(o.folder / "record.json", (then, then))
    recent = studio.render("r" * 20 + "-recent", SCORE)
    piece = sum(f.stat().st_size for f in idle[0].folder.iterdir())
    total = studio.store.total_bytes()
    studio.disk.max_total_bytes = total - piece // 2  # just over: the oldest idle piece must go
    studio._total = None
    studio.render("n" * 20 + "-new", SCORE)
    left = [r.title for r in studio.history("i" * 20 + "-idle")]
    assert left == ["old 2", "old 1"] and studio.history("r" * 20 + "-recent")[0].id == recent.record.id
    studio.disk.max_total_bytes = piece  # far over, and the rest is active sessions' only
    for o in idle[1:]:
        o.folder.parent.joinpath(o.record.id, "record.json").touch()  # now active
    studio._total = None
    with pytest.raises(CadenzaError, match="space for pieces is full.*your pieces so far are kept"):
        studio.render("n" * 20 + "-new", SCORE)
    assert len(studio.history("r" * 20 + "-recent")) == 1 and len(studio.history("i" * 20 + "-idle")) == 2


def test_a_short_score_asking_for_a_long_wav_gets_no_wav_and_the_rest(tmp_path):
    """289 whole notes at quarter = 60 wrote 313 MB (a 20-minute WAV, and again in the ZIP). The
    studio makes a WAV only up to --max-wav-minutes, and a big file is not copied into the ZIP."""
    import zipfile

    long = "X:1\nT:Long\nL:1/1\nQ:1/4=60\nM:4/4\nK:C\n" + "|".join("C" * 1 for _ in range(30)) + "|]\n"  # 120 s
    studio = Studio(ServerSettings(outputs=str(tmp_path / "out"), min_free_mb=0, max_wav_minutes=1))
    out = studio.render(KEY, long)
    assert "wav" not in out.record.files and "limited to 1 minutes" in out.record.errors["wav"]
    assert {"abc", "musicxml", "midi", "pdf", "zip"} <= set(out.record.files)
    assert sum(f.stat().st_size for f in out.folder.iterdir()) < 2 * 2**20
    with pytest.raises(CadenzaError, match="max WAV minutes must be from 0.1 to 60"):
        ServerSettings(max_wav_minutes=600).check()
    from engine.render.pipeline import RenderOptions, render
    short = render(SCORE, tmp_path / "zip", options=RenderOptions(zip_member_max_mb=0.01))
    with zipfile.ZipFile(short.paths("zip")[0]) as z:
        names = set(z.namelist())
    big = set(short.manifest["exports"]["zip"]["left_out"])
    assert "score.wav" in big and not big & names and "score.abc" in names


def test_gradio_cache_is_trimmed_oldest_first_when_over_its_size(tmp_path):
    from webui.guard import trim_folder

    for n in range(10):
        f = tmp_path / f"h{n}" / "file.bin"
        f.parent.mkdir()
        f.write_bytes(b"x" * 1000)
        os.utime(f, (1000 + n, 1000 + n))
    assert trim_folder(tmp_path, 20_000) == (0, 0)
    assert trim_folder(tmp_path, 5_000) == (6, 6000)  # down to 80% of the cap, the oldest gone
    assert sorted(p.parent.name for p in tmp_path.rglob("*.bin")) == ["h6", "h7", "h8", "h9"]


# --- 7. write failures ------------------------------------------------------------------------------
def test_a_full_disk_keeps_the_server_up_and_says_so_without_paths(served, monkeypatch):
    demo, studio, url, tmp = served
    import engine.store

    key = "f" * 20 + "-full-disk"

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", "/srv/private/outputs/x/record.json")

    monkeypatch.setattr(engine.store, "write_atomic", full)
    c = Client(url, verbose=False, download_files=str(tmp / "dl-full"))
    with pytest.raises(Exception) as e:
        c.predict(key, SCORE, api_name="/render")
    assert "disk is full" in str(e.value) and "/srv" not in str(e.value) and str(tmp) not in str(e.value)
    folder = studio.store.session(key).folder
    assert not folder.exists() or not any(folder.iterdir())  # no half-made piece
    monkeypatch.undo()
    assert c.predict(key, SCORE, api_name="/render")[0]["status"] == "done"  # the server went on


def test_a_score_cannot_read_the_servers_files(served):
    demo, studio, url, tmp = served
    secret = Path(studio.store.root) / ".secret"
    c = Client(url, verbose=False, download_files=str(tmp / "dl-include"))
    for line in (f"%%abc-include {secret}", f"I:abc-include {secret}", "I:abc-include /etc/passwd"):
        info, files = c.predict(KEY, SCORE.replace("K:C\n", f"K:C\n{line}\n"), api_name="/render")
        piece = info["pieces"][0]
        said = json.dumps(piece) + "".join(Path(f).read_text(errors="replace") for f in files
                                           if f.endswith((".abc", ".musicxml")))
        assert secret.read_text().strip() not in said and "root:" not in said
        assert any("abc-include" in w for w in piece["warnings"]) and not piece["errors"]


def test_an_overlong_score_is_refused_before_any_work(served):
    demo, studio, url, tmp = served
    c = Client(url, verbose=False, download_files=str(tmp / "dl-long"))
    with pytest.raises(Exception, match="this server renders at most 120,000"):
        c.predict(KEY, "X:1\nK:C\n" + "C" * 200_000, api_name="/render")


def test_messages_never_carry_server_paths():
    assert public("no checkpoint at /srv/models/secret/x.pth: expected") == "no checkpoint at x.pth: expected"
    assert public("M:3/4 L:1/8 and 1/2 stay") == "M:3/4 L:1/8 and 1/2 stay"


# --- 8. small ones ----------------------------------------------------------------------------------
def test_session_keys_must_match_whole(served):
    assert valid_key(KEY) and not valid_key(KEY + "\n") and not valid_key(KEY + " ") and not valid_key(None)
    demo, studio, url, tmp = served
    c = Client(url, verbose=False, download_files=str(tmp / "dl-key"))
    with pytest.raises(Exception, match="no session"):
        c.predict(KEY + "\n", SCORE, api_name="/render")
    for hostile in ("../" + "a" * 32, "*", ""):
        with pytest.raises(Exception, match="no piece"):
            c.predict(KEY, hostile, api_name="/delete")


def test_a_missing_number_gets_a_message_and_one_log_line(served, capfd):
    demo, studio, url, tmp = served
    c = Client(url, verbose=False, download_files=str(tmp / "dl-none"))
    with pytest.raises(Exception, match=r"temperature \(0: greedy\) must be a number from 0 to 10, got None"):
        c.predict(KEY, "", *PROMPT, 1, None, 9, 0.9, 16, 1, api_name="/compose")
    with pytest.raises(Exception, match=r"duration \(seconds\) must be a number"):
        c.predict(KEY, "piano", "", None, 1, 3.0, 250, 0.0, 1.0, 1, None, api_name="/audio")
    with pytest.raises(Exception, match="seed must be"):
        c.predict(KEY, SCORE, "strings", "", 10.0, 10**30, api_name="/perform")
    # text in a number field is refused by the field's name, not with Gradio's bare error
    with pytest.raises(Exception, match=r"seed must be a whole number .* got 'abc'"):
        c.predict(KEY, "", *PROMPT, "abc", 1.2, 9, 0.9, 16, 1, api_name="/compose")
    with pytest.raises(Exception, match=r"maximum length \(patches\) must be a whole number .* got 'many'"):
        c.predict(KEY, "", *PROMPT, 1, 1.2, 9, 0.9, "many", 1, api_name="/compose")
    with pytest.raises(Exception, match=r"variations must be a whole number .* got 1.5"):
        c.predict(KEY, "", *PROMPT, 1, 1.2, 9, 0.9, 16, 1.5, api_name="/compose")
    time.sleep(0.3)
    assert "Traceback" not in capfd.readouterr().err


# --- 6. shutdown and crashes (the real server in its own process) -----------------------------------
def _serve_process(tmp: Path, port: int, outputs: Path) -> subprocess.Popen:
    models = tmp / "models"
    if not models.exists():
        tiny_folder(models / "tiny")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "webui", "--port", str(port), "--outputs", str(outputs),
                             "--model", str(models / "tiny"), "--models-dir", str(models), "--min-free-mb", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _up(tmp: Path, timeout: float = 120) -> tuple[subprocess.Popen, Client]:
    """`./run.sh` as a subprocess on a free port, once it answers, with a client for it."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = _serve_process(tmp, port, tmp / "out")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return proc, Client(url, verbose=False, download_files=str(tmp / "dl"))
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("the server did not come up")


def _workers_of(pid: int) -> list[int]:
    """Render worker processes started by the server `pid` (found by what they were given)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
            env = (p / "environ").read_bytes()
        except OSError:
            continue
        if b"engine.render.worker" in cmd and f"CADENZA_PARENT_PID={pid}\0".encode() in env:
            found.append(int(p.name))
    return found


def _writing(c: Client, updates: int = 3):
    """A long piece asked for, once the server has sent `updates` of it being written."""
    job = c.submit(KEY, "", *PROMPT, 5, 1.2, 9, 0.9, 4000, 1, api_name="/compose")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(1 for o in job.outputs() if o and o[0].get("status") == "writing") < updates:
        time.sleep(0.05)
    return job


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses the parent-death signal")
def test_sigterm_mid_piece_keeps_the_piece_and_leaves_no_worker(tmp_path):
    proc, c = _up(tmp_path)
    try:
        _writing(c)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 30, f"took {took:.1f} s to stop\n{out}"
    assert "shutting down" in out, out
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("record.json")]
    assert len(records) == 1 and records[0]["stop_reason"] == "shutdown", (records, out)
    folder = next((tmp_path / "out").rglob("record.json")).parent
    assert (folder / records[0]["files"]["abc"][0]).read_text().startswith("X:1")
    assert not _workers_of(proc.pid)


def test_sigkill_mid_piece_loses_at_most_seconds_and_a_restart_lists_it_as_interrupted(tmp_path):
    """The text of a piece being written reaches the disk every 2 s (a journal); a server killed
    with SIGKILL cannot keep it itself, so the next start does (issue 31)."""
    proc, c = _up(tmp_path)
    try:
        _writing(c)  # the first patch is journalled at once, the later ones every 2 s
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list((tmp_path / "out").rglob("record.json"))  # nothing was kept by the killed server
    restart, c = _up(tmp_path)
    try:
        pieces = c.predict(KEY, api_name="/history")["pieces"]
        assert len(pieces) == 1 and pieces[0]["stop_reason"] == "interrupted", pieces
        result, _ = c.predict(KEY, pieces[0]["id"], api_name="/piece")
        assert result["pieces"][0]["abc"].startswith("X:1") and "crash or a kill" in result["pieces"][0]["warnings"][0]
        assert not list((tmp_path / "out").rglob(".live/*.json"))
    finally:
        restart.terminate()
        restart.communicate(timeout=40)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses the parent-death signal")
def test_render_workers_die_with_a_killed_server_and_a_restart_sweeps_its_folder(tmp_path):
    proc, c = _up(tmp_path)
    try:
        body = "|".join(["CDEF GABc", "dcBA GFED"] * 400)
        c.submit(KEY, f"X:1\nT:Long\nM:4/4\nL:1/8\nQ:1/4=120\nK:C\n{body}|]\n", api_name="/render")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _workers_of(proc.pid):
            time.sleep(0.05)
        workers = _workers_of(proc.pid)
        assert workers, "no render worker was seen running"
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() and _alive(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "render workers outlived the server"
    finally:
        if proc.poll() is None:
            proc.kill()
    half = [p for p in (tmp_path / "out").glob("*/*") if p.is_dir() and not (p / "record.json").exists()]
    assert half  # the killed render left its folder without a record
    restart, _ = _up(tmp_path)  # the sweep runs before the server answers
    restart.terminate()
    restart.communicate(timeout=40)
    assert not any(p.exists() for p in half)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
