"""What a composer meets in the page, timed in headless Chromium against a studio on 127.0.0.1 with
the bundled model and the server's defaults (issue 34):

- first bar: Generate pressed -> the first notes engraved in the live score;
- piece: Generate pressed -> the finished piece's summary on the page (every export made),
  for a folk tune (Folk / Traditional, Irish / Melody) and a chorale (Baroque / Bach / Choral);
- stop: Stop pressed a few bars into a chorale, with 1 and with 8 variations -> "stopping" on the
  page (ack) and -> the kept pieces shown (done). With 8 variations, side by side: the variations
  rendered one after another (render_at_once 1) and two at a time.

Each figure is the median of --runs runs. Last line: one JSON object.

    python -m bench.studio_journey [--runs 3] [--max-minutes 20]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.studio_load import free_port

FOLK = ("Folk", "Traditional, Irish", "Melody")
CHORALE = ("Baroque", "Bach, Johann Sebastian", "Choral")


def browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 f"--user-data-dir={profile}", "--window-size=1400,2200", "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


class Page:
    """The studio page as a composer uses it (bounded waits: each gives up after `limit` seconds)."""

    def __init__(self, driver, url: str):
        self.d, self.url = driver, url

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        found = self.d.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""

    def until(self, test, limit: float = 600.0) -> float:
        """Seconds until test() holds (polled every 50 ms); raises after `limit`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            try:
                if test():
                    return time.monotonic() - t0
            except Exception:  # noqa: BLE001 - the page is being redrawn under us: look again
                pass
            time.sleep(0.05)
        raise TimeoutError(f"waited {limit:.0f} s")

    def load(self) -> None:
        self.d.get(self.url)
        self.until(lambda: "ready" in self.text("body"), 300)
        self.until(lambda: all(e.get_attribute("value") for e in self.inputs()[:3]), 60)

    def inputs(self):
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, "input[role='listbox'], input[aria-expanded]")

    def choose(self, prompt: tuple[str, str, str]) -> None:
        """The three lists set as a composer would: click, type, Enter (each list follows the one before)."""
        from selenium.webdriver.common.keys import Keys

        for i, value in enumerate(prompt):
            box = self.inputs()[i]
            box.click()
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(value)
            time.sleep(0.3)
            box.send_keys(Keys.ENTER)
            self.until(lambda: self.inputs()[i].get_attribute("value") == value, 20)
            time.sleep(0.5)  # the next list's choices follow

    def set_variations(self, n: int) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        box = self.d.find_element(By.XPATH, "//span[normalize-space()='Variations']/following::input[@type='number'][1]")
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(n), Keys.TAB)

    def button(self, label: str):
        from selenium.webdriver.common.by import By

        return next(b for b in self.d.find_elements(By.XPATH, f"//button[normalize-space()='{label}']") if b.is_displayed())

    def notes(self) -> int:
        from selenium.webdriver.common.by import By

        return len(self.d.find_elements(By.CSS_SELECTOR, "#live-score .cadenza-sheet:not(.cadenza-staging) .abcjs-note"))


def compose(page: Page, studio, prompt) -> dict:
    """Generate -> first engraved bar -> the finished piece on the page."""
    page.load()
    page.choose(prompt)
    kept = pieces(studio)
    t0 = time.monotonic()
    page.button("Generate").click()
    page.until(lambda: "writing" in page.text("#status"), 120)  # (the old piece's notes are gone by now)
    page.until(lambda: page.notes() > 0, 600)
    first = time.monotonic() - t0
    page.until(lambda: pieces(studio) > kept and "fit the metre" in page.text("#status"), 900)
    return {"first_bar_s": first, "piece_s": time.monotonic() - t0}


def stop(page: Page, studio, variations: int) -> dict:
    """A chorale of `variations` variations, stopped 3 bars in: Stop -> "stopping" -> the pieces shown."""
    page.load()
    page.choose(CHORALE)
    page.set_variations(variations)
    kept = pieces(studio)
    page.button("Generate").click()
    page.until(lambda: "bar 3" in page.text("#status") or "bars 3" in page.text("#status"), 600)
    t0 = time.monotonic()
    page.button("Stop").click()
    ack = page.until(lambda: "stopp" in page.text("#status"), 120)
    page.until(lambda: pieces(studio) >= kept + variations and "fit the metre" in page.text("#status"), 900)
    return {"ack_s": ack, "done_s": time.monotonic() - t0}


def pieces(studio) -> int:
    """Pieces kept on the server (the bench's browser is its only user)."""
    return sum(1 for _ in studio.store.root.glob("*/*/record.json"))


def median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="stop starting new runs after this long")
    args = ap.parse_args()

    import engine.service.studio as studio_module
    from webui.app import start
    from engine.settings import ServerSettings

    deadline = time.monotonic() + args.max_minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="journey-"))
    config = ServerSettings(port=free_port(), outputs=str(tmp / "outputs"))
    demo, studio, url = start(config, quiet=True)
    studio.model(None).get()
    driver = browser(tmp / "profile")
    page = Page(driver, url)
    result: dict = {"runs": args.runs}
    default = studio_module.RENDER_AT_ONCE
    try:
        for name, prompt in (("folk", FOLK), ("chorale", CHORALE)):
            rows = [compose(page, studio, prompt) for _ in range(args.runs) if time.monotonic() < deadline]
            result[name] = {"first_bar_s": median(rows, "first_bar_s"), "piece_s": median(rows, "piece_s"),
                            "n": len(rows)}
            print(name, rows, flush=True)
        for variations, at_once in ((1, 2), (8, 1), (8, 2)):
            studio_module.RENDER_AT_ONCE = at_once
            rows = [stop(page, studio, variations) for _ in range(args.runs) if time.monotonic() < deadline]
            result[f"stop_{variations}_render_at_once_{at_once}"] = {
                "ack_s": median(rows, "ack_s"), "done_s": median(rows, "done_s"), "n": len(rows)}
            print(variations, at_once, rows, flush=True)
    finally:
        studio_module.RENDER_AT_ONCE = default
        driver.quit()
        demo.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
