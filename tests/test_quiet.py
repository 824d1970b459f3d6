"""What the converters print is caught per thread at its source: concurrent requests in a server
keep their own messages and never touch sys.stdout / sys.stderr."""
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from engine import api, quiet
from engine.symbolic.postprocess import bar_duration

# abc2xml says "tie between different pitches" of the last bar; abctoolkit prints the bar it
# cannot measure. Each thread's tune and bar carry its own number.
TUNE = "X:1\nT:Tune {n}\nM:4/4\nL:1/8\nK:C\n" + "CDEF GABc|" * 3 + "F4-G4|]\n"


def work(n: int, tmp) -> tuple[int, list[str], float | None, list[str]]:
    with quiet.captured() as lines:
        measured = bar_duration(f'"n{n}"(3A')  # a triplet short of notes
    result = api.render(TUNE.format(n=n), tmp / str(n), ("musicxml",), "tune")  # a worker process converts
    xml = result.paths("musicxml")[0].read_text()
    assert f"<work-title>Tune {n}</work-title>" in xml
    return n, result.warnings, measured, lines


def test_eight_threads_rendering_at_once_keep_their_own_output_and_leave_stdout_alone(tmp_path, capfd):
    out, err = sys.stdout, sys.stderr
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: work(n, tmp_path), range(16)))
    assert sys.stdout is out and sys.stderr is err
    for n, warnings, measured, lines in results:
        assert any("tie between different pitches" in w for w in warnings), warnings
        assert measured is None and lines == [f'"n{n}"(3A list index out of range'], lines  # its own, only
    printed = capfd.readouterr()
    assert "(3A" not in printed.out + printed.err and "tie between" not in printed.out + printed.err


def test_captures_nest_and_nothing_leaks_between_threads():
    seen = {}

    def talk(name: str) -> None:
        with quiet.captured() as mine:
            for i in range(50):
                quiet._say(f"{name} {i}")
        seen[name] = mine

    threads = [threading.Thread(target=talk, args=(f"t{k}",)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 8 and all(seen[name] == [f"{name} {i}" for i in range(50)] for name in seen)
    with quiet.captured() as outer:
        with quiet.captured() as inner:
            quiet._say("once")
    assert inner == ["once"] and outer == ["once"]
