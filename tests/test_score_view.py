"""The live score (webui/static/cadenza-score.js on the vendored abcjs) in headless Chromium.

A static page in tmp_path holds the elements the studio gives the script (#live-abc textarea,
#live-score-tools, #live-score, #score-player with an <audio>) and inlines abcjs and the script the
way the studio's <head> does. A real Bach chorale from the corpus (four voices, NotaGen's interleaved
`[r:i/n][V:1]...|[V:2]...|` lines) is engraved whole and cut mid-bar; zoom survives a reload; playing
a WAV moves the highlight. The screenshot is saved to outputs/test-screenshots/score-view.png."""
import gzip
import json
import math
import shutil
import struct
import time
import wave

import pytest

from conftest import ROOT

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")
STATIC = ROOT / "webui" / "static"
SCREENSHOT = ROOT / "outputs" / "test-screenshots" / "score-view.png"
CORPUS = ROOT / "assets" / "data" / "corpus" / "val.jsonl.gz"
WAV_SECONDS = 6.0


def chorale() -> str:
    """The first Bach chorale of the validation corpus: `%%score [ 1 | 2 | 3 | 4 ]`, a bar a line."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if "%Choral" in text[:200] and "[V:4]" in text and "[r:0/" in text:
                return text
    raise AssertionError(f"no chorale with four voices in {CORPUS}")


def write_tone(path, seconds: float, rate: int = 8000) -> None:
    """A quiet 440 Hz sine: something the <audio> element can play and seek."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", int(3000 * math.sin(2 * math.pi * 440 * i / rate)))
                               for i in range(int(seconds * rate))))


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>score view</title>
<script>{abcjs}</script><script>{script}</script>
<style>body{{font-family:sans-serif;margin:16px}} #live-abc{{display:none}}
#live-score{{--cadenza-score-height:560px;border:1px solid #ddd;padding:4px 8px}}</style></head><body>
<div id="live-abc"><textarea></textarea></div>
<div id="live-score-tools"></div><div id="live-score"><p class="placeholder">The music appears here</p></div>
<div id="score-player"><audio controls src="tone.wav" preload="auto"></audio></div>
</body></html>"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("score-view")
    write_tone(tmp / "tone.wav", WAV_SECONDS)
    html = PAGE.format(abcjs=(STATIC / "abcjs-basic-min.js").read_text(encoding="utf-8"),
                       script=(STATIC / "cadenza-score.js").read_text(encoding="utf-8"))
    (tmp / "index.html").write_text(html, encoding="utf-8")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={tmp / 'profile'}",
                 "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.get((tmp / "index.html").as_uri())
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout=20.0, what="the score"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition(driver)
        if found:
            return found
        time.sleep(0.1)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOT.with_name("score-view-failure.png")))
    raise AssertionError(f"timed out waiting for {what}; state: {state(driver)}")


def state(driver) -> dict:
    return driver.execute_script("return window.cadenzaScore && window.cadenzaScore.state()")


def set_abc(driver, text: str) -> dict:
    """Sets the textarea the way Gradio does (no input event) and waits for the script to try it."""
    before = state(driver)
    if driver.execute_script("return document.querySelector('#live-abc textarea').value") == text:
        return before  # drawn already
    driver.execute_script("document.querySelector('#live-abc textarea').value = arguments[0]", text)
    return wait_for(driver, lambda d: (s := state(d))["renders"] + s["failures"] > before["renders"] + before["failures"]
                    and s, what="a render after the text changed")


def notes(driver) -> dict:
    """Noteheads per voice class and the staves drawn, from the svg in #live-score."""
    return driver.execute_script("""
        const svg = document.querySelector('#live-score svg'); if (!svg) return null;
        const v = {}; for (const n of svg.querySelectorAll('.abcjs-note'))
            for (const c of n.classList) if (/^abcjs-v\\d+$/.test(c)) v[c] = (v[c] || 0) + 1;
        return {voices: v, staves: svg.querySelectorAll('.abcjs-staff').length,
                text: [...svg.querySelectorAll('text')].map(t => t.textContent).join(' '),
                systems: new Set([...svg.querySelectorAll('.abcjs-staff')].map(s =>
                    [...s.classList].find(c => /^abcjs-l\\d+$/.test(c)))).size};""")


def head_size(driver) -> float:
    return driver.execute_script(
        "const n = document.querySelector('#live-score svg .abcjs-notehead'); return n.getBoundingClientRect().height")


def test_a_real_chorale_is_engraved_with_every_voice_and_no_markers(page):
    s = set_abc(page, chorale())
    assert s["lastError"] is None and s["renders"] == 1, s
    seen = notes(page)
    assert set(seen["voices"]) >= {"abcjs-v0", "abcjs-v1", "abcjs-v2", "abcjs-v3"}, seen["voices"]
    assert min(seen["voices"].values()) >= 11, seen["voices"]  # a note or more in each of the 12 bars
    assert seen["systems"] >= 2 and seen["staves"] == 4 * seen["systems"], seen  # four staves a system
    assert seen["systems"] < 12, seen  # bars wrapped into lines, not one system per NotaGen line
    assert "r:" not in seen["text"] and "/11" not in seen["text"], seen["text"]
    assert "Soprano" in seen["text"] and "Bass" in seen["text"], seen["text"]
    assert not page.find_element("css selector", "#live-score .placeholder").is_displayed()


# (where to cut the chorale, what a writer may have half-written there)
CUTS = [("[V:3]E2 F2 B,C", ""), ("[V:2]A2 A2 G2 F", ""), ("[V:1]c2 B2 !ferm", ""), ("[V:3]A,6 ", "[DB"),
        ("[V:4]C,D, E,2 !fermata!A,,2 A,G,|\n[r:3/", ""), ("[V:1]c2 Bc ", '"Am'), ("[V:2]F2 FE D2 E2|[V:", ""),
        ("[V:1]c2 Bc dc B2|", "{/")]


@pytest.mark.parametrize("cut, extra", CUTS)
def test_a_piece_cut_mid_bar_still_renders(page, cut, extra):
    abc = chorale()
    at = abc.index(cut) + len(cut)
    abc = abc[:at] + extra
    s = set_abc(page, abc)
    assert s["lastError"] is None, s
    seen = notes(page)
    assert "abcjs-v0" in seen["voices"] and "r:" not in seen["text"], seen
    assert page.execute_script("return window.cadenzaScore.prepare(arguments[0]).includes('[r:')", abc) is False


def test_text_abcjs_cannot_draw_keeps_the_last_good_score(page):
    set_abc(page, chorale())
    good = notes(page)
    s = set_abc(page, "X:1\nK:C\n!fermata! |\n")  # music abcjs draws no note of (a bar half written)
    assert s["lastError"] and s["failures"] >= 1, s
    assert notes(page) == good  # the previous drawing stays in the box
    set_abc(page, chorale())
    s = set_abc(page, "X:1\nK:C\n%% nothing to play yet\n")  # a new piece's header: the old piece is not it
    assert notes(page) is None and s["lastError"] == "no music yet: nothing to engrave", s
    set_abc(page, chorale())
    page.execute_script("document.querySelector('#live-abc textarea').value = ''")  # a new piece begins
    wait_for(page, lambda d: notes(d) is None, what="the box to empty")
    assert page.find_element("css selector", "#live-score .placeholder").is_displayed()
    assert state(page)["lastError"] is None


def test_zoom_in_enlarges_the_music_and_survives_a_reload(page):
    from selenium.webdriver.common.by import By

    set_abc(page, chorale())
    page.execute_script("window.cadenzaScore.zoom(1)")
    size = head_size(page)
    page.find_element(By.CSS_SELECTOR, "#live-score-tools .cadenza-zoom-in").click()
    wait_for(page, lambda d: state(d)["zoom"] == 1.25, what="zoom 125%")
    assert head_size(page) == pytest.approx(size * 1.25, rel=0.05)
    assert page.find_element(By.CSS_SELECTOR, "#live-score-tools .cadenza-zoom-label").text == "125%"
    page.refresh()
    wait_for(page, lambda d: state(d) is not None, what="the script after the reload")
    assert state(page)["zoom"] == 1.25
    set_abc(page, chorale())
    assert head_size(page) == pytest.approx(size * 1.25, rel=0.05)
    page.find_element(By.CSS_SELECTOR, "#live-score-tools .cadenza-zoom-fit").click()
    wait_for(page, lambda d: state(d)["zoom"] == 1, what="fit back to 100%")
    for _ in range(12):  # bounded by the range: clicks beyond it stay at the limit
        page.find_element(By.CSS_SELECTOR, "#live-score-tools .cadenza-zoom-out").click()
    assert state(page)["zoom"] == 0.5
    page.execute_script("window.cadenzaScore.zoom(1)")


def test_playing_the_audio_moves_the_highlight_and_the_end_clears_it(page):
    set_abc(page, chorale())
    s = state(page)
    assert s["events"] > 20 and s["scoreSeconds"] > WAV_SECONDS + 3, s  # stretched: a 6 s tone for the piece
    page.execute_script("document.querySelector('#score-player audio').play()")
    first = wait_for(page, lambda d: (s := state(d))["highlighted"] > 0 and s, what="a highlighted note")
    time.sleep(1.0)
    later = wait_for(page, lambda d: (s := state(d))["event"] > first["event"] and s, what="the highlight to move")
    assert later["highlighted"] > 0 and later["playing"], later
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.save_screenshot(str(SCREENSHOT))
    cursor = page.execute_script("""const c = document.querySelector('#live-score .cadenza-cursor');
        return c && c.getAttribute('visibility') === 'visible' && c.getBoundingClientRect().height""")
    assert cursor and cursor > 50, cursor  # a line across the four staves
    page.execute_script("const a = document.querySelector('#score-player audio'); a.pause(); a.currentTime = 0.1")
    wait_for(page, lambda d: (s := state(d))["event"] < later["event"] and s["highlighted"] > 0, what="seek back")
    page.execute_script("const a = document.querySelector('#score-player audio'); a.currentTime = a.duration - 0.2;"
                        "a.play()")
    wait_for(page, lambda d: state(d)["highlighted"] == 0 and not state(d)["playing"], what="the end to clear")


def test_the_cursor_keeps_in_view_inside_the_box_not_the_page(page):
    page.execute_script("window.cadenzaScore.zoom(2.5)")  # tall enough to scroll inside the 560 px box
    set_abc(page, chorale())
    box = page.execute_script("const b = document.querySelector('#live-score'); b.scrollTop = 0;"
                              "return [b.scrollHeight, b.clientHeight, window.scrollY]")
    assert box[0] > box[1] * 1.5, box
    page.execute_script("const a = document.querySelector('#score-player audio'); a.currentTime = a.duration * 0.8")
    moved = wait_for(page, lambda d: d.execute_script("return document.querySelector('#live-score').scrollTop") > 0,
                     what="the box to scroll to the cursor")
    assert moved and page.execute_script("return window.scrollY") == box[2]
    inside = page.execute_script("""const b = document.querySelector('#live-score').getBoundingClientRect();
        const c = document.querySelector('#live-score .cadenza-cursor').getBoundingClientRect();
        return [c.top - b.top, b.bottom - c.top, c.height, b.height]""")
    assert inside[0] >= 0 and inside[1] > 0, inside  # the top of the cursor is in the box
    page.execute_script("window.cadenzaScore.zoom(1)")


def test_live_writing_keeps_the_reader_s_place_in_the_box(page):
    page.execute_script("window.cadenzaScore.zoom(2)")
    lines = chorale().splitlines(keepends=True)
    set_abc(page, "".join(lines[:-2]))  # the piece so far
    page.execute_script("document.querySelector('#live-score').scrollTop = 300")
    set_abc(page, "".join(lines[:-1]))  # the next patch arrives
    assert page.execute_script("return document.querySelector('#live-score').scrollTop") == 300
    page.execute_script("window.cadenzaScore.zoom(1)")


def test_clicking_a_note_moves_the_playback_there(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    set_abc(page, chorale())
    page.execute_script("const a = document.querySelector('#score-player audio'); a.pause(); a.currentTime = 0;"
                        "document.querySelector('#live-score').scrollTop = 0")
    notes_ = page.find_elements(By.CSS_SELECTOR, "#live-score svg .abcjs-note.abcjs-v0")
    ActionChains(page).click(notes_[8]).perform()
    at = wait_for(page, lambda d: d.execute_script("return document.querySelector('#score-player audio').currentTime"),
                  what="the audio to move to the note")
    s = state(page)
    assert 0 < at < WAV_SECONDS and s["highlighted"] > 0, (at, s)
