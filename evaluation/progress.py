"""A line about an evaluation under way, about twenty times over a run (and at its end): how many are done, the
accuracy so far, the rate and the time left."""
import time


class Progress:
    def __init__(self, total: int, emit=None, lines: int = 20):
        self.total, self.emit, self.every = total, emit, max(1, total // lines)
        self.start, self.shown = time.perf_counter(), 0

    def update(self, records: list[dict]):
        done = len(records)
        if self.emit is None or (done - self.shown < self.every and done < self.total):
            return
        self.shown = done
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", ~{clock((self.total - done) / rate)} left" if rate and done < self.total else ""
        correct = sum(r["correct"] for r in records)
        self.emit(f"[eval] {done}/{self.total} ({100 * done // self.total}%): accuracy {correct / done:.3f}, "
                  f"{rate:.2f} requests/s{left}")


def clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"
